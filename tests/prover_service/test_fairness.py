"""Issue 11, scheduling: a small challenge finishes while a large attribution runs (before the
fix one worker ran jobs in order: a 12-subset challenge made no progress for 80 s), and the
large job can be cancelled by its owner. Slow (~35 s): the ridge method draws all 10^7 masks
before its first progress report, which is where a cancel is noticed."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from protocol.signing import generate_key
from prover_service.app import create_app
from tests.prover_service.conftest import SignedAuth, make_settings, signed_challenge
from tests.serving import serve


def _until(client: httpx.Client, url: str, auth: SignedAuth, want: str, limit: float) -> float:
    t0 = time.perf_counter()
    while (doc := client.get(url, auth=auth).json())["status"] != want:
        assert time.perf_counter() - t0 < limit, doc
        time.sleep(0.05)
    return time.perf_counter() - t0


@pytest.mark.slow
def test_a_small_challenge_finishes_while_a_large_attribution_runs(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, run_worker=True, max_budget=10**7, trainings_per_day=10**8)
    owner, vkey = SignedAuth(generate_key()), generate_key()
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as client:
        task = client.get("/v1/info").json()["tasks"][0]
        body = {"task_hash": task["task_hash"], "method": "ridge", "budget": 200}
        small = client.post("/v1/attributions", json=body, auth=owner).json()
        _until(client, f"/v1/jobs/{small['id']}", owner, "done", 60)
        content = client.get(f"/v1/jobs/{small['id']}", auth=owner).json()["result"]
        large = client.post("/v1/attributions", json=body | {"budget": 10**7}, auth=owner).json()
        _until(client, f"/v1/jobs/{large['id']}", owner, "running", 30)
        challenge = signed_challenge(vkey, task["task_hash"], content, task["bound"],
                                     pairs_per_level=2)  # |E| = 12  # fmt: skip
        sid = client.post("/v1/challenges", json=challenge.model_dump()).json()["session_id"]
        took = _until(client, f"/v1/sessions/{sid}", SignedAuth(vkey), "ready", 30)
        assert client.get(f"/v1/jobs/{large['id']}", auth=owner).json()["status"] == "running"
        cancelled = client.post(f"/v1/jobs/{large['id']}/cancel", auth=owner).json()
        assert cancelled["status"] == "cancelled"
    print(f"small challenge ready {took:.2f} s after submission behind a budget-1e7 job")
