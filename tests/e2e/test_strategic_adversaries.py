"""Every cheating mode of ``serve --adversary`` against the certificate, over real HTTP.

A real uvicorn Prover on loopback, honest or cheating, and the Verifier's ``run_verification``
with its defaults (shared-base layout, mean aggregate, ``clt``) at fixed sizes. Planted task
N = 20, Z = 2 (B1 = 1), epsilon = 0.25, delta = 0.05, 15,000 bases (|E| = 60,000) and
k = 12,000 spot-checks (20 %), so m* = 16 values may be corrupted unseen. The honest ridge
attribution (err ~0.01) is certified (measured U = 0.18). Every attribution cheat has exact
err >= 0.31 (scale:0.5, the smallest; favor and noise far more) and is aborted as not
certified; lie, lazy and inflate corrupt >= 10 % of E and replay every value, so the
spot-checks catch them. extreme and quiet ride on scale:0.5 and corrupt COUNT = 2 values, an
eighth of m*: the k checks miss both with probability 0.8^2 = 0.64, and seed 2 is one where
they do, so what aborts them is the certificate itself (``not_certified``; measured U = 0.63
and 0.49), not a spot-check. The Verifier's secrets and the Prover's corruption are derived
from fixed seeds, so every case is reproducible. About 15 s per case.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from protocol.certificate import max_undetected
from protocol.signing import generate_key, save_private_key
from prover_service.app import create_app
from prover_service.settings import Settings
from tests.serving import serve
from verifier_client.client import ProverClient
from verifier_client.session import Options, run_verification
from verifier_client.store import VerifierStore

TASK = "planted:n_train=20,n_targets=2"
EPSILON = 0.25
BASES = 15000
K = 12000
M_STAR = max_undetected(4 * BASES, K, 0.025)
COUNT = 2
KEY = generate_key()
# The strategic modes need the challenge's design: prover_service/service.py's values hook must
# call ``adversary.tamper_values(..., row.id, design=design)``. Until it does, the Prover's job
# fails and these cases cannot run (passing with that one-line change, checked on a copy).
NEEDS_DESIGN = pytest.mark.xfail(
    strict=True, reason="service.py does not yet pass design= to Adversary.tamper_values"
)


@contextmanager
def prover(root: Path, adversary: str | None = None) -> Iterator[str]:
    root.mkdir(parents=True, exist_ok=True)
    save_private_key(generate_key(), root / "p.pem", overwrite=True)
    settings = Settings(
        db=f"sqlite:///{root}/p.db", key_file=root / "p.pem", tasks=[TASK], adversary=adversary
    )
    with serve(create_app(settings)) as url:
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
    )
    with httpx.Client(base_url=url, timeout=60) as http:
        return run_verification(
            ProverClient(http, key=KEY), VerifierStore(f"sqlite:///{root}/v.db"), KEY, opts, url
        )


def test_sizes_leave_the_strategic_counts_to_the_certificate() -> None:
    assert M_STAR == 16 and COUNT <= M_STAR / 8  # far below what the certificate charges for


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
        pytest.param(f"scale:0.5,extreme:{COUNT}", {"not_certified"}, marks=NEEDS_DESIGN),
        pytest.param(f"scale:0.5,quiet:{COUNT}", {"not_certified"}, marks=NEEDS_DESIGN),
    ],
)
def test_each_adversary_is_aborted(tmp_path: Path, spec: str, reasons: set[str]) -> None:
    with prover(tmp_path / "p", spec) as url:
        result = verify(url, tmp_path, 2)
    assert result["verdict"] == "abort", result["figures"]
    assert result["reason"] in reasons, result["figures"]


def test_replay_is_aborted(tmp_path: Path) -> None:
    with prover(tmp_path / "p", "replay") as url:
        assert verify(url, tmp_path, 3)["verdict"] == "accept"  # nothing to replay yet: honest
        second = verify(url, tmp_path, 4)
    assert (second["verdict"], second["reason"]) == ("abort", "spot_check_mismatch")
