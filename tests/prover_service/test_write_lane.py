"""The write lane (``prover_service.limits.WriteLane``, issue 21): at most
``max_concurrent_writes`` writes in the thread pool at once, the others waiting on the event loop;
past ``write_wait_s`` a write gets 503 ``busy``, and reads never wait for it.

(``benchmarks/attack_load.py --only sybil`` measures what it is for: a small GET's latency while
64 challenges arrive at once.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from protocol.signing import generate_key
from prover_service.app import create_app
from prover_service.limits import LaneTimeout, WriteLane
from tests.prover_service.conftest import SignedAuth, make_settings


def test_no_more_than_width_writes_hold_the_lane_at_once() -> None:
    async def scenario() -> tuple[int, int, int]:
        lane = WriteLane(2, wait_s=60.0)
        inside, most, entered = 0, 0, asyncio.Event()
        release = asyncio.Event()

        async def write() -> None:
            nonlocal inside, most
            async with lane.slot():
                inside += 1
                most = max(most, inside)
                if inside == 2:
                    entered.set()
                await release.wait()
                inside -= 1

        tasks = [asyncio.create_task(write()) for _ in range(5)]
        await entered.wait()
        for _ in range(20):  # let every other task run up to its wait on the lane
            await asyncio.sleep(0)
        held = inside
        release.set()
        await asyncio.gather(*tasks)
        return held, most, inside

    held, most, left = asyncio.run(scenario())
    assert (held, most, left) == (2, 2, 0)


def test_a_write_that_waits_too_long_is_refused_in_words() -> None:
    async def scenario() -> str:
        lane = WriteLane(1, wait_s=0.01)
        async with lane.slot():
            with pytest.raises(LaneTimeout) as err:
                async with lane.slot():
                    pass
        async with lane.slot():  # released: the next write enters
            pass
        return str(err.value)

    assert "more than 1 writes at once have waited 0.01 s" in asyncio.run(scenario())


@pytest.mark.parametrize("signed", [False, True])
def test_a_full_lane_answers_503_busy_and_reads_still_answer(tmp_path: Path, signed: bool) -> None:
    """Unsigned POSTs meet the lane in the middleware (their rate token), signed ones in the
    route's dependency; both get 503 with Retry-After, and a GET is never held by it."""
    app = create_app(make_settings(tmp_path, max_concurrent_writes=1, write_wait_s=0.05))
    with TestClient(app) as http:
        lane: WriteLane = app.state.write_lane
        lane._slots = asyncio.Semaphore(0)  # every slot taken, as by writes that never end
        auth = SignedAuth(generate_key()) if signed else None
        body = {"task_hash": "0" * 64, "method": "ridge", "budget": 10}
        path = "/v1/attributions" if signed else "/v1/challenges"
        r = http.post(path, content=json.dumps(body), auth=auth,
                      headers={"Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "busy" and "writes at once" in r.json()["detail"]
        assert int(r.headers["retry-after"]) >= 1
        assert http.get("/v1/info").status_code == 200
        lane._slots = asyncio.Semaphore(1)  # free again: the write is judged on its merits
        again = http.post(path, content=json.dumps(body), auth=auth,
                          headers={"Content-Type": "application/json"})  # fmt: skip
        assert again.status_code != 503, again.text
