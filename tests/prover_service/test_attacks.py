"""Issue 21: what an attacker and a busy Prover broke, one test per item (Prover side).

Each test reproduces the item's attack at small scale and asserts what the Prover does now:
statuses and codes, what was admitted or stored, which files remain, never how fast.
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from protocol.messages import Verdict
from protocol.signing import SignedMessage, generate_key, sign_message, sign_request
from prover_service.app import create_app
from prover_service.arrays import ArrayStore
from prover_service.audit_cache import AuditCache
from prover_service.errors import Busy, InsufficientStorage, TooManyRequests
from prover_service.limits import BodyLimit
from prover_service.service import ProverService
from prover_service.tables import SessionRow
from tests.prover_service.conftest import (
    OWNER,
    SALT,
    SPOT,
    Prover,
    SignedAuth,
    make_settings,
    signed_challenge,
)


def _content(svc: ProverService) -> tuple[str, str, float]:
    task_hash = next(iter(svc.tasks))
    job = svc.attributions.submit(task_hash, "ridge", 64, 0.5, "")
    svc.run_pending()
    return task_hash, str(svc.job(job.id).result), svc.tasks[task_hash].bound


# -- 4: unsigned 8 MB JSON bodies on /v1/challenges -------------------------------------------
def test_signed_message_bodies_are_capped_and_schema_checked_first(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, post_rate_per_minute=3)
    with TestClient(create_app(settings)) as client:
        big = b'{"type":"challenge.v1","payload":{"junk":[' + b"0.5," * 2_000_000 + b"0]}}"
        r = client.post("/v1/challenges", content=big, headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["code"]) == (413, "too_large")
        # within the cap, an extra field is refused as malformed before any signature check
        signed = signed_challenge(generate_key(), "0" * 64, "0" * 64, 1.0).model_dump()
        signed["payload"]["junk"] = [0.5] * 100
        r = client.post("/v1/challenges", json=signed)
        assert (r.status_code, r.json()["code"]) == (422, "malformed"), r.text
        assert "junk" in r.json()["detail"]
        # the fourth unsigned POST from this address within the minute is refused unread
        r = client.post("/v1/challenges", json=signed)
        assert r.status_code == 422
        r = client.post("/v1/challenges", content=big, headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["code"]) == (429, "too_many_requests")
        assert int(r.headers["retry-after"]) >= 1
        # a signed request is counted per key instead, not per address
        body = {"task_hash": "0" * 64, "method": "ridge", "budget": 10}
        r = client.post("/v1/attributions", json=body, auth=SignedAuth(OWNER))
        assert r.status_code == 404, r.text  # an unknown task: past the address limit


# -- 6: open registration, fair share ---------------------------------------------------------
def test_new_keys_are_admitted_at_a_limited_rate_per_address(tmp_path: Path) -> None:
    svc = ProverService(make_settings(tmp_path, new_keys_per_hour=2))
    task_hash, content, bound = _content(svc)
    keys = [generate_key() for _ in range(3)]
    for key in keys[:2]:
        svc.sessions.submit(signed_challenge(key, task_hash, content, bound), "10.0.0.1")
    with pytest.raises(TooManyRequests, match="new Verifier keys per hour"):
        svc.sessions.submit(signed_challenge(keys[2], task_hash, content, bound), "10.0.0.1")
    # a key already known comes back from the same address; a new one from another address
    svc.sessions.submit(signed_challenge(keys[0], task_hash, content, bound), "10.0.0.1")
    svc.sessions.submit(signed_challenge(keys[2], task_hash, content, bound), "10.0.0.2")


def test_a_full_queue_still_admits_a_new_keys_small_challenge(tmp_path: Path) -> None:
    svc = ProverService(make_settings(tmp_path, max_queued_jobs=2, max_active_jobs_per_key=3))
    task_hash, content, bound = _content(svc)
    greedy, honest = generate_key(), generate_key()

    def large() -> SignedMessage:
        return signed_challenge(greedy, task_hash, content, bound, pairs_per_level=512)

    big = [svc.sessions.submit(large()) for _ in range(2)]
    with pytest.raises(TooManyRequests, match="fair share"):
        svc.sessions.submit(signed_challenge(greedy, task_hash, content, bound))
    small = svc.sessions.submit(signed_challenge(honest, task_hash, content, bound))
    # round robin over keys: the honest key's challenge is served second, not after every job
    svc.run_pending(max_chunks=2)
    assert svc.sessions.read(small.id).status == "ready"
    assert all(svc.sessions.read(b.id).status == "training" for b in big)


# -- 8: the disk quota counts what admitted jobs will write -----------------------------------
def test_the_disk_quota_counts_admitted_jobs(tmp_path: Path) -> None:
    # planted n_train=20, Z=2: a challenge of |E| = 600 reserves 600 (2 x 8 + 64) x 2 = 96,000 B
    svc = ProverService(make_settings(tmp_path, max_disk_bytes=250_000))
    task_hash, content, bound = _content(svc)
    used = svc.arrays.used_bytes
    admitted = 0
    with pytest.raises(InsufficientStorage, match="unfinished jobs will write"):
        for _ in range(4):
            key = generate_key()
            svc.sessions.submit(signed_challenge(key, task_hash, content, bound,
                                                  pairs_per_level=100))  # fmt: skip
            admitted += 1
    assert admitted == (250_000 - used) // 96_000 == 2
    svc.run_pending()
    assert svc.arrays.used_bytes <= 250_000


# -- 7: X-VDA-Key alone does not raise the upload cap -----------------------------------------
def _npy(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros(shape))
    return buf.getvalue()


def test_a_large_upload_is_held_on_disk_until_its_signature_verifies(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_body_bytes=1024 * 1024, max_upload_bytes=8 * 2**20)
    app = create_app(settings)
    with TestClient(app) as client:
        task_hash = client.get("/v1/info").json()["tasks"][0]["task_hash"]
        target = f"/v1/attributions/import?task_hash={task_hash}&budget=8"
        body = _npy((200, 1000))  # 1.6 MB: over max_body_bytes, under max_upload_bytes
        key = generate_key()
        forged = sign_request(key, "POST", target, b"something else")
        r = client.post(
            target, content=body, headers=forged | {"content-type": "application/octet-stream"}
        )
        assert (r.status_code, r.json()["code"]) == (401, "unauthorized"), r.text
        headers = sign_request(key, "POST", target, body)
        r = client.post(
            target, content=body, headers=headers | {"content-type": "application/octet-stream"}
        )
        # signed: through to the app, which checks the shape (its nonce was counted once)
        assert (r.status_code, r.json()["code"]) == (422, "invalid"), r.text
        assert "(200, 1000)" in r.json()["detail"]


def test_large_uploads_in_flight_are_bounded() -> None:
    release, entered = asyncio.Event(), asyncio.Event()

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await receive()
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = BodyLimit(app, limit=10, uploads=("/up",), upload_limit=1000, max_uploads=1)
    scope = {"type": "http", "method": "POST", "path": "/up", "query_string": b"",
             "headers": [(b"x-vda-key", b"ab" * 32), (b"content-length", b"100")]}  # fmt: skip

    async def receive():  # type: ignore[no-untyped-def]
        return {"type": "http.request", "body": b"x" * 100, "more_body": False}

    async def main() -> list[int]:
        sent: list[int] = []

        async def send(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                sent.append(message["status"])

        first = asyncio.create_task(guard(dict(scope), receive, send))
        await entered.wait()
        await guard(dict(scope), receive, send)  # while the first is in flight
        release.set()
        await first
        return sent

    assert asyncio.run(main()) == [503, 204]


# -- 13: a .npy with a fake huge shape --------------------------------------------------------
def test_an_npy_header_claiming_a_huge_shape_is_422_before_allocating(prover: Prover) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (200_000, 200_000)}
    )
    body = b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\0" * 64
    target = f"/v1/attributions/import?task_hash={prover.task_hash}&budget=8"
    headers = {"content-type": "application/octet-stream"}
    for data in (body, _npy((3, 3)), _npy((2, 20))[:-8]):
        r = prover.client.post(target, content=data, headers=headers, auth=SignedAuth(OWNER))
        assert (r.status_code, r.json()["code"]) == (422, "invalid"), r.text
        assert "MemoryError" not in r.text


# -- 9: a decided session is audited once -----------------------------------------------------
def test_a_decided_sessions_audit_is_computed_once(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, public_transcripts=True)
    app = create_app(settings)
    svc: ProverService = app.state.service
    task_hash, content, bound = _content(svc)
    vkey = generate_key()
    challenge = signed_challenge(vkey, task_hash, content, bound)
    sid = svc.sessions.submit(challenge).id
    svc.run_pending()
    response = svc.sessions.response(sid)
    verdict = Verdict(session_id=sid, challenge_digest=challenge.digest,
                      response_digest=response.digest, verdict="accept", reason="passed",
                      figures={"gap": 0.01}, spot_check_indices=tuple(SPOT), salt=SALT.hex(),
                      timestamp=int(time.time()))  # fmt: skip
    svc.sessions.post_verdict(sid, sign_message(vkey, verdict))
    with TestClient(app) as client:
        pages = [client.get(f"/audit/sessions/{sid}") for _ in range(3)]
    assert [p.status_code for p in pages] == [200, 200, 200]
    assert pages[0].text == pages[2].text
    assert svc.audits.computed == 1


def test_an_audit_in_progress_answers_busy_at_once() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def compute(_svc: object, row: SessionRow) -> str:
        calls.append(row.id)
        started.set()
        release.wait()
        return f"audit of {row.id}"

    cache = AuditCache(compute)
    rows = [SessionRow(id=f"s{i}", challenge_json="c", response_json="r", verdict_json="v",
                       verdict="accept", status="decided") for i in range(2)]  # fmt: skip
    out: list[str] = []
    worker = threading.Thread(target=lambda: out.append(cache.audit(None, rows[0])))
    worker.start()
    started.wait()
    for row in rows:  # the same session and another one, while the first is computed
        with pytest.raises(Busy):
            cache.audit(None, row)
    release.set()
    worker.join()
    assert out == ["audit of s0"] and cache.audit(None, rows[0]) == "audit of s0"
    changed = SessionRow(**{**{c: getattr(rows[0], c) for c in ("id", "challenge_json",
                         "response_json", "verdict", "status")}, "verdict_json": "v2"})  # fmt: skip
    cache.audit(None, changed)  # an altered row is audited again
    assert calls == ["s0", "s0"]


# -- 17: database modes and orphaned temporaries ----------------------------------------------
def test_database_files_are_made_0600_and_orphaned_temporaries_removed(tmp_path: Path) -> None:
    db = tmp_path / "prover.db"
    ProverService(make_settings(tmp_path, db=f"sqlite:///{db}")).engine.dispose()
    for f in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        f.touch()
        os.chmod(f, 0o644)
    folder = tmp_path / "arrays" / "ab"
    folder.mkdir(parents=True, exist_ok=True)
    orphans = [folder / "tmpk3j2h1", folder / "tmp.999999999.x1"]
    live = folder / f"tmp.{os.getppid()}.x2"  # another process that still runs
    for f in [*orphans, live]:
        f.write_bytes(b"half an array")
    svc = ProverService(make_settings(tmp_path, db=f"sqlite:///{db}"))
    for f in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if f.exists():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert not any(f.exists() for f in orphans) and live.exists()
    assert svc.arrays.used_bytes == ArrayStore(tmp_path / "arrays").used_bytes
    svc.engine.dispose()


# -- 18: a trailing slash ----------------------------------------------------------------------
def test_a_trailing_slash_is_404_without_a_redirect(prover: Prover) -> None:
    r = prover.client.get("/v1/info/", headers={"host": "evil.example"}, follow_redirects=False)
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert "location" not in r.headers


def test_signed_message_is_still_accepted_after_the_guards(prover: Prover) -> None:
    """The guards leave an ordinary challenge alone (a regression check for items 4-7)."""
    content = prover.publish()
    challenge = signed_challenge(
        generate_key(),
        prover.task_hash,
        content,
        prover.client.get("/v1/info").json()["tasks"][0]["bound"],
    )
    r = prover.client.post("/v1/challenges", json=challenge.model_dump())
    assert r.status_code == 201, r.text
    assert SignedMessage.model_validate(challenge.model_dump()).digest == challenge.digest
