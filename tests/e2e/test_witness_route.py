"""The witness route over real HTTP (``verify --protocol witness``; docs/certified-optimality.md).

A real uvicorn Prover on loopback serving ``digits-logreg:certifiable=1``; the Verifier's
``run_verification`` with ``protocol="witness"`` on 4 shared bases (|E| = 16) and the per-value
limit a challenge at epsilon = 0.05 states (4.1e-7), so every witness must be polished to the
float64 floor. epsilon itself is set far above what 4 bases certify under ``finite``
validity (6.8e4): the check, not the statistics, is under test here.

* The honest Prover whose witnesses come from another code path (float32 torch L-BFGS, then
  scipy Newton-CG with torch-autograd gradients: tests/fixtures/other_solver_logreg.py, same
  task hash) is accepted with 0 rejected subsets.
* Each attack of ``serve --adversary witness:KIND`` (protocol.witness_adversaries) is aborted
  ``witness_rejected``, the detail naming a subset and its gradient norm.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from protocol.signing import generate_key
from protocol.tasks import load_task
from protocol.witness import witness_limit
from protocol.witness_adversaries import WITNESS_ATTACKS
from tests.serving import serve_prover
from verifier_client.audit import audit, fetch_bundle
from verifier_client.client import ProverClient
from verifier_client.run import Options, run_verification
from verifier_client.store import VerifierStore

TASK = "digits-logreg:certifiable=1"
OTHER_PATH = str(Path(__file__).parents[1] / "fixtures" / "other_solver_logreg.py") + ":make_task"
LIMIT = witness_limit(0.05, 16.0, (0.0, 0.2, 0.4))
KEY = generate_key()
pytestmark = pytest.mark.slow  # a Prover per case; about 40 s each under load


def verify(url: str, root: Path) -> dict:  # type: ignore[type-arg]
    opts = Options(task=TASK, epsilon=1e6, protocol="witness", pairs_per_level=4,
                   validity="finite", witness_limit=LIMIT, budget=16, poll_s=0.05,
                   seed=b"witness-route")  # fmt: skip
    with httpx.Client(base_url=url, timeout=120) as http:
        return run_verification(
            ProverClient(http, key=KEY), VerifierStore(f"sqlite:///{root}/v.db"), KEY, opts, url
        )


def test_the_limit_is_tight() -> None:
    assert 1e-7 < LIMIT < 1e-6


def test_honest_prover_on_another_code_path_is_accepted(tmp_path: Path) -> None:
    with serve_prover(tmp_path / "p", OTHER_PATH) as url:
        result = verify(url, tmp_path)
    figures = result["figures"]
    assert result["verdict"] == "accept", (result["reason"], result.get("detail"))
    assert figures["witness_rejected"] == 0
    assert figures["witness_gradient_passes"] == 16
    assert 0 < figures["witness_max_tau"] <= LIMIT
    assert figures["witness_bytes"] > 16 * 650 * 8  # theta of every subset, as .npy
    assert result["certificate"]["max_corrupted"] == 0


@pytest.mark.parametrize("kind", WITNESS_ATTACKS)
def test_each_witness_attack_is_aborted(tmp_path: Path, kind: str) -> None:
    with serve_prover(tmp_path / "p", TASK, f"witness:{kind}") as url:
        result = verify(url, tmp_path)
    assert (result["verdict"], result["reason"]) == ("abort", "witness_rejected")
    assert result["figures"]["witness_rejected"] == 16  # every subset it touched
    assert "subset" in result["detail"] and "gradient norm" in result["detail"]


def test_linear_probe_on_bundled_features_end_to_end(tmp_path: Path) -> None:
    """linear-probe on wine features (tests/protocol/test_linear_probe.py), 256 bases, clt,
    the limit from epsilon itself: the honest Prover is certified at epsilon = 0.05 (measured
    U = 0.022) with every
    one of the 1,024 subsets checked by its witness."""
    from tests.protocol.test_linear_probe import wine_features

    wine_features(tmp_path / "wine.npz")
    task = f"linear-probe:features={tmp_path / 'wine.npz'}"
    opts = Options(task=task, epsilon=0.05, protocol="witness", pairs_per_level=256,
                   validity="clt", budget=2000, poll_s=0.05, seed=b"probe")  # fmt: skip
    with serve_prover(tmp_path / "p", task) as url, httpx.Client(base_url=url, timeout=120) as h:
        store = VerifierStore(f"sqlite:///{tmp_path}/v.db")
        client = ProverClient(h, key=KEY)
        result = run_verification(client, store, KEY, opts, url)
        bundle = fetch_bundle(client, result["session"], KEY)
    report = audit(bundle, load_task(task))  # a third party recomputes the same decision
    assert report.ok and report.recomputed == report.recorded == "accept:certified"
    assert result["verdict"] == "accept", (result["reason"], result.get("detail"))
    assert result["figures"]["witness_rejected"] == 0
    assert result["figures"]["witness_gradient_passes"] == 1024
    assert result["local_trainings"] == 0  # the Verifier trained nothing
