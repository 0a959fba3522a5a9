"""Every cheating mode of ``serve --adversary`` against the certificate, over real HTTP.

A real uvicorn Prover on loopback, honest or cheating, and the Verifier's ``run_verification``
with its defaults (shared-base layout, mean aggregate, ``clt``) at fixed sizes. Planted task
N = 20, Z = 2 (B1 = 1), epsilon = 0.25, delta = 0.05, 15,000 bases (|E| = 60,000) and
k = 12,000 spot-checks (20 %), so m* = 16 values may be corrupted unseen. The honest ridge
attribution (err ~0.01) is certified (measured U = 0.18). Every attribution cheat has exact
err >= 0.31 (scale:0.5, the smallest; favor and noise far more) and is aborted as not
certified; lie, lazy and inflate corrupt >= 10 % of E and replay every value, so the
spot-checks catch them. extreme and quiet ride on scale:0.5 and corrupt COUNT = 1 value, a
sixteenth of m*: the k checks miss it with probability 0.8, and the test retries with new
seeds (at most 6, so P(caught every time) = 0.2^6 = 6e-5) until they do, so what aborts it is
the certificate itself (``not_certified``; measured U = 0.63 for extreme and 0.49 for quiet at
COUNT = 2), not a spot-check; every try must abort. The Verifier's secrets come from fixed
seeds (the Prover's attribution need not be bitwise the same across runs). About 20 s a case.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from protocol.certificate import max_undetected
from protocol.signing import generate_key
from tests.serving import serve_prover
from verifier_client.client import ProverClient
from verifier_client.run import Options, run_verification
from verifier_client.store import VerifierStore

TASK = "planted:n_train=20,n_targets=2"
EPSILON = 0.25
BASES = 15000
K = 12000
M_STAR = max_undetected(4 * BASES, K, 0.025)
COUNT = 1
KEY = generate_key()


@contextmanager
def prover(root: Path, adversary: str | None = None) -> Iterator[str]:
    with serve_prover(root, TASK, adversary) as url:
        yield url


def verify(url: str, root: Path, seed: int) -> dict:  # type: ignore[type-arg]
    opts = Options(
        task=TASK,
        epsilon=EPSILON,
        pairs_per_level=BASES,
        spot_checks=K,
        budget=400,
        poll_s=0.02,
        seed=seed.to_bytes(8, "little"),
        secrets_seed=seed.to_bytes(8, "little"),  # tests only: the secrets fixed too
    )
    with httpx.Client(base_url=url, timeout=60) as http:
        return run_verification(
            ProverClient(http, key=KEY), VerifierStore(f"sqlite:///{root}/v.db"), KEY, opts, url
        )


def test_sizes_leave_the_strategic_counts_to_the_certificate() -> None:
    assert M_STAR == 16 and COUNT <= M_STAR / 16  # far below what the certificate charges for


def test_honest_prover_is_certified(tmp_path: Path) -> None:
    with prover(tmp_path / "p") as url:
        result = verify(url, tmp_path, 1)
    assert result["verdict"] == "accept", result["figures"]
    assert result["certified_epsilon"] <= EPSILON
    assert result["certificate"]["max_corrupted"] == M_STAR


@pytest.mark.parametrize(
    ("spec", "reasons"),
    [
        ("scale:0.5", {"not_certified"}),
        ("favor:0.5:1.0", {"not_certified"}),
        ("noise:0.3", {"not_certified"}),
        ("scale:0.5,inflate:10%:3.0", {"spot_check_mismatch", "not_certified"}),
        ("lie:0.2", {"spot_check_mismatch"}),
        ("lazy:0.3", {"spot_check_mismatch"}),
    ],
)
def test_each_adversary_is_aborted(tmp_path: Path, spec: str, reasons: set[str]) -> None:
    with prover(tmp_path / "p", spec) as url:
        result = verify(url, tmp_path, 2)
    assert result["verdict"] == "abort", result["figures"]
    assert result["reason"] in reasons, result["figures"]


@pytest.mark.parametrize("mode", ["extreme", "quiet"])
def test_strategic_corruption_is_aborted_by_the_certificate(tmp_path: Path, mode: str) -> None:
    reasons = []
    with prover(tmp_path / "p", f"scale:0.5,{mode}:{COUNT}") as url:
        for seed in range(2, 8):
            result = verify(url, tmp_path, seed)
            assert result["verdict"] == "abort", result["figures"]
            reasons.append(result["reason"])
            if result["reason"] == "not_certified":
                assert result["certified_epsilon"] > EPSILON
                assert result["certificate"]["max_corrupted"] == M_STAR
                break
    assert reasons[-1] == "not_certified", reasons
    assert set(reasons[:-1]) <= {"spot_check_mismatch"}


def test_replay_is_aborted(tmp_path: Path) -> None:
    with prover(tmp_path / "p", "replay") as url:
        assert verify(url, tmp_path, 3)["verdict"] == "accept"  # nothing to replay yet: honest
        second = verify(url, tmp_path, 4)
    assert (second["verdict"], second["reason"]) == ("abort", "spot_check_mismatch")
