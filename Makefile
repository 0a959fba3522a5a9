# The two commands a newcomer types: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
# Two shared cores: pin every thread pool (oversubscription slowed training 10-28x here).
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MALLOC_TRIM_THRESHOLD_ ?= 268435456

.PHONY: install demo diagnostics test lint bench clean schemathesis

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/install.sh
	touch $(STAMP)

demo: install
	$(BIN)/python -m verifier_client demo

diagnostics: install
	$(BIN)/python -m verifier_client residual --task planted --budget 60000 --seed 7
	$(BIN)/python -m verifier_client plan --task planted:bound=4 --epsilon 0.5 --delta 0.05 --pilot 6000 --seed 7

lint: install
	$(BIN)/ruff check protocol prover_service verifier_client tests benchmarks examples
	$(BIN)/ruff format --check protocol prover_service verifier_client tests benchmarks examples
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

schemathesis: install
	$(BIN)/pytest -q tests/prover_service/test_schemathesis.py

bench: install
	$(BIN)/python benchmarks/estimator_error.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
