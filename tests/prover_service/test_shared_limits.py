"""Issue 11, the last leftover: request nonces and rate buckets shared by every Prover process
on one database, and reads rate-limited.

Two apps built by ``create_app`` on the same database URL stand for two uvicorn workers (or two
replicas behind a load balancer). Before the fix each kept its nonces and token buckets in its
own memory: a signed request accepted by one was accepted again by the other (200 twice), and
each granted the key its own ``rate_per_minute`` (6 of 6 attribution requests accepted at a
rate of 3). Reads were not limited at all. The clock is frozen where a count is asserted, so
no bucket refills during a test (no timing in tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from protocol.signing import generate_key, sign_request
from prover_service import auth
from prover_service.app import create_app
from prover_service.tables import JobRow, RateBucketRow, RequestNonceRow
from tests.databases import on_both_databases
from tests.prover_service.conftest import OWNER, Prover, SignedAuth, make_settings
from tests.serving import serve


def _pair(tmp_path: Path, **over: object) -> Iterator[tuple[Prover, Prover]]:
    """Two Provers (two apps, two services) on one database, array folder and key."""
    apps = [create_app(make_settings(tmp_path, **over)) for _ in range(2)]
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
        task_hash = a.get("/v1/info").json()["tasks"][0]["task_hash"]
        yield tuple(  # type: ignore[misc]
            Prover(c, app.state.service, app.state.service.settings, task_hash)
            for c, app in ((a, apps[0]), (b, apps[1]))
        )
    for app in apps:
        app.state.service.engine.dispose()


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> int:
    """The Gate's clock, stopped: buckets never refill while a test counts."""
    t = int(time.time())
    monkeypatch.setattr(auth, "now", lambda: float(t))
    return t


def _jobs(p: Prover) -> int:
    with p.service.db() as s:
        return int(s.scalar(select(func.count()).select_from(JobRow)) or 0)


@on_both_databases
def test_a_signed_request_accepted_by_one_process_is_a_replay_at_the_other(
    tmp_path: Path,
) -> None:
    for a, b in _pair(tmp_path):
        headers = sign_request(OWNER, "GET", "/v1/sessions", b"")
        first = a.client.get("/v1/sessions", headers=headers)
        assert first.status_code == 200, first.text
        again = b.client.get("/v1/sessions", headers=headers)
        assert again.status_code == 401, "replayed to a second process and accepted"
        assert set(again.json()) == {"code", "detail"} and "nonce" in again.json()["detail"]
        # an expensive request replayed to the other process starts no second job
        body = httpx.Request(
            "POST", "http://x/v1/attributions",
            json={"task_hash": a.task_hash, "method": "ridge", "budget": 100},
        ).content  # fmt: skip
        headers = sign_request(OWNER, "POST", "/v1/attributions", body)
        headers["content-type"] = "application/json"
        assert a.client.post("/v1/attributions", content=body, headers=headers).status_code == 202
        replay = b.client.post("/v1/attributions", content=body, headers=headers)
        assert replay.status_code == 401 and replay.json()["code"] == "unauthorized"
        assert _jobs(a) == 1


def _attr(p: Prover, key=OWNER):  # type: ignore[no-untyped-def]
    body = {"task_hash": p.task_hash, "method": "ridge", "budget": 100}
    return p.client.post("/v1/attributions", json=body, auth=SignedAuth(key))


@on_both_databases
def test_a_keys_rate_quota_is_shared_by_the_processes(tmp_path: Path, frozen: int) -> None:
    for a, b in _pair(tmp_path, rate_per_minute=3, max_active_jobs_per_key=100):
        replies = [_attr(p) for p in (a, b, a, b, a, b)]
        assert [r.status_code for r in replies] == [202, 202, 202, 429, 429, 429]
        over = replies[-1]
        assert "per minute" in over.json()["detail"] and int(over.headers["retry-after"]) >= 1
        assert _attr(a, generate_key()).status_code == 202  # another key has its own bucket
        assert _jobs(a) == 4


@on_both_databases
def test_concurrent_requests_to_both_processes_give_only_documented_statuses(
    tmp_path: Path, frozen: int
) -> None:
    settings = make_settings(tmp_path, rate_per_minute=5, max_active_jobs_per_key=100,
                             read_rate_per_minute=40)  # fmt: skip
    apps = [create_app(settings), create_app(make_settings(tmp_path, **settings.model_dump()))]
    with serve(apps[0]) as url_a, serve(apps[1]) as url_b:
        clients = [httpx.Client(base_url=u, timeout=60) for u in (url_a, url_b)]
        # FastAPI builds an app's routes on the first request that walks them, under a
        # warnings.catch_warnings() that is not thread-safe: two apps building at once can let
        # a pydantic warning out, an error under pytest. An unknown path (404, not a read)
        # walks them all, one app at a time, first.
        assert [c.get("/nowhere").status_code for c in clients] == [404, 404]
        task_hash = clients[0].get("/v1/info").json()["tasks"][0]["task_hash"]
        body = {"task_hash": task_hash, "method": "ridge", "budget": 100}
        # 8 signed requests, each sent 4 times to each process, and 60 reads: all at once
        posts = [sign_post(body) for _ in range(8)]
        calls = [(i % 2, h) for h in posts for i in range(8)] + [(i % 2, None) for i in range(60)]

        def send(call: tuple[int, tuple[bytes, dict[str, str]] | None]) -> tuple[str, int]:
            client = clients[call[0]]
            if call[1] is None:
                return "read", client.get("/v1/sessions").status_code
            content, headers = call[1]
            reply = client.post("/v1/attributions", content=content, headers=headers)
            return headers["X-VDA-Nonce"], reply.status_code

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(send, calls))
        for c in clients:
            c.close()
    reads = [code for what, code in results if what == "read"]
    assert set(reads) <= {200, 429} and reads.count(200) == 39, reads  # and /v1/info once
    writes = [code for what, code in results if what != "read"]
    assert set(writes) <= {202, 401, 429}, writes
    for h in posts:  # each signed request passed the nonce check once, at one process
        mine = [code for what, code in results if what == h[1]["X-VDA-Nonce"]]
        assert mine.count(401) == 7 and set(mine) - {401} <= {202, 429}, mine
    assert writes.count(202) == 5 and writes.count(429) == 3  # the shared quota of 5
    assert _jobs_in(apps[0]) == 5
    for app in apps:
        app.state.service.engine.dispose()


def sign_post(body: dict[str, object]) -> tuple[bytes, dict[str, str]]:
    content = httpx.Request("POST", "http://x/v1/attributions", json=body).content
    headers = sign_request(OWNER, "POST", "/v1/attributions", content)
    return content, {**headers, "content-type": "application/json"}


def _jobs_in(app: object) -> int:
    service = app.state.service  # type: ignore[attr-defined]
    with service.db() as s:
        return int(s.scalar(select(func.count()).select_from(JobRow)) or 0)


@on_both_databases
def test_a_burst_of_reads_gets_429_with_retry_after(tmp_path: Path, frozen: int) -> None:
    for a, b in _pair(tmp_path, read_rate_per_minute=6):
        # the pair's set-up read /v1/info once: 5 more reads, alternating, then the 7th
        codes = [p.client.get("/v1/info").status_code for p in (a, b, a, b, a)]
        assert codes == [200] * 5
        for path in ("/v1/info", "/v1/sessions", "/v1/log/head", "/audit", "/v1/jobs/x"):
            over = b.client.get(path)
            assert over.status_code == 429, (path, over.text)
            assert set(over.json()) == {"code", "detail"} and "address" in over.json()["detail"]
            assert int(over.headers["retry-after"]) >= 1
        # a signed reader is counted by its key, not its address; then it too is held
        key = generate_key()
        signed = [p.client.get("/v1/sessions", auth=SignedAuth(key)) for p in (a, b) * 4]
        assert [r.status_code for r in signed] == [200] * 6 + [429] * 2
        assert "key" in signed[-1].json()["detail"]
        # writes are not reads: an expensive request is held to its own rate only
        assert _attr(a).status_code == 202


@on_both_databases
def test_the_database_ledger_agrees_with_the_memory_reference(tmp_path: Path) -> None:
    """The same sequence of nonces and tokens, at given times, answered alike."""
    service = create_app(make_settings(tmp_path)).state.service
    ledgers = [auth.MemoryRequestStore(), auth.DatabaseRequestStore(service.db)]
    # (nonce, expires_at, t, accepted): a repeat is refused until its row expires
    steps = [("n1", 100.0, 0.0, True), ("n1", 100.0, 50.0, False), ("n2", 10.0, 5.0, True),
             ("n1", 300.0, 101.0, True), ("n1", 400.0, 200.0, False)]  # fmt: skip
    for nonce, expires_at, t, accepted in steps:
        answers = [ledger.spend(nonce, "k", expires_at, t) for ledger in ledgers]
        assert answers == [accepted, accepted], (nonce, t, answers)
    for t in (0.0, 0.0, 0.0, 1.0, 10.0, 20.0, 20.0, 20.0, 19.0, 200.0, 200.0):
        waits = [ledger.take("expensive", "k", 3, t) for ledger in ledgers]
        assert waits[0] == pytest.approx(waits[1]), (t, waits)
    assert ledgers[1].take("read", "ip:x", 3, 200.0) == 0.0  # its own scope
    service.engine.dispose()


@on_both_databases
def test_expired_nonces_and_idle_buckets_are_pruned(tmp_path: Path) -> None:
    service = create_app(make_settings(tmp_path)).state.service
    ledger = auth.DatabaseRequestStore(service.db)
    assert ledger.spend("a" * 32, "k", 100.0, 0.0) and ledger.take("read", "ip:x", 5, 0.0) == 0
    assert ledger.spend("b" * 32, "k", 500.0, 50.0)  # pruned at 50 s: nothing expired yet
    with service.db() as s:
        assert s.scalar(select(func.count()).select_from(RequestNonceRow)) == 2
    assert ledger.spend("c" * 32, "k", 500.0, 200.0)  # later: "a" expired, the bucket idle
    with service.db() as s:
        assert sorted(s.scalars(select(RequestNonceRow.nonce))) == ["b" * 32, "c" * 32]
        assert s.scalar(select(func.count()).select_from(RateBucketRow)) == 0
    service.engine.dispose()
