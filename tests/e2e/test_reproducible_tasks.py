"""Over real HTTP: honest Provers of tasks that are not planted pass every spot-check.

* ``digits-mlp`` (exact arithmetic, tau = 0): the Prover trains E in chunks of 128, the
  Verifier re-trains its spot-checks alone, at other positions: 0 mismatches; a Prover that
  lies on 40 % of E fails them.
* a user's numpy task whose values move at rounding level with the batch
  (``tests/fixtures/rounding_task.py``): declaring tau = 1e-12 it passes with 0 mismatches;
  claiming tau = 0 (served with the start-up check off) it is aborted, and the verdict says
  why: differences at rounding level, declare a tau.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from protocol.signing import generate_key
from tests.serving import serve_prover
from verifier_client.client import ProverClient
from verifier_client.run import Options, run_verification
from verifier_client.store import VerifierStore

MLP = "digits-mlp:steps=10,hidden=16,batch=16"
FIXTURE = Path(__file__).parents[1] / "fixtures" / "rounding_task.py"
KEY = generate_key()


@contextmanager
def prover(
    root: Path, task: str, adversary: str | None = None, check: bool = True
) -> Iterator[str]:
    with serve_prover(root, task, adversary, check_tasks=check) as url:
        yield url


def _verify(url: str, root: Path, task: str, **over: object) -> dict:  # type: ignore[type-arg]
    fields: dict[str, object] = dict(task=task, epsilon=5.0, pairs_per_level=20, spot_checks=12,
                                     budget=60, poll_s=0.02, seed=b"repro")  # fmt: skip
    with httpx.Client(base_url=url, timeout=120) as http:
        return run_verification(
            ProverClient(http, key=KEY), VerifierStore(f"sqlite:///{root}/v.db"), KEY,
            Options(**(fields | over | {"secrets_seed": (fields | over)["seed"]})), url,  # type: ignore[arg-type]
        )  # fmt: skip


def test_honest_mlp_passes_every_spot_check_and_a_liar_fails(tmp_path: Path) -> None:
    with prover(tmp_path / "honest", MLP) as url:
        result = _verify(url, tmp_path, MLP)
    assert result["spot_checks"]["mismatches"] == 0, result["spot_checks"]
    assert result["spot_checks"]["mode"] == "exact" and result["reason"] != "spot_check_mismatch"
    with prover(tmp_path / "liar", MLP, adversary="lie:0.4") as url:
        lied = _verify(url, tmp_path, MLP, seed=b"liar")
    assert lied["verdict"] == "abort" and lied["reason"] == "spot_check_mismatch"
    assert "not what training" in lied["detail"]


def test_numpy_task_with_rounding_differences_passes_within_its_declared_tau(
    tmp_path: Path,
) -> None:
    task = f"{FIXTURE}:declares_tau"
    with prover(tmp_path / "p", task) as url:
        result = _verify(url, tmp_path, task, pairs_per_level=200, spot_checks=32)
    spots = result["spot_checks"]
    assert spots["mismatches"] == 0 and spots["mode"] == "tolerance" and spots["tau"] == 1e-12
    assert 0 < spots["max_abs_diff"] <= 1e-12  # the differences are real, and within tau
    assert result["figures"]["tau"] == 1e-12


def test_a_false_bitwise_claim_is_aborted_with_advice(tmp_path: Path) -> None:
    task = f"{FIXTURE}:claims_bitwise"
    with prover(tmp_path / "p", task, check=False) as url:
        result = _verify(url, tmp_path, task, pairs_per_level=200, spot_checks=32)
    assert result["verdict"] == "abort" and result["reason"] == "spot_check_mismatch"
    assert "rounding level" in result["detail"] and "declare its tau" in result["detail"]
    # Asking for a tolerance the task does not declare is the Verifier's choice, within limits:
    with prover(tmp_path / "q", task, check=False) as url:
        loose = _verify(url, tmp_path, task, pairs_per_level=200, spot_checks=32, tau=1e-12,
                        seed=b"loose")  # fmt: skip
    assert loose["spot_checks"]["mismatches"] == 0


def test_the_verifier_may_raise_tau_but_never_lower_it_below_the_tasks() -> None:
    import pytest

    from protocol.errors import InvalidParameterError
    from protocol.tasks import load_task

    task = load_task("digits-logreg:iters=1")  # declares 1e-9
    assert Options(task="x", epsilon=1.0).tau_for(task) == 1e-9
    assert Options(task="x", epsilon=1.0, tau=1e-6).tau_for(task) == 1e-6
    with pytest.raises(InvalidParameterError, match="below the tau = 1e-09"):
        Options(task="x", epsilon=1.0, tau=0.0).tau_for(task)


def test_the_adapter_example_runs_through_serve_and_verify(tmp_path: Path) -> None:
    # Your own torch model (examples/wine_mlp.py): served (the start-up check passes), challenged
    # and spot-checked over HTTP with its declared tau; tiny sizes, so only the plumbing and the
    # spot-checks are asserted here.
    wine = f"{Path(__file__).parents[2] / 'examples' / 'wine_mlp.py'}:make_task"
    with prover(tmp_path / "p", wine) as url:
        result = _verify(url, tmp_path, wine, pairs_per_level=8, spot_checks=6, budget=40)
    assert result["status"] == "decided" and result["prover_trainings"] == 32
    assert result["spot_checks"]["mismatches"] == 0 and result["spot_checks"]["tau"] == 1e-4
