"""End to end over real HTTP on loopback: a Prover (uvicorn) honest or cheating, the Verifier's
``run_verification``, and the audit of every transcript.

Sizes: planted task N = 20, Z = 2 (B1 = 1), epsilon = 0.6, delta = 0.05, the shared-base
layout, sizes from the planner (a 32-base local pilot: about 1,800 bases, |E| ~ 7,000 and 10 %
of it spot-checked). Honest err ~0.01 is certified; every attribution cheat below has exact
err >= 1.25 (2 epsilon) and is aborted as not certified, while ``scale:0.5`` (err 0.31, below
epsilon) is rightly accepted; every response cheat corrupts >= 20 % of E and is caught by the
spot-checks. The certificate's soundness at the boundary is measured in docs/soundness.md.
A cheat's pilot spread is large, so its plan is cut to the allowance (20,000 here). Each case
runs with fixed seeds.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from protocol.signing import generate_key
from protocol.tasks import load_task
from tests.databases import on_both_databases
from tests.serving import serve_prover, verifier_db
from verifier_client.audit import audit, fetch_bundle
from verifier_client.client import ProverClient, TransportError
from verifier_client.run import Options, Run, run_verification
from verifier_client.store import VerifierStore

TASK = "planted:n_train=20,n_targets=2"
EPSILON = 0.6


@contextmanager
def prover(root: Path, adversary: str | None = None) -> Iterator[str]:
    with serve_prover(root, TASK, adversary) as url:
        yield url


def _verify(url: str, root: Path, seed: int, **over: object) -> dict:  # type: ignore[type-arg]
    fields: dict[str, object] = dict(
        task=TASK,
        epsilon=EPSILON,
        protocol="interactive",  # the protocol under test (auto's choice: test_routes.py)
        budget=400,
        max_prover_trainings=20_000,
        poll_s=0.02,
        seed=seed.to_bytes(8, "little"),
        secrets_seed=seed.to_bytes(8, "little"),  # tests only: the secrets fixed too
    )
    opts = Options(**(fields | over))  # type: ignore[arg-type]
    with httpx.Client(base_url=url, timeout=60) as http:
        return run_verification(
            ProverClient(http, key=KEY), VerifierStore(verifier_db(root)), KEY, opts, url
        )


KEY = generate_key()


def _audit(url: str, session: str) -> bool:
    with httpx.Client(base_url=url, timeout=60) as http:
        bundle = fetch_bundle(ProverClient(http, key=KEY), session, KEY)
    return audit(bundle, load_task(TASK)).ok


@on_both_databases
def test_honest_prover_is_accepted_and_audited(tmp_path: Path) -> None:
    with prover(tmp_path / "p") as url:
        for seed in range(3):
            result = _verify(url, tmp_path, seed)
            assert result["verdict"] == "accept", result["figures"]
            cert, sizes = result["certificate"], result["sizes"]
            assert result["certified_epsilon"] <= EPSILON and result["aggregate"] == "mean"
            assert result["prover_trainings"] == 4 * sizes["pairs_per_level"]
            assert result["local_trainings"] == sizes["spot_checks"] + sizes["pilot_trainings"]
            assert cert["spot_checks"] == sizes["spot_checks"] and cert["max_corrupted"] > 0
            assert result["verdict_posted"]
            row = VerifierStore(verifier_db(tmp_path)).get(result["record"])
            assert row is not None and row.log_head_json is not None  # the head after the verdict
            assert _audit(url, result["session"])


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("scale:0", "not_certified"),
        ("noise:0.3", "not_certified"),
        ("favor:0.5:1.0", "not_certified"),
        # Both cheats at once: the spot-checks usually catch the inflated values first.
        ("scale:0,inflate:10%:3.0", "spot_check_mismatch|not_certified"),
        ("lie:0.2", "spot_check_mismatch"),
        ("lazy:0.3", "spot_check_mismatch"),
    ],
)
def test_each_cheat_is_aborted_with_its_reason(tmp_path: Path, spec: str, reason: str) -> None:
    with prover(tmp_path / "p", spec) as url:
        for seed in range(2):
            result = _verify(url, tmp_path, 100 + seed)
            assert result["verdict"] == "abort", result["figures"]
            assert result["reason"] in reason.split("|"), result["figures"]
            assert _audit(url, result["session"])


def test_a_cheat_below_epsilon_is_accepted(tmp_path: Path) -> None:
    # Paying half has err 0.31 here: at epsilon = 1 (err <= epsilon / 2, where the planner
    # promises completeness) it is certified. The guarantee is about epsilon, not intent.
    with prover(tmp_path / "p", "scale:0.5") as url:
        result = _verify(url, tmp_path, 41, epsilon=1.0)
    assert result["verdict"] == "accept" and result["certified_epsilon"] >= 0.31


@on_both_databases
def test_replayed_response_fails_the_spot_checks(tmp_path: Path) -> None:
    with prover(tmp_path / "p", "replay") as url:
        first = _verify(url, tmp_path, 7)  # nothing to replay yet: answered honestly
        assert first["verdict"] == "accept"
        second = _verify(url, tmp_path, 8)
        assert (second["verdict"], second["reason"]) == ("abort", "spot_check_mismatch")


def test_tampered_transcript_is_detected(tmp_path: Path) -> None:
    with prover(tmp_path / "p") as url:
        result = _verify(url, tmp_path, 11)
        with httpx.Client(base_url=url, timeout=60) as http:
            bundle = fetch_bundle(ProverClient(http, key=KEY), result["session"], KEY)
    task = load_task(TASK)
    assert audit(bundle, task).ok
    forged = json.loads(json.dumps(bundle))
    forged["transcript"]["verdict_message"]["payload"]["verdict"] = "abort"
    assert not audit(forged, task).ok
    forged = json.loads(json.dumps(bundle))
    sha = forged["transcript"]["response"]["payload"]["values"]["sha256"]
    blob = bytearray(base64.b64decode(forged["blobs"][sha]))
    blob[-1] ^= 1
    forged["blobs"][sha] = base64.b64encode(bytes(blob)).decode()
    assert not audit(forged, task).ok


@on_both_databases
def test_a_killed_client_resumes_without_a_new_challenge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with prover(tmp_path / "p") as url:
        real_wait = Run.wait

        def broken(self: Run, sid: str) -> None:
            raise TransportError("connection lost")

        monkeypatch.setattr(Run, "wait", broken)
        with pytest.raises(TransportError):
            _verify(url, tmp_path, 21)
        store = VerifierStore(verifier_db(tmp_path))
        (row,) = [r for r in store.all() if r.status == "incomplete"]
        assert row.prover_session is not None
        monkeypatch.setattr(Run, "wait", real_wait)
        with httpx.Client(base_url=url, timeout=60) as http:
            done = run_verification(
                ProverClient(http, key=KEY),
                store,
                KEY,
                Options(task=TASK, epsilon=EPSILON, poll_s=0.02),
                url,
                resume=row.id,
            )
            assert done["status"] == "decided" and done["session"] == row.prover_session
            # the verdict reached the Prover, on the one session the first attempt created
            held = ProverClient(http, key=KEY).session(row.prover_session)  # a signed read
            assert held.status == "decided"
        assert len(store.all()) == 1


@pytest.mark.slow
def test_baselines_and_the_papers_estimator(tmp_path: Path) -> None:
    # The paper's estimator (with fresh local samples) and the non-interactive baseline reach the
    # same verdicts as the default; the naive MSE-only baseline is fooled by the w/2 cheat.
    with prover(tmp_path / "h") as honest, prover(tmp_path / "c", "scale:0.5") as cheat:
        paper = dict(estimator="residual", fresh_samples=4000, pairs_per_level=20000,
                     spot_checks=32, layout="pairs", epsilon=0.3)  # fmt: skip
        assert _verify(honest, tmp_path, 31, **paper)["verdict"] == "accept"
        assert _verify(cheat, tmp_path, 32, **paper)["verdict"] == "abort"
        local = _verify(honest, tmp_path, 33, protocol="noninteractive", pairs_per_level=3000,
                        spot_checks=0)  # fmt: skip
        assert local["verdict"] == "accept" and local["local_trainings"] == 12000
        assert local["prover_trainings"] == 0 and local["certificate"]["max_corrupted"] == 0
        naive = dict(protocol="naive", fresh_samples=2000, epsilon=1.0)
        assert _verify(honest, tmp_path, 34, **naive)["verdict"] == "accept"
        fooled = _verify(cheat, tmp_path, 35, **naive)
        assert fooled["verdict"] == "accept" and fooled["figures"]["insecure_baseline"] == 1.0
