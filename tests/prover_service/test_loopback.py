"""The Prover under real uvicorn on loopback, driven over HTTP by httpx."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from protocol.messages import ResponseManifest, array_from_npy
from protocol.signing import SignedMessage, generate_key, open_signed
from prover_service.app import create_app
from tests.prover_service.conftest import SignedAuth, make_settings, signed_challenge
from tests.serving import serve


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    with serve(create_app(make_settings(tmp_path, run_worker=True))) as url:
        yield url


def _wait(client: httpx.Client, url: str, key: str, want: str) -> dict:  # type: ignore[type-arg]
    deadline = time.time() + 60
    while time.time() < deadline:
        doc = client.get(url).json()
        status = doc["status"] if key == "status" else doc["job"]["status"]
        if status == want:
            return doc  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"{url} never reached {want}")


def test_attribution_challenge_and_response_over_real_http(base_url: str) -> None:
    vkey = generate_key()
    with httpx.Client(base_url=base_url, timeout=30, auth=SignedAuth(vkey)) as client:
        info = client.get("/v1/info").json()
        task = info["tasks"][0]
        job = client.post(
            "/v1/attributions",
            json={"task_hash": task["task_hash"], "method": "influence", "budget": 200},
        ).json()
        done = _wait(client, f"/v1/jobs/{job['id']}", "status", "done")
        challenge = signed_challenge(vkey, task["task_hash"], done["result"], task["bound"])
        created = client.post("/v1/challenges", json=challenge.model_dump())
        assert created.status_code == 201
        sid = created.json()["session_id"]
        _wait(client, f"/v1/sessions/{sid}", "status", "ready")
        response = SignedMessage.model_validate(client.get(f"/v1/sessions/{sid}/response").json())
        rm = open_signed(response, ResponseManifest, signer=info["public_key"])
        data = client.get(f"/v1/arrays/{rm.values.sha256}")
        assert data.headers["content-type"] == "application/octet-stream"
        assert array_from_npy(rm.values, data.content).shape == (60, 2)
