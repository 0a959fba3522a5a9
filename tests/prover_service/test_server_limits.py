"""Issue 21 items 5, 2 and 6 (serve): the shipped server's time-outs and caps, and what ``serve``
refuses to start with.

The server is the one ``serve`` runs (:func:`prover_service.server.server_config`) on loopback,
with short time-outs so that the events come soon; every wait is for an event (the server
closing a socket, an answer), with a generous guard against a hang only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from prover_service.app import create_app
from prover_service.server import server_config
from tests.prover_service.conftest import make_settings

GUARD = 120.0  # seconds: only a hang would reach it
ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _server(tmp_path: Path, **over: object) -> Iterator[int]:
    settings = make_settings(tmp_path, **over)
    port = _port()
    server = uvicorn.Server(server_config(create_app(settings), settings, "127.0.0.1", port))
    server.config.log_level = "warning"
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    with httpx.Client(timeout=GUARD) as c:  # started: the first answer
        while True:
            try:
                c.get(f"http://127.0.0.1:{port}/v1/info")
                break
            except httpx.TransportError:
                if not thread.is_alive():
                    raise RuntimeError("the server did not start") from None
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(GUARD)


def _closed_by_server(sock: socket.socket) -> bytes:
    """Block until the server closes the socket (or answers and closes); what it sent."""
    sock.settimeout(GUARD)
    got = b""
    while chunk := sock.recv(4096):
        got += chunk
    return got


def test_partial_headers_and_a_dripped_body_are_cut_off(tmp_path: Path) -> None:
    with _server(tmp_path, header_timeout_s=0.5, body_timeout_s=0.5) as port:
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        assert _closed_by_server(slow) == b""
        slow.close()
        drip = socket.create_connection(("127.0.0.1", port))
        drip.sendall(b"POST /v1/challenges HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 100\r\n\r\n{")  # fmt: skip
        answer = _closed_by_server(drip)
        drip.close()
        assert answer.startswith(b"HTTP/1.1 408") and b'"code":"timeout"' in answer
        # a prompt request on a kept-alive connection is served as before
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=GUARD) as c:
            assert [c.get("/v1/info").status_code for _ in range(3)] == [200] * 3


def test_connections_beyond_the_per_address_cap_are_closed_at_once(tmp_path: Path) -> None:
    with _server(tmp_path, max_connections_per_address=4, header_timeout_s=60) as port:
        held = []
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /v1/info HTTP/1.1\r\n")
            held.append(s)
        extra = socket.create_connection(("127.0.0.1", port))
        assert _closed_by_server(extra) == b""  # the fifth from this address
        extra.close()
        other = httpx.HTTPTransport(local_address="127.0.0.2")  # another address is served
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", transport=other) as c:
            assert c.get("/v1/info", timeout=GUARD).status_code == 200
        for s in held:
            s.close()


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    settings = make_settings(tmp_path)  # writes the key
    cmd = [sys.executable, "-m", "prover_service", "serve", "--key", str(settings.key_file),
           "--db", f"sqlite:///{tmp_path}/p.db", "--port", str(_port()), *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)


def test_serve_refuses_open_registration_on_a_public_address(tmp_path: Path) -> None:
    out = _serve(tmp_path, "--task", "planted", "--host", "0.0.0.0")
    assert out.returncode == 2 and "--verifier-keys" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_serve_refuses_a_file_task_whose_tau_check_task_rejects(tmp_path: Path) -> None:
    """The wine MLP with tau = 0: identical in process, but its bits change with the
    instruction set (examples/wine_mlp.py), which only check-task's fresh processes see."""
    task = tmp_path / "wine_tau0.py"
    task.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'examples')!r})\n"
        "from wine_mlp import make_task as _make\n\n\n"
        "def make_task():\n"
        "    t = _make()\n"
        "    t.tau = 0.0\n"
        "    return t\n"
    )
    ref = f"{task}:make_task"
    settings = make_settings(tmp_path)
    port = _port()
    cmd = [sys.executable, "-m", "prover_service", "serve", "--key", str(settings.key_file),
           "--db", f"sqlite:///{tmp_path}/p.db", "--port", str(port), "--task", ref]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    try:
        with httpx.Client(timeout=GUARD) as c:
            while proc.poll() is None:  # it refuses (exits) or starts serving: either event
                try:
                    c.get(f"http://127.0.0.1:{port}/v1/info")
                    pytest.skip("this CPU gives identical bits on every path: nothing to refuse")
                except httpx.TransportError:
                    try:
                        proc.wait(timeout=0.5)
                    except subprocess.TimeoutExpired:
                        pass
        err = proc.stderr.read() if proc.stderr else ""
        assert proc.returncode == 2 and "refusing to serve" in err, err[-1000:]
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
