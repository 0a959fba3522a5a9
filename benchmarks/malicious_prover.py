"""A malicious Prover on loopback against the real Verifier client (issue 21, items 11-12).

Each attack is one reply a Prover controls:

* ``gzip_bomb_arrays``: ``GET /v1/arrays/{sha}`` answers a gzip body of ``--bomb-mib`` MiB of
  zeros (about 1 MiB on the wire per GiB);
* ``gzip_bomb_info``: the same on ``GET /v1/info`` (JSON content type);
* ``endless_info``: ``GET /v1/info`` answers a chunked JSON body that never ends (the server
  stops at ``--endless-mib`` MiB or when the client hangs up);
* ``drip_headers``: ``GET /v1/sessions/{id}`` sends its status line and headers one byte every
  ``--drip-s`` seconds (each byte resets a per-read time-out);
* ``drip_body``: the headers at once, then the body one byte every ``--drip-s`` seconds.

Every attack runs in a fresh child process (the Verifier) that builds its HTTP client the way
``verifier_client.api.verify`` does with ``--timeout`` seconds, and makes the one call;
the parent reads the child's peak RSS from ``wait4`` (so a killed child is measured too) and
kills it after ``--limit`` seconds. ``--code LABEL=PATH`` (repeatable) runs the same attacks
against the Verifier code at PATH (e.g. a worktree of main) to give before and after::

    git worktree add /tmp/vda-main main
    python benchmarks/malicious_prover.py --code before=/tmp/vda-main --code after=. \\
        --out docs/malicious-prover.json

Prints JSON: per code and attack, ``outcome`` (the exception the client raised, or
``killed``), ``seconds`` until the client gave up, ``rss_start_mib`` and ``rss_peak_mib``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socketserver
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

ATTACKS = ("gzip_bomb_arrays", "gzip_bomb_info", "endless_info", "drip_headers", "drip_body")
SHA = "ab" * 32


def gzip_zeros(mib: int) -> bytes:
    """A gzip stream of ``mib`` MiB of zeros (about 1 KiB per MiB)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(2**20)
    parts = [comp.compress(block) for _ in range(mib)]
    return b"".join(parts) + comp.flush()


class Attack(socketserver.StreamRequestHandler):
    """One connection: read the request head, answer with the server's attack."""

    def handle(self) -> None:
        server: Server = self.server  # type: ignore[assignment]
        try:
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            getattr(self, server.attack)(server)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the Verifier hung up: what an attack waits for

    def _head(self, ctype: str, extra: str = "") -> bytes:
        return f"HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\n{extra}\r\n".encode()

    def gzip_bomb_arrays(self, server: Server) -> None:
        body = server.bomb
        extra = f"content-encoding: gzip\r\ncontent-length: {len(body)}\r\n"
        self.wfile.write(self._head("application/octet-stream", extra))
        self.wfile.write(body)

    def gzip_bomb_info(self, server: Server) -> None:
        body = server.bomb
        extra = f"content-encoding: gzip\r\ncontent-length: {len(body)}\r\n"
        self.wfile.write(self._head("application/json", extra))
        self.wfile.write(body)

    def endless_info(self, server: Server) -> None:
        self.wfile.write(self._head("application/json", "transfer-encoding: chunked\r\n"))
        chunk = b"0," * 2**15
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        self.wfile.write(b"1\r\n[\r\n")
        for _ in range(server.endless_mib * 2**20 // len(chunk)):
            self.wfile.write(frame)
        self.wfile.write(b"0\r\n\r\n")

    def drip_headers(self, server: Server) -> None:
        head = self._head("application/json", "content-length: 2\r\n") + b"{}"
        for i in range(len(head)):
            self.wfile.write(head[i : i + 1])
            self.wfile.flush()
            if server.stop.wait(server.drip_s):
                return

    def drip_body(self, server: Server) -> None:
        self.wfile.write(self._head("application/json", "content-length: 4096\r\n"))
        for _ in range(4096):
            self.wfile.write(b" ")
            self.wfile.flush()
            if server.stop.wait(server.drip_s):
                return


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, attack: str, bomb: bytes, endless_mib: int, drip_s: float) -> None:
        super().__init__(("127.0.0.1", 0), Attack)
        self.attack, self.bomb, self.endless_mib, self.drip_s = attack, bomb, endless_mib, drip_s
        self.stop = threading.Event()


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def child(attack: str, url: str, timeout_s: float) -> None:
    """The Verifier: one call of the real client, as ``api.verify`` builds it; JSON on stdout."""
    import httpx

    from protocol.messages import ArrayRef
    from verifier_client.client import ProverClient

    try:  # the client as api.verify builds it (this branch's factory, or main's plain Client)
        from verifier_client.limits import prover_http

        http = prover_http(url, timeout_s)
    except ImportError:
        http = httpx.Client(base_url=url, timeout=timeout_s)
    client = ProverClient(http)
    calls = {
        "gzip_bomb_arrays": lambda: client.array(
            ArrayRef(name="values", sha256=SHA, dtype="<f8", shape=(64, 2))
        ),
        "gzip_bomb_info": client.info,
        "endless_info": client.info,
        "drip_headers": lambda: client.session("0" * 32),
        "drip_body": lambda: client.session("0" * 32),
    }
    start_kib = _rss_kib()
    t0 = time.monotonic()
    try:
        calls[attack]()
        outcome = "returned"
    except BaseException as exc:  # noqa: BLE001 - what the client raised is the figure
        outcome = f"{type(exc).__name__}: {str(exc)[:160]}"
    print(json.dumps({"outcome": outcome, "seconds": round(time.monotonic() - t0, 2),
                      "rss_start_mib": round(start_kib / 1024, 1)}), flush=True)  # fmt: skip


def run_attack(attack: str, code: Path, args: argparse.Namespace, bomb: bytes) -> dict[str, Any]:
    server = Server(attack, bomb, args.endless_mib, args.drip_s)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    env = os.environ | {"PYTHONPATH": str(code.resolve()), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", attack, "--url", url,
           "--timeout", str(args.timeout)]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    killer = threading.Timer(args.limit, lambda: proc.send_signal(signal.SIGKILL))
    killer.start()
    out = proc.stdout.read() if proc.stdout else b""  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    killer.cancel()
    elapsed = time.monotonic() - t0
    server.stop.set()
    server.shutdown()
    server.server_close()
    row: dict[str, Any] = {"rss_peak_mib": round(usage.ru_maxrss / 1024, 1)}
    try:
        row |= json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        row |= {"outcome": f"killed after {args.limit:g} s (still waiting)",
                "seconds": round(elapsed, 2)}  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--code", action="append", default=[],
                        help="LABEL=PATH of the Verifier code (default: after=.)")  # fmt: skip
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--bomb-mib", type=int, default=1024)
    parser.add_argument("--endless-mib", type=int, default=3072)
    parser.add_argument("--drip-s", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="the client's time-out (s)")
    parser.add_argument("--limit", type=float, default=60.0, help="kill a child after (s)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child")
    parser.add_argument("--url")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.timeout)
        return
    codes = [c.split("=", 1) for c in (args.code or ["after=."])]
    bomb = gzip_zeros(args.bomb_mib)
    result: dict[str, Any] = {
        "settings": {
            "bomb_mib": args.bomb_mib,
            "bomb_wire_kib": round(len(bomb) / 1024, 1),
            "endless_mib": args.endless_mib,
            "drip_s": args.drip_s,
            "client_timeout_s": args.timeout,
            "kill_after_s": args.limit,
            "load_average": os.getloadavg()[0],
        },  # fmt: skip
    }
    for label, path in codes:
        result[label] = {a: run_attack(a, Path(path), args, bomb) for a in args.attacks.split(",")}
    result["parent_rss_peak_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
