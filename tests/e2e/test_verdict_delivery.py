"""The Verifier's verdict path over real HTTP: a bad array is an abort that is signed and posted,
and a verdict lost on the way is recorded, then re-posted by ``--resume``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from protocol.errors import BadResponseError
from tests.databases import on_both_databases
from tests.e2e.test_end_to_end import KEY, TASK, _verify, prover
from tests.serving import verifier_db
from verifier_client.client import ProverClient, TransportError
from verifier_client.run import Options, run_verification
from verifier_client.store import VerifierStore


@on_both_databases
def test_a_bad_array_is_aborted_and_its_verdict_posted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def corrupted(self: ProverClient, *_: object) -> object:
        raise BadResponseError("3 values are NaN or infinite")

    monkeypatch.setattr(ProverClient, "values", corrupted)
    with prover(tmp_path / "p") as url:
        result = _verify(url, tmp_path, 51)
        assert (result["verdict"], result["reason"]) == ("abort", "bad_response")
        assert "NaN" in result["detail"] and result["verdict_posted"]
        assert all(v == v for v in result["figures"].values())  # no NaN: the verdict is signable
        with httpx.Client(base_url=url, timeout=60) as http:
            assert ProverClient(http, key=KEY).session(result["session"]).status == "decided"


@on_both_databases
def test_a_lost_verdict_is_reposted_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_post = ProverClient.post_verdict

    def lost(self: ProverClient, *_: object) -> object:
        raise TransportError("connection reset while posting the verdict")

    with prover(tmp_path / "p") as url:
        monkeypatch.setattr(ProverClient, "post_verdict", lost)
        with pytest.raises(TransportError):
            _verify(url, tmp_path, 52)
        store = VerifierStore(verifier_db(tmp_path))
        (row,) = store.all()
        assert row.status == "decided" and row.verdict_json and row.posted_at is None
        with httpx.Client(base_url=url, timeout=60) as http:
            held = ProverClient(http, key=KEY).session(row.prover_session or "")
            assert held.status == "ready"  # the Prover never got it
            monkeypatch.setattr(ProverClient, "post_verdict", real_post)
            again = Options(task=TASK, epsilon=0.6)
            done = run_verification(
                ProverClient(http, key=KEY), store, KEY, again, url, resume=row.id
            )
            assert done["verdict_posted"] and done["verdict"] == row.verdict
            assert ProverClient(http, key=KEY).session(row.prover_session or "").status == (
                "decided"
            )
