"""A Prover killed with SIGKILL mid-challenge resumes on restart and serves the same bytes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from protocol.messages import ResponseManifest
from protocol.signing import SignedMessage, generate_key
from prover_service.service import ProverService
from tests.prover_service.conftest import SignedAuth, make_settings, signed_challenge

TASK = "digits-logreg"
VKEY = generate_key()


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(root: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prover_service",
            "serve",
            "--task",
            TASK,
            "--key",
            str(root / "prover.pem"),
            "--db",
            f"sqlite:///{root}/prover.db",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _until(  # type: ignore[no-untyped-def]
    client: httpx.Client, url: str, ok, proc: subprocess.Popen[bytes], stall: float = 900
) -> dict:  # type: ignore[type-arg]
    """Poll ``url`` until ``ok(doc)``: an event, however slow the machine. It fails only if the
    Prover exits, or if nothing about the answer changes for ``stall`` seconds (a hang guard,
    reset by every sign of progress), never because the work takes long."""
    last, changed = None, time.monotonic()
    while time.monotonic() - changed < stall:
        if proc.poll() is not None:
            raise AssertionError(f"the Prover exited ({proc.returncode}) while waiting on {url}")
        try:
            doc = client.get(url).json()
            if ok(doc):
                return doc  # type: ignore[no-any-return]
            if doc != last:
                last, changed = doc, time.monotonic()
        except httpx.TransportError:
            pass  # still starting
        time.sleep(0.1)
    raise AssertionError(f"no progress on {url} for {stall} s: {last}")


@pytest.mark.slow
def test_sigkill_mid_job_then_restart_gives_identical_response(tmp_path: Path) -> None:
    ref_root, live_root = tmp_path / "ref", tmp_path / "live"
    ref_root.mkdir()
    live_root.mkdir()
    # Reference run, in process, on its own database.
    ref = ProverService(make_settings(ref_root, tasks=[TASK]))
    task_hash = next(iter(ref.tasks))
    job = ref.attributions.submit(task_hash, "influence", 50, 0.5, "")
    ref.run_pending()
    content = ref.job(job.id).result
    assert content is not None
    seed = "5a" * 32
    bound = ref.tasks[task_hash].bound

    def make() -> SignedMessage:
        return signed_challenge(
            VKEY, task_hash, content, bound, pairs_per_level=400, challenge_seed=seed
        )

    session = ref.sessions.submit(make())
    ref.run_pending()
    want = ResponseManifest.model_validate(ref.sessions.response(session.id).payload)

    # The live Prover: same attribution (same method, budget and seed), then killed mid-job.
    make_settings(live_root, tasks=[TASK])  # writes the key file
    port = _port()
    proc = _serve(live_root, port)
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=300, auth=SignedAuth(VKEY)
        ) as client:
            _until(client, "/v1/ready", lambda d: d.get("ready") is True, proc)
            j = client.post(
                "/v1/attributions",
                json={"task_hash": task_hash, "method": "influence", "budget": 50},
            ).json()
            assert (
                _until(client, f"/v1/jobs/{j['id']}", lambda d: d["status"] == "done", proc)[
                    "result"
                ]
                == content
            )
            sid = client.post("/v1/challenges", json=make().model_dump()).json()["session_id"]
            _until(client, f"/v1/sessions/{sid}", lambda d: d["job"]["done"] >= 1024, proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        proc = _serve(live_root, port)  # restart on the same database
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=300, auth=SignedAuth(VKEY)
        ) as client:
            doc = _until(client, f"/v1/sessions/{sid}", lambda d: d["status"] == "ready", proc)
            assert doc["job"]["done"] == 2400
            got = ResponseManifest.model_validate(
                client.get(f"/v1/sessions/{sid}/response").json()["payload"]
            )
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert (got.values.sha256, got.probes.sha256) == (want.values.sha256, want.probes.sha256)
