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

.PHONY: install demo diagnostics test test-quick lint bench constraints clean schemathesis

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install.sh
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
	$(BIN)/pytest -q --durations=15

# The edit loop: lint, then every test but the slow ones (over ~20 s); `make test` runs all (CI).
test-quick: lint
	$(BIN)/pytest -q -m "not slow"

schemathesis: install
	$(BIN)/pytest -q tests/prover_service/test_schemathesis.py

bench: install
	$(BIN)/python benchmarks/estimator_error.py

# Re-pin what CI and the images install (constraints.txt) from this environment, after a
# dependency changed in pyproject.toml: `make install` first (with every extra CI installs).
constraints:
	{ sed -n '1,3p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable \
	  | sed -E -e 's|^([A-Za-z0-9_.-]+) @ .*/[A-Za-z0-9_.]+-([0-9][A-Za-z0-9.]*)-.*$$|\1==\2|' \
	    -e 's/\+[a-z0-9.]+$$//' | LC_ALL=C sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
