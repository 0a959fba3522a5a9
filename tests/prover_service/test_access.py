"""Issue 11, access: who may spend the Prover's compute and read a session (TestClient).

Each test reproduces one finding of the issue (it failed on the code before the fix) and shows
it fixed: unauthenticated work, quotas, caps, allow-list, reads of another Verifier's session,
replayed and query-less signed requests, a challenge for another Prover, cancel, replays of a
stale challenge, and the error shape.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from protocol.signing import generate_key, public_key_hex, sign_request
from protocol.tasks import load_task
from prover_service.app import create_app
from prover_service.tables import JobRow
from tests.prover_service.conftest import (
    OWNER,
    TASK,
    Prover,
    SignedAuth,
    make_settings,
    signed_challenge,
)

BOUND = load_task(TASK).bound


def _prover(tmp_path: Path, **over: object) -> Iterator[Prover]:
    app = create_app(make_settings(tmp_path, **over))
    with TestClient(app) as client:
        task_hash = client.get("/v1/info").json()["tasks"][0]["task_hash"]
        yield Prover(client, app.state.service, app.state.service.settings, task_hash)


@pytest.fixture
def tight(tmp_path: Path) -> Iterator[Prover]:
    yield from _prover(tmp_path, rate_per_minute=3, max_active_jobs_per_key=1, max_budget=1000)


def _jobs(p: Prover) -> int:
    with p.service.db() as s:
        return int(s.scalar(select(func.count()).select_from(JobRow)) or 0)


def _attr(p: Prover, budget: int = 100, key=OWNER):  # type: ignore[no-untyped-def]
    body = {"task_hash": p.task_hash, "method": "ridge", "budget": budget}
    return p.client.post("/v1/attributions", json=body, auth=SignedAuth(key) if key else None)


def test_unsigned_or_over_quota_work_is_refused_and_costs_nothing(tight: Prover) -> None:
    r = _attr(tight, key=None)
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    assert _attr(tight, budget=10**7).status_code == 413  # over the operator's maximum budget
    assert _jobs(tight) == 0
    assert _attr(tight).status_code == 202
    busy = _attr(tight)  # a second unfinished job for this key
    assert busy.status_code == 429 and int(busy.headers["retry-after"]) > 0
    _attr(tight)
    burst = _attr(tight)  # the 4th expensive request within a minute (rate 3)
    assert burst.status_code == 429 and "per minute" in burst.json()["detail"]
    assert _jobs(tight) == 1
    tight.service.run_pending()


def test_allow_list_admits_only_its_keys(tmp_path: Path) -> None:
    for p in _prover(tmp_path, verifier_keys=[public_key_hex(OWNER)]):
        assert _attr(p, key=generate_key()).status_code == 403
        content = p.publish()
        stranger = signed_challenge(generate_key(), p.task_hash, content, BOUND)
        r = p.client.post("/v1/challenges", json=stranger.model_dump())
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        assert p.client.get("/v1/info").json()["access"] == "allow-list"


def test_reads_need_the_sessions_own_verifier(prover: Prover) -> None:
    content = prover.publish()
    vkey = generate_key()
    challenge = signed_challenge(vkey, prover.task_hash, content, BOUND)
    sid = prover.client.post("/v1/challenges", json=challenge.model_dump()).json()["session_id"]
    prover.service.run_pending()
    mine, stranger = SignedAuth(vkey), SignedAuth(generate_key())
    for path in (f"/v1/sessions/{sid}", f"/v1/sessions/{sid}/response"):
        assert prover.client.get(path).status_code == 401
        assert prover.client.get(path, auth=stranger).status_code == 403
        assert prover.client.get(path, auth=mine).status_code == 200
    sha = prover.client.get(f"/v1/sessions/{sid}/response", auth=mine).json()["payload"]
    sha = sha["values"]["sha256"]
    assert prover.client.get(f"/v1/arrays/{sha}").status_code == 401
    assert prover.client.get(f"/v1/arrays/{sha}", auth=stranger).status_code == 404
    assert prover.client.get(f"/v1/arrays/{sha}", auth=mine).status_code == 200
    # a signed request counts once: the same headers again are refused
    headers = sign_request(vkey, "GET", f"/v1/sessions/{sid}", b"")
    assert prover.client.get(f"/v1/sessions/{sid}", headers=headers).status_code == 200
    again = prover.client.get(f"/v1/sessions/{sid}", headers=headers)
    assert again.status_code == 401 and "nonce" in again.json()["detail"]
    # ... and binds its path: headers for one session do not open another path
    headers = sign_request(vkey, "GET", f"/v1/sessions/{sid}", b"")
    assert prover.client.get(f"/v1/sessions/{sid}/response", headers=headers).status_code == 401
    old = sign_request(vkey, "GET", f"/v1/sessions/{sid}", b"", timestamp=int(time.time()) - 3600)
    assert prover.client.get(f"/v1/sessions/{sid}", headers=old).status_code == 401


def test_a_challenge_names_its_prover(prover: Prover) -> None:
    content = prover.publish()
    vkey = generate_key()
    elsewhere = signed_challenge(vkey, prover.task_hash, content, BOUND, prover_key="ab" * 32)
    r = prover.client.post("/v1/challenges", json=elsewhere.model_dump())
    assert r.status_code == 403 and "another Prover" in r.json()["detail"]
    mine = prover.client.get("/v1/info").json()["public_key"]
    here = signed_challenge(vkey, prover.task_hash, content, BOUND, prover_key=mine)
    assert prover.client.post("/v1/challenges", json=here.model_dump()).status_code == 201


def test_a_stale_replay_of_a_held_challenge_is_409_naming_its_session(prover: Prover) -> None:
    # The nonce is looked up before the time stamp: a Verifier resuming after the window
    # learns that its challenge is held, and where (it was "401 stale" before).
    content = prover.publish()
    challenge = signed_challenge(generate_key(), prover.task_hash, content, BOUND)
    sid = prover.client.post("/v1/challenges", json=challenge.model_dump()).json()["session_id"]
    prover.service.settings.timestamp_window_s = 1
    time.sleep(2.1)
    r = prover.client.post("/v1/challenges", json=challenge.model_dump())
    assert r.status_code == 409 and sid in r.json()["detail"]


def test_cancel_stops_a_job_and_only_its_owner_may(prover: Prover) -> None:
    content = prover.publish()
    vkey = generate_key()
    challenge = signed_challenge(vkey, prover.task_hash, content, BOUND, pairs_per_level=400)
    created = prover.client.post("/v1/challenges", json=challenge.model_dump()).json()
    prover.service.run_pending(max_chunks=1)
    url = f"/v1/jobs/{created['job_id']}/cancel"
    assert prover.client.post(url).status_code == 401
    assert prover.client.post(url, auth=SignedAuth(generate_key())).status_code == 404
    r = prover.client.post(url, auth=SignedAuth(vkey))
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    prover.service.run_pending()
    doc = prover.client.get(f"/v1/sessions/{created['session_id']}", auth=SignedAuth(vkey)).json()
    assert doc["status"] == "cancelled" and doc["job"]["done"] == 1024


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("GET", "/nowhere", {}, 404, "not_found"),
        ("DELETE", "/v1/info", {}, 405, "method_not_allowed"),
        ("POST", "/v1/challenges", {"content": b'{"a": "\xff"}'}, 422, "malformed"),
        ("POST", "/v1/challenges", {"content": b"[" * 8_000 + b"]" * 8_000}, 422, "malformed"),
        # a signed message's body is bounded (16 KiB for a challenge) before it is parsed
        ("POST", "/v1/challenges", {"content": b"[" * 100_000 + b"]" * 100_000}, 413, "too_large"),
        ("POST", "/v1/challenges", {"content": b'{"x": 1' + b"0" * 5000 + b"}"}, 422, "malformed"),
    ],
)
def test_every_error_is_code_and_detail(
    prover: Prover,
    method: str,
    path: str,
    kwargs: dict,
    status: int,
    code: str,  # type: ignore[type-arg]
) -> None:
    headers = {"content-type": "application/json"}
    r = prover.client.request(method, path, headers=headers, **kwargs)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert set(r.json()) == {"code", "detail"}


def test_budget_must_be_an_integer(prover: Prover) -> None:
    body = {"task_hash": prover.task_hash, "method": "ridge", "budget": "5"}
    r = prover.client.post("/v1/attributions", json=body, auth=SignedAuth(OWNER))
    assert r.status_code == 422 and r.json()["code"] == "malformed"


def test_values_out_of_range_are_never_signed(prover: Prover) -> None:
    content = prover.publish()
    prover.service.sessions.values_hook = lambda v, *_: np.full_like(v, np.nan)
    vkey = generate_key()
    challenge = signed_challenge(vkey, prover.task_hash, content, BOUND)
    sid = prover.client.post("/v1/challenges", json=challenge.model_dump()).json()["session_id"]
    prover.service.run_pending()
    doc = prover.client.get(f"/v1/sessions/{sid}", auth=SignedAuth(vkey)).json()
    assert doc["job"]["status"] == "failed" and "nothing signed" in doc["job"]["error"]
    assert (
        prover.client.get(f"/v1/sessions/{sid}/response", auth=SignedAuth(vkey)).status_code == 409
    )
