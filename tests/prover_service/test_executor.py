"""The executors: the same bytes locally and on Ray, a Ray worker killed mid-job, a bounded
retry, and a Prover restarted while its Ray jobs run.

Every test shares one local Ray instance (2 CPUs) started here, with no outside service; the
tests skip, saying so, where Ray is not installed (CI installs it: ``pip install .[ray]``).
A *slow* planted task (the planted task with a pause per call and the same spec, so the same
hash and bytes) is written to a file, which also checks that a ``FILE.py:FACTORY`` task reaches
Ray's workers (by value).
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from protocol.evaluation import run_task
from protocol.messages import ResponseManifest
from protocol.signing import generate_key
from protocol.tasks import load_task
from prover_service.executor import ChunkLost, LocalExecutor, make_executor, ray_available
from prover_service.service import ProverService
from prover_service.training import draw_training_set
from tests.prover_service.conftest import SignedAuth, make_settings, signed_challenge

pytestmark = [
    pytest.mark.skipif(not ray_available(), reason="Ray is not installed: pip install .[ray]"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

TASK = "planted:n_train=20,n_targets=2"
VKEY = generate_key()

SLOW = """
import os, time
from pathlib import Path
from protocol.tasks.planted import PlantedTask


class SlowPlanted(PlantedTask):
    chunk_size = 64
    pause = {pause}
    pids = {pids!r}
    crash = {crash}

    def evaluate_outputs(self, masks, seeds):
        if self.pids:
            (Path(self.pids) / f"{{os.getpid()}}-{{time.monotonic_ns()}}").touch()
        if self.crash:
            os._exit(1)
        time.sleep(self.pause)
        return super().evaluate_outputs(masks, seeds)


def make():
    return SlowPlanted(n_train=20, n_targets=2)
"""


def _slow_task(root: Path, pause: float, pids: Path | None = None, crash: bool = False) -> str:
    path = root / f"slow_{int(pause * 1000)}_{int(crash)}.py"
    path.write_text(SLOW.format(pause=pause, pids=str(pids) if pids else "", crash=crash))
    return f"{path}:make"


def _sha(out: Any) -> str:
    return hashlib.sha256(out.values.tobytes() + out.probes.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray instance with 2 CPUs for this module; yields its GCS address."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


def _respond(root: Path, executor: str, pairs: int, seed: str) -> tuple[str, str, str]:
    """Attribution hash and the response's (values, probes) SHA-256 from a Prover in process."""
    root.mkdir()
    svc = ProverService(make_settings(root, executor=executor, ray_workers=2))
    task_hash = next(iter(svc.tasks))
    job = svc.attributions.submit(task_hash, "ridge", 300, 0.5, "")
    svc.run_pending()
    content = svc.job(job.id).result
    assert content is not None, svc.job(job.id).error
    bound = svc.tasks[task_hash].bound
    signed = signed_challenge(VKEY, task_hash, content, bound, pairs_per_level=pairs,
                              challenge_seed=seed)  # fmt: skip
    session = svc.sessions.submit(signed)
    svc.run_pending()
    got = ResponseManifest.model_validate(svc.sessions.response(session.id).payload)
    assert svc.job(session.job_id).done == 6 * pairs
    svc.stop_worker()
    return content, got.values.sha256, got.probes.sha256


def test_challenge_response_identical_locally_and_on_ray(ray_cluster: str, tmp_path: Path) -> None:
    """5 chunks of 1024 subsets, two in flight on Ray: the same attribution and response bytes."""
    seed = "3c" * 32
    local = _respond(tmp_path / "local", "local", 800, seed)
    on_ray = _respond(tmp_path / "ray", "ray", 800, seed)
    assert on_ray == local


def test_train_samples_identical_and_task_errors_surface(ray_cluster: str, tmp_path: Path) -> None:
    task = load_task(TASK)
    masks, seeds = draw_training_set(task, 3000, bytes(32), 0.5)
    ex = make_executor("ray", workers=2)
    seen: list[tuple[int, int]] = []
    got = ex.run(task, masks, seeds, progress=lambda d, t: seen.append((d, t)))
    assert _sha(got) == _sha(LocalExecutor().run(task, masks, seeds))
    assert sorted(seen)[-1] == (3000, 3000) and len(seen) == 3
    bad = np.zeros((2, 19), dtype=bool)  # wrong N: the task's own error, not a lost chunk
    with pytest.raises(Exception, match="19") as info:
        ex.run(task, bad, np.zeros(2, dtype=np.uint64))
    assert not isinstance(info.value, ChunkLost)


def test_worker_killed_mid_job_is_retried_with_same_bytes(ray_cluster: str, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    task = load_task(_slow_task(tmp_path, 0.3, pids))
    masks, seeds = draw_training_set(task, 512, bytes(range(32)), 0.5)  # 8 chunks of 64
    ex = make_executor("ray", workers=2, max_retries=2)
    result: dict[str, Any] = {}

    def train() -> None:
        try:
            result["out"] = ex.run(task, masks, seeds)
        except Exception as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    worker = threading.Thread(target=train)
    worker.start()
    deadline = time.time() + 60
    while not any(pids.iterdir()) and time.time() < deadline and worker.is_alive():
        time.sleep(0.02)
    assert any(pids.iterdir()), result.get("error", "no chunk started in 60 s")
    victim = int(next(pids.iterdir()).name.split("-")[0])
    os.kill(victim, signal.SIGKILL)  # mid-chunk: it sleeps 0.3 s after writing its pid
    worker.join(timeout=90)
    assert "out" in result, result.get("error", "the job did not finish in 90 s")
    want = run_task(load_task(TASK), masks, seeds)  # the same spec: the same bytes
    assert _sha(result["out"]) == _sha(want)
    survivors = {int(p.name.split("-")[0]) for p in pids.iterdir()} - {victim}
    assert survivors, "no other worker ran the killed chunk again"


def test_worker_dying_every_time_fails_after_bounded_retries(
    ray_cluster: str, tmp_path: Path
) -> None:
    task = load_task(_slow_task(tmp_path, 0.0, crash=True))
    masks, seeds = draw_training_set(task, 8, bytes(32), 0.5)
    ex = make_executor("ray", workers=1, max_retries=1)
    with pytest.raises(ChunkLost, match=r"chunk \[0, 8\) lost after 1 retries"):
        ex.run(task, masks, seeds)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(root: Path, port: int, task: str, address: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "prover_service", "serve", "--task", task, "--key",
           str(root / "prover.pem"), "--db", f"sqlite:///{root}/prover.db", "--port", str(port),
           "--no-check-tasks", "--executor", "ray", "--ray-address", address]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _until(client: httpx.Client, url: str, ok: Any, timeout: float = 90) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            doc = client.get(url).json()
            if ok(doc):
                return doc  # type: ignore[no-any-return]
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting on {url}")


def test_prover_restart_while_ray_jobs_run(ray_cluster: str, tmp_path: Path) -> None:
    """A Prover on the shared Ray cluster, SIGKILLed mid-challenge, restarted on its database:
    it trains only the missing chunks and serves the bytes of a local run."""
    seed, pairs = "5a" * 32, 800
    want = _respond(tmp_path / "ref", "local", pairs, seed)
    live = tmp_path / "live"
    live.mkdir()
    make_settings(live)  # writes the key file
    task = _slow_task(tmp_path, 0.05)  # a 1024-subset chunk takes 16 x 0.05 s
    port = _port()
    proc = _serve(live, port, task, ray_cluster)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          auth=SignedAuth(VKEY)) as client:  # fmt: skip
            info = _until(client, "/v1/info", lambda d: "public_key" in d)
            task_hash = info["tasks"][0]["task_hash"]
            j = client.post(
                "/v1/attributions", json={"task_hash": task_hash, "method": "ridge", "budget": 300}
            ).json()
            job = _until(client, f"/v1/jobs/{j['id']}", lambda d: d["status"] == "done")
            assert job["result"] == want[0]
            signed = signed_challenge(VKEY, task_hash, want[0], info["tasks"][0]["bound"],
                                      pairs_per_level=pairs, challenge_seed=seed)  # fmt: skip
            sid = client.post("/v1/challenges", json=signed.model_dump()).json()["session_id"]
            at_kill = _until(client, f"/v1/sessions/{sid}", lambda d: d["job"]["done"] >= 1024)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert at_kill["status"] == "training" and at_kill["job"]["done"] < 6 * pairs
        proc = _serve(live, port, task, ray_cluster)  # restart on the same database and cluster
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          auth=SignedAuth(VKEY)) as client:  # fmt: skip
            doc = _until(client, f"/v1/sessions/{sid}", lambda d: d["status"] == "ready")
            assert doc["job"]["done"] == 6 * pairs
            got = ResponseManifest.model_validate(
                client.get(f"/v1/sessions/{sid}/response").json()["payload"]
            )
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert (got.values.sha256, got.probes.sha256) == want[1:]
