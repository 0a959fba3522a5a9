"""Issue 21 item 10: two Prover processes on one database share a job, never run it twice.

Two :class:`ProverService` instances on one database stand for two processes (each has its own
worker id, so its own leases). Both run the queue at once (a barrier starts them); the job must
finish once, with the bytes one Prover alone gives, and no error. A lease held by a process that
no longer runs is taken over; one held by a live process is not, until it expires. A job that
hits a database error keeps no SQL in what its owner reads. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from protocol.messages import ResponseManifest
from protocol.signing import generate_key
from prover_service.app import create_app
from prover_service.jobs import _HOST
from prover_service.service import ProverService
from prover_service.tables import JobRow, now
from tests.databases import on_both_databases
from tests.prover_service.conftest import OWNER, SignedAuth, make_settings, signed_challenge

SEED = "3c" * 32


def _pair(tmp_path: Path, **over: object) -> tuple[ProverService, ProverService]:
    settings = make_settings(tmp_path, **over)
    return ProverService(settings), ProverService(settings)


def _publish(svc: ProverService) -> tuple[str, str, float]:
    task_hash = next(iter(svc.tasks))
    job = svc.attributions.submit(task_hash, "ridge", 64, 0.5, "")
    svc.run_pending()
    return task_hash, str(svc.job(job.id).result), svc.tasks[task_hash].bound


@on_both_databases
def test_two_provers_on_one_database_finish_each_job_once(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "ref").mkdir()
    a, b = _pair(tmp_path / "shared", max_active_jobs_per_key=3)
    ref = ProverService(make_settings(tmp_path / "ref", max_active_jobs_per_key=3))
    vkey = generate_key()
    task_hash, content, bound = _publish(a)
    assert _publish(ref)[1] == content
    sessions = []
    for svc in (a, ref):
        for _ in range(3):  # |E| = 6 x 700 = 4,200: five chunks of 1,024
            c = signed_challenge(vkey, task_hash, content, bound, pairs_per_level=700,
                                 challenge_seed=SEED)  # fmt: skip
            sessions.append((svc, svc.sessions.submit(c).id))
    ref.run_pending()
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(svc: ProverService) -> None:
        try:
            start.wait()
            svc.run_pending()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    a.run_pending()  # a step either one skipped while the other held the job
    want = ResponseManifest.model_validate(ref.sessions.response(sessions[3][1]).payload)
    for _svc, sid in sessions[:3]:
        row = b.sessions.read(sid)
        job = b.job(row.job_id)
        assert (row.status, job.status, job.error) == ("ready", "done", None)
        got = ResponseManifest.model_validate(a.sessions.response(sid).payload)
        assert (got.values.sha256, got.probes.sha256) == (want.values.sha256, want.probes.sha256)
    for svc in (a, b, ref):
        svc.engine.dispose()


@on_both_databases
def test_a_dead_processs_lease_is_taken_over_a_live_ones_is_not(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    task_hash, content, bound = _publish(a)
    sid = a.sessions.submit(signed_challenge(generate_key(), task_hash, content, bound)).id
    job_id = a.sessions.read(sid).job_id

    def lease(owner: str, until: float) -> None:
        with a.db.begin() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id)
                      .values(lease_owner=owner, lease_until=until))  # fmt: skip

    lease(b.jobs.worker_id, now() + 3600)  # a live Prover holds it
    assert not a.run_pending()
    assert a.sessions.read(sid).status == "training"
    lease(f"{_HOST}:999999999:dead", now() + 3600)  # a killed Prover of this host held it
    assert a.run_pending()
    assert a.sessions.read(sid).status == "ready"
    for svc in (a, b):
        svc.engine.dispose()


def test_a_database_error_in_a_job_leaves_no_sql_for_its_owner(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    app = create_app(settings)
    svc: ProverService = app.state.service
    task_hash, content, bound = _publish(svc)
    vkey = generate_key()
    sid = svc.sessions.submit(signed_challenge(vkey, task_hash, content, bound)).id
    real = svc.lanes.handlers["challenge"]
    calls = []

    def broken(job: JobRow) -> bool:
        calls.append(job.id)
        if len(calls) == 1:
            raise IntegrityError("INSERT INTO chunks (job_id, start) VALUES (?, ?)", {}, None)
        if len(calls) == 2:
            raise KeyError("SELECT * FROM secrets")
        assert real is not None
        return bool(real(job))

    svc.lanes.handlers["challenge"] = broken
    svc.lanes.run_one("challenge")  # the database error: retried later, nothing recorded
    with TestClient(app) as client:
        doc = client.get(f"/v1/sessions/{sid}", auth=SignedAuth(vkey)).json()
        assert doc["job"]["status"] in ("queued", "running") and doc["job"]["error"] is None
        svc.lanes.run_one("challenge")  # a bug: failed, with the exception's type only
        doc = client.get(f"/v1/sessions/{sid}", auth=SignedAuth(vkey)).json()
        assert doc["status"] == "failed", doc
        assert doc["job"]["error"] == "internal error (KeyError)"
        assert "SELECT" not in str(doc) and "INSERT" not in str(doc)
        r = client.get(f"/v1/jobs/{doc['job']['id']}", auth=SignedAuth(OWNER))
        assert r.status_code in (403, 404) or "SELECT" not in r.text


@pytest.mark.parametrize("stale", [True, False])
def test_stale_leases(tmp_path: Path, stale: bool) -> None:
    svc = ProverService(make_settings(tmp_path))
    t = now()
    owner = f"{_HOST}:999999999:gone" if stale else "other-host:1:live"
    assert svc.jobs._stale(owner, t + 60, t) is stale
    assert svc.jobs._stale(owner, t - 1, t)  # expired, whoever held it
    assert svc.jobs._stale(None, None, t)
