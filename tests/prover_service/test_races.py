"""Issue 11 under real uvicorn: concurrent replays and verdicts, and a chunked upload's memory.

Before the fix: 16 concurrent replays of one challenge gave up to 12 x 500 (IntegrityError on the
nonce); two racing verdicts were both accepted in 4 of 20 tries; a 1 GiB chunked upload peaked at
2.5 GB because the body limit read the whole body first.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from protocol.messages import Verdict
from protocol.signing import SignedMessage, generate_key, sign_message
from prover_service.app import create_app
from tests.prover_service.conftest import SALT, SPOT, SignedAuth, make_settings, signed_challenge
from tests.serving import serve

OWNER = generate_key()


def _publish(client: httpx.Client) -> tuple[str, dict]:  # type: ignore[type-arg]
    task = client.get("/v1/info").json()["tasks"][0]
    body = {"task_hash": task["task_hash"], "method": "ridge", "budget": 200}
    job = client.post("/v1/attributions", json=body, auth=SignedAuth(OWNER)).json()
    while (doc := client.get(f"/v1/jobs/{job['id']}", auth=SignedAuth(OWNER)).json())[
        "status"
    ] != "done":
        time.sleep(0.05)
    return str(doc["result"]), task


def test_100_concurrent_replays_give_one_201_and_409s(tmp_path: Path) -> None:
    with serve(create_app(make_settings(tmp_path, run_worker=True))) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            content, task = _publish(client)
            challenge = signed_challenge(generate_key(), task["task_hash"], content, task["bound"])
            body = challenge.model_dump()
            with ThreadPoolExecutor(32) as pool:
                codes = list(
                    pool.map(lambda _: client.post("/v1/challenges", json=body), range(100))
                )
    statuses = sorted(r.status_code for r in codes)
    assert statuses == [201] + [409] * 99, statuses
    assert all(set(r.json()) == {"code", "detail"} for r in codes if r.status_code == 409)


def _verdict(key, sid: str, challenge: SignedMessage, response: SignedMessage, what: str):  # type: ignore[no-untyped-def]
    return sign_message(key, Verdict(
        session_id=sid, challenge_digest=challenge.digest, response_digest=response.digest,
        verdict=what, reason="passed" if what == "accept" else "estimate_above_threshold",
        figures={"gap": 0.01}, spot_check_indices=tuple(SPOT), salt=SALT.hex(),
        timestamp=int(time.time()),
    ))  # fmt: skip


def test_racing_verdicts_record_exactly_one(tmp_path: Path) -> None:
    with serve(create_app(make_settings(tmp_path, run_worker=True))) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            content, task = _publish(client)
            for _ in range(10):
                vkey = generate_key()
                mine = SignedAuth(vkey)
                challenge = signed_challenge(vkey, task["task_hash"], content, task["bound"])
                sid = client.post("/v1/challenges", json=challenge.model_dump()).json()
                sid = sid["session_id"]
                while client.get(f"/v1/sessions/{sid}", auth=mine).json()["status"] != "ready":
                    time.sleep(0.02)
                response = SignedMessage.model_validate(
                    client.get(f"/v1/sessions/{sid}/response", auth=mine).json()
                )
                bodies = [_verdict(vkey, sid, challenge, response, w).model_dump()
                          for w in ("accept", "abort")]  # fmt: skip
                start = threading.Barrier(2)

                def post(body: dict, start=start, sid=sid) -> int:  # type: ignore[no-untyped-def, type-arg]
                    start.wait()
                    return client.post(f"/v1/sessions/{sid}/verdict", json=body).status_code

                with ThreadPoolExecutor(2) as pool:
                    codes = sorted(pool.map(post, bodies))
                assert codes == [200, 409], codes
                held = client.get(f"/v1/sessions/{sid}/transcript", auth=mine).json()
                winner = held["verdict_message"]["payload"]["verdict"]
                assert held["verdict"] == winner


def test_a_chunked_upload_is_refused_without_reading_past_the_limit(tmp_path: Path) -> None:
    limit, total, piece = 2**20, 64 * 2**20, b"x" * 2**16
    app = create_app(make_settings(tmp_path, max_body_bytes=limit))

    def body() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        for _ in range(total // len(piece)):
            yield piece

    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            r = client.post("/v1/challenges", content=body(),
                            headers={"content-type": "application/json"})  # fmt: skip
            status = r.status_code
        except httpx.TransportError:  # the server may close the socket on the unread rest
            status = 413
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    assert status == 413
    assert peak < 2 * limit, f"peak {peak / 2**20:.1f} MiB for a {limit / 2**20:.0f} MiB limit"
