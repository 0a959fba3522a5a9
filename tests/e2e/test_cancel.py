"""Stopping a verification over HTTP (a real uvicorn Prover on loopback): Ctrl-C during the
Prover's training cancels its job, the Prover deletes the job's partial arrays, the record
stays incomplete and ``--resume`` queues the job again and finishes; ``vda-verifier cancel``
stops a running verification the same way. The Prover's worker is driven by the test (no
background lane), so each step happens at a known point, never after a guessed wait."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from protocol.signing import generate_key, save_private_key
from prover_service.app import create_app
from prover_service.sessions import LOCAL
from prover_service.settings import Settings
from prover_service.tables import ChunkRow
from tests.databases import db_url
from tests.serving import serve, verifier_db
from verifier_client.cli import app as verifier_cli
from verifier_client.client import ProverClient, ProverRefused
from verifier_client.run import Options, run_verification
from verifier_client.store import VerifierStore

TASK = "planted:n_train=20,n_targets=2"
# 2,000 shared bases: 8,000 Prover trainings, 8 chunks; one is trained before the interrupt
OPTS = dict(task=TASK, epsilon=0.6, budget=200, pairs_per_level=2000, spot_checks=4,
            poll_s=0.01, seed=b"cancel")  # fmt: skip


@pytest.fixture
def prover(tmp_path: Path) -> Any:
    save_private_key(generate_key(), tmp_path / "p.pem")
    settings = Settings(db=db_url(tmp_path, "p"), key_file=tmp_path / "p.pem", tasks=[TASK],
                        array_dir=tmp_path / "arrays", run_worker=False)  # fmt: skip
    app = create_app(settings)
    with serve(app) as url:
        yield url, app.state.service


def _chunks(svc: Any, job_id: str) -> list[ChunkRow]:
    with svc.db() as s:
        return list(s.scalars(select(ChunkRow).where(ChunkRow.job_id == job_id)))


def _run(url: str, root: Path, key: Any, progress: Any, resume: str | None = None) -> dict:  # type: ignore[type-arg]
    with httpx.Client(base_url=url, timeout=60) as http:
        return run_verification(ProverClient(http, key=key), VerifierStore(verifier_db(root)),
                                key, Options(**OPTS), url, progress, resume)  # fmt: skip


def test_ctrl_c_cancels_the_provers_job_and_resume_finishes(prover: Any, tmp_path: Path) -> None:
    url, svc = prover
    key = generate_key()
    seen: dict[str, Any] = {}
    notes: list[str] = []

    def interrupt(phase: str, _done: int, _total: int) -> None:
        if phase.startswith("attribution"):
            svc.run_pending()  # the attribution job, to the end
        elif phase.startswith("challenge") and "shas" not in seen:
            svc.run_pending(max_chunks=1)  # one chunk of the challenge, then Ctrl-C
            (record,) = VerifierStore(verifier_db(tmp_path)).all()
            seen["sid"] = record.prover_session
            seen["job"] = svc.sessions.read(record.prover_session, LOCAL).job_id
            chunks = _chunks(svc, seen["job"])
            assert chunks, "a chunk was trained before the interrupt"
            seen["shas"] = {sha for c in chunks for sha in (c.values_sha, c.probes_sha)}
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with httpx.Client(base_url=url, timeout=60) as http:
            client = ProverClient(http, key=key)
            run_verification(client, VerifierStore(verifier_db(tmp_path)), key,
                             Options(**OPTS), url, interrupt, None, notes.append)  # fmt: skip
    sid, job = seen["sid"], seen["job"]
    assert any(f"job {job} is cancelled" in n and f"--resume {sid}" in n for n in notes), notes
    # on the Prover: cancelled, and its partial arrays gone
    assert svc.sessions.read(sid, LOCAL).status == "cancelled"
    assert _chunks(svc, job) == []
    assert not any(svc.arrays.has(sha) for sha in seen["shas"])
    # on the Verifier: incomplete, and `show` says how to finish it
    (record,) = VerifierStore(verifier_db(tmp_path)).all()
    assert record.status == "incomplete"
    shown = CliRunner().invoke(verifier_cli, ["show", sid[:12], "--db", verifier_db(tmp_path)])
    assert shown.exit_code == 0 and f"--resume {sid}" in shown.stdout
    # only the job's owner may queue it again
    with httpx.Client(base_url=url, timeout=60) as http:
        with pytest.raises(ProverRefused) as other:
            ProverClient(http, key=generate_key()).resume_job(job)
    assert other.value.status == 404

    def train_all(phase: str, _done: int, _total: int) -> None:
        if phase.startswith("challenge"):
            svc.run_pending()

    result = _run(url, tmp_path, key, train_all, resume=sid)
    assert result["status"] == "decided" and result["verdict"] in ("accept", "abort")
    assert result["session"] == sid and result["prover_trainings"] == 8000
    assert any("had been cancelled: queued again" in n for n in result["notes"])
    assert svc.sessions.read(sid, LOCAL).status == "decided"
    with httpx.Client(base_url=url, timeout=60) as http:  # a finished job does not resume
        with pytest.raises(ProverRefused) as done:
            ProverClient(http, key=key).resume_job(job)
    assert done.value.status == 409


def test_the_cancel_command_stops_a_running_verification(prover: Any, tmp_path: Path) -> None:
    url, svc = prover
    key_file = tmp_path / "v.pem"
    save_private_key(generate_key(), key_file)
    from protocol.signing import load_private_key

    key = load_private_key(key_file)
    said: list[str] = []

    def cancel_from_another_terminal(phase: str, _done: int, _total: int) -> None:
        if phase.startswith("attribution"):
            svc.run_pending()
        elif phase.startswith("challenge") and not said:
            svc.run_pending(max_chunks=1)
            (record,) = VerifierStore(verifier_db(tmp_path)).all()
            argv = ["cancel", record.prover_session[:10], "--db", verifier_db(tmp_path),
                    "--key", str(key_file)]  # fmt: skip
            out = CliRunner().invoke(verifier_cli, argv)
            assert out.exit_code == 0, out.stderr
            said.append(out.stdout)

    with pytest.raises(ProverRefused) as stopped:
        _run(url, tmp_path, key, cancel_from_another_terminal)
    (record,) = VerifierStore(verifier_db(tmp_path)).all()
    sid = record.prover_session
    assert "is cancelled" in said[0] and f"--resume {sid}" in said[0]
    assert stopped.value.status == 409 and f"--resume {sid}" in str(stopped.value)
    assert record.status == "incomplete" and svc.sessions.read(sid, LOCAL).status == "cancelled"
    again = CliRunner().invoke(verifier_cli, ["cancel", sid, "--db", verifier_db(tmp_path),
                                              "--key", str(key_file)])  # fmt: skip
    assert again.exit_code == 0 and "already cancelled" in again.stdout
