"""Bounded loopback attacks on the shipped Prover (issue 21, items 4-9). Prints JSON.

    python benchmarks/attack_load.py [--out docs/attack-load.json] [--only big_challenge,...]

Each attack runs against a fresh ``vda-prover serve`` (``python -m prover_service serve``, the
server as shipped, a temporary SQLite database, open registration on loopback) and lasts a few
seconds. Attackers connect from 127.0.0.2 and up; a probe on 127.0.0.1 sends a small GET
(``/v1/info``) every 0.2 s throughout, with a 10 s time-out (a time-out counts as 10 s). For
each attack the JSON gives the probe's p50 / p99 / max latency and time-outs, the Prover's peak
RSS (``VmHWM`` of /proc/PID/status, reset once an attack's set-up is done) against its RSS
before the attack, and the status codes
the attackers got, with what the attack is about:

=================  ============================================================================
``big_challenge``  4: 48 unsigned 8 MB JSON bodies on ``/v1/challenges`` at once
``slowloris``      5: 1,100 sockets from one address sending partial headers (a header line
                   every 2 s), and one body dripped at 1 byte/2 s,
                   against a server whose open-file limit is 1,024: how many are still open
                   after 35 s, and whether new connections are served meanwhile
``sybil``          6: 33 fresh keys from one address, 2 challenges of |E| = 249,996 each; then a
                   12-subset challenge and an attribution from a key on another address
``upload_cap``     7: 16 unsigned 64 MiB uploads to ``/v1/attributions/import`` naming a key
``disk_quota``     8: a 3 MB disk quota; 16 challenges of ~1.58 MB (estimated) each, from 8
                   keys on 8 addresses: how many are admitted, and the store's size at the end
``audit_get``      9: 8 clients reading ``/audit/sessions/ID`` (public transcripts) of a decided
                   digits-logreg session with 400 spot-checks, for 20 s
=================  ============================================================================

Goals (issue 21): RSS growth under 256 MB and a small-GET p99 under 1 s for every attack.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from protocol.messages import Challenge, Verdict, commit_spot_checks
from protocol.signing import (
    generate_key,
    public_key_hex,
    save_private_key,
    sign_message,
    sign_request,
)

ROOT = Path(__file__).resolve().parents[1]
PROBE_TIMEOUT = 10.0
SALT = bytes(range(32))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            out[name] = int(rest.split()[0]) * 1024
    return out


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


class Prover:
    """A ``serve`` subprocess on a temporary folder."""

    def __init__(self, root: Path, task: str, env: dict[str, str], nofile: int | None) -> None:
        self.root, self.port = root, _port()
        save_private_key(generate_key(), root / "prover.pem")
        cmd = [sys.executable, "-m", "prover_service", "serve", "--task", task, "--key",
               str(root / "prover.pem"), "--db", f"sqlite:///{root}/prover.db", "--port",
               str(self.port), "--public-transcripts"]  # fmt: skip

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.log = open(root / "serve.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=limit)  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        self.baseline: int | None = None
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((root / "serve.log").read_text()[-2000:])
            try:
                # answering (its first /v1/info imports torch: ~230 MB and seconds, not an
                # attack's) and ready (the start-up task check passed: slow under load)
                if all(httpx.get(self.url + path, timeout=30).status_code == 200
                       for path in ("/v1/info", "/v1/ready")):  # fmt: skip
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the Prover did not start")

    def mark(self) -> None:
        """The attack starts now: its set-up (publishing, training) is not counted; the peak
        RSS is reset (``/proc/PID/clear_refs``) and the RSS now is the baseline."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        self.baseline = _status(self.proc.pid)["VmRSS"]

    def client(self, address: str = "127.0.0.1", timeout: float = 60) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=address)
        return httpx.Client(base_url=self.url, transport=transport, timeout=timeout)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def _probe_loop(url: str, running: Any, stop: Any, out: Any) -> None:
    """The probe's own process: a GET of /v1/info every 0.2 s until ``stop``; each result as
    (seconds, status or error name) on ``out``. ``running`` is set once it is up."""
    with httpx.Client(base_url=url, timeout=PROBE_TIMEOUT,
                      transport=httpx.HTTPTransport(local_address="127.0.0.1")) as c:  # fmt: skip
        running.set()
        while not stop.is_set():
            t = time.perf_counter()
            try:
                r = c.get("/v1/info")
                out.put((time.perf_counter() - t, str(r.status_code)))
            except httpx.TimeoutException:
                out.put((PROBE_TIMEOUT, "timeout"))
            except httpx.TransportError as exc:
                out.put((time.perf_counter() - t, type(exc).__name__))
            stop.wait(0.2)
    out.put(None)


class Probe:
    """A small GET every 0.2 s from 127.0.0.1, from a process of its own (a probe thread in the
    attacker's process would time the attacker's own GIL, not the Prover): latencies, a
    time-out counting as 10 s."""

    def __init__(self, prover: Prover) -> None:
        self.prover, self.times, self.timeouts, self.errors = prover, [], 0, Counter()
        ctx = multiprocessing.get_context("spawn")
        self._running, self._stop, self._out = ctx.Event(), ctx.Event(), ctx.Queue()
        args = (prover.url, self._running, self._stop, self._out)
        self._proc = ctx.Process(target=_probe_loop, args=args, daemon=True)

    def __enter__(self) -> Probe:
        self._proc.start()
        if not self._running.wait(120):  # its imports, on a loaded machine
            raise RuntimeError("the probe process did not start")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        while (item := self._out.get(timeout=2 * PROBE_TIMEOUT + 30)) is not None:
            seconds, status = item
            self.times.append(seconds)
            if status == "timeout":
                self.timeouts += 1
            else:
                self.errors[status] += 1
        self._proc.join()

    def figures(self) -> dict[str, Any]:
        t = np.array(self.times or [np.nan])
        return {"probe_gets": len(self.times), "probe_p50_s": round(float(np.median(t)), 4),
                "probe_p99_s": round(float(np.quantile(t, 0.99)), 4),
                "probe_max_s": round(float(t.max()), 4), "probe_timeouts": self.timeouts,
                "probe_statuses": dict(self.errors)}  # fmt: skip


def _signed_post(c: httpx.Client, key: Any, path: str, doc: dict[str, Any]) -> httpx.Response:
    body = json.dumps(doc).encode()
    headers = sign_request(key, "POST", path, body) | {"Content-Type": "application/json"}
    return c.post(path, content=body, headers=headers)


def _signed_get(c: httpx.Client, key: Any, path: str) -> httpx.Response:
    return c.get(path, headers=sign_request(key, "GET", path, b""))


def _publish(p: Prover, key: Any, address: str = "127.0.0.1") -> tuple[str, str, float]:
    """An attribution for the served task: (task hash, content hash, bound)."""
    with p.client(address) as c:
        task = c.get("/v1/info").json()["tasks"][0]
        doc = {"task_hash": task["task_hash"], "method": "influence", "budget": 32}
        job = _signed_post(c, key, "/v1/attributions", doc)
        job.raise_for_status()
        jid = job.json()["id"]
        while (doc := _signed_get(c, key, f"/v1/jobs/{jid}").json())["status"] != "done":
            if doc["status"] in ("failed", "cancelled"):
                raise RuntimeError(doc)
            time.sleep(0.2)
    return task["task_hash"], doc["result"], float(task["bound"])


def _challenge(key: Any, task_hash: str, content: str, bound: float, pairs: int,
               spot: list[int] | None = None) -> dict[str, Any]:  # fmt: skip
    fields = dict(task_hash=task_hash, attribution_hash=content, p=0.5, rho0=0.2,
                  pairs_per_level=pairs, challenge_seed=os.urandom(32).hex(),
                  spot_check_commitment=commit_spot_checks(spot or [1, 2, 3], SALT), epsilon=1.0,
                  delta=0.05, bound=bound, tau=0.0, estimator="gap", nonce=os.urandom(16).hex(),
                  timestamp=int(time.time()), verifier_key=public_key_hex(key))  # fmt: skip
    return sign_message(key, Challenge.model_validate(fields)).model_dump()


def _parallel(n: int, fn: Callable[[int], str]) -> dict[str, int]:
    with ThreadPoolExecutor(n) as pool:
        return dict(Counter(pool.map(fn, range(n))))


def _call(fn: Callable[[], httpx.Response]) -> str:
    try:
        return str(fn().status_code)
    except httpx.TimeoutException:
        return "timeout"
    except httpx.TransportError as exc:
        return type(exc).__name__


# -- the attacks ----------------------------------------------------------------------------
def big_challenge(p: Prover) -> dict[str, Any]:
    head = b'{"type":"challenge.v1","signer":"' + b"0" * 64 + b'","signature":"' + b"0" * 128
    head += b'","payload":{"junk":['
    n = (8 * 2**20 - len(head) - 8) // 19
    body = head + b",".join([b"0.123456789012345"] * n) + b"]}}"
    with p.client("127.0.0.2", timeout=120) as c:

        def post(_: int) -> str:
            return _call(lambda: c.post("/v1/challenges", content=body,
                                        headers={"Content-Type": "application/json"}))  # fmt: skip

        return {"attack_statuses": _parallel(48, post), "body_bytes": len(body)}


def slowloris(p: Prover) -> dict[str, Any]:
    socks: list[socket.socket] = []
    refused = 0
    for _ in range(1100):
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", p.port))
            s.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        except OSError:
            refused += 1
            s.close()
    drip = socket.create_connection(("127.0.0.1", p.port))
    drip.sendall(b"POST /v1/challenges HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{")  # fmt: skip
    drip_open, server_fds = True, _fds(p.proc.pid)
    t0 = time.time()
    while time.time() - t0 < 35:
        for s in socks:
            try:
                s.send(b"X-a: b\r\n")
            except OSError:
                pass
        try:
            drip.send(b" ")
        except OSError:
            drip_open = False
        server_fds = max(server_fds, _fds(p.proc.pid))
        time.sleep(2)
    still = sum(_held(s) for s in socks)
    drip_open = _held(drip) and drip_open
    return {"sockets": len(socks), "connect_refused": refused, "still_open_after_35s": still,
            "drip_body_open_after_35s": drip_open, "server_fds_max": server_fds}  # fmt: skip


def _held(s: socket.socket) -> bool:
    """Whether the server still holds the socket open without answering (then closed here)."""
    s.setblocking(False)
    try:
        s.recv(4096)  # an answer (408) or b"" (closed)
        held = False
    except BlockingIOError:
        held = True
    except OSError:
        held = False
    s.close()
    return held


def sybil(p: Prover) -> dict[str, Any]:
    honest = generate_key()
    task_hash, content, bound = _publish(p, honest)
    p.mark()
    keys = [generate_key() for _ in range(33)]
    with p.client("127.0.0.2") as c:

        def post(i: int) -> str:
            doc = _challenge(keys[i // 2], task_hash, content, bound, pairs=41_666)
            return _call(lambda: c.post("/v1/challenges", json=doc))

        statuses = _parallel(66, post)
    with p.client("127.0.0.1") as c:
        legit = _call(
            lambda: c.post(
                "/v1/challenges", json=_challenge(honest, task_hash, content, bound, pairs=2)
            )
        )
        attribution = _call(lambda: _signed_post(c, honest, "/v1/attributions", {
            "task_hash": task_hash, "method": "influence", "budget": 16}))  # fmt: skip
    return {"attack_statuses": statuses, "legit_challenge": legit,
            "legit_attribution": attribution}  # fmt: skip


def upload_cap(p: Prover) -> dict[str, Any]:
    body = b"\x93NUMPY" + os.urandom(64 * 2**20 - 6)
    headers = {"Content-Type": "application/octet-stream", "X-VDA-Key": "ab" * 32,
               "X-VDA-Timestamp": str(int(time.time())), "X-VDA-Nonce": "cd" * 16,
               "X-VDA-Signature": "ef" * 64}  # fmt: skip
    target = "/v1/attributions/import?task_hash=" + "0" * 64 + "&budget=64"
    with p.client("127.0.0.2", timeout=120) as c:

        def post(_: int) -> str:
            return _call(lambda: c.post(target, content=body, headers=headers))

        return {"attack_statuses": _parallel(16, post)}


def disk_quota(p: Prover) -> dict[str, Any]:
    owner = generate_key()
    task_hash, content, bound = _publish(p, owner)
    keys = [generate_key() for _ in range(8)]
    before = _store_bytes(p.root)
    p.mark()

    def post(i: int) -> str:
        with p.client(f"127.0.0.{10 + i // 2}") as c:
            doc = _challenge(keys[i // 2], task_hash, content, bound, pairs=1_496)
            return _call(lambda: c.post("/v1/challenges", json=doc))

    statuses = _parallel(16, post)
    deadline = time.time() + 60
    with p.client() as c:
        while time.time() < deadline:
            rows = c.get("/v1/sessions").json()
            if all(r["status"] != "training" for r in rows):
                break
            time.sleep(0.5)
    return {"attack_statuses": statuses, "quota_bytes": 3_000_000,
            "store_bytes_before": before, "store_bytes_after": _store_bytes(p.root)}  # fmt: skip


def _store_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in (root / "arrays").glob("??/*") if f.is_file())


def audit_get(p: Prover) -> dict[str, Any]:
    vkey = generate_key()
    task_hash, content, bound = _publish(p, vkey)
    spot = list(range(0, 800, 2))  # 400 spot-checks of |E| = 840
    with p.client() as c:
        sid = c.post("/v1/challenges", json=_challenge(vkey, task_hash, content, bound, 140,
                                                       spot)).json()["session_id"]  # fmt: skip
        while (doc := c.get(f"/v1/sessions/{sid}").json())["status"] != "ready":
            time.sleep(0.2)
        response = c.get(f"/v1/sessions/{sid}/response").json()
        from protocol.signing import SignedMessage

        verdict = Verdict(session_id=sid, challenge_digest=doc["challenge_digest"],
                          response_digest=SignedMessage.model_validate(response).digest,
                          verdict="accept", reason="ok",
                          figures={"spot_mismatches": 0.0, "certified_epsilon": 0.0},
                          spot_check_indices=tuple(spot), salt=SALT.hex(),
                          timestamp=int(time.time()))  # fmt: skip
        r = c.post(f"/v1/sessions/{sid}/verdict", json=sign_message(vkey, verdict).model_dump())
        r.raise_for_status()
    p.mark()
    statuses: Counter[str] = Counter()
    stop = time.time() + 20

    def reader(i: int) -> str:
        with p.client(f"127.0.0.{20 + i}", timeout=60) as c:
            while time.time() < stop:
                statuses[_call(lambda: c.get(f"/audit/sessions/{sid}"))] += 1
        return "done"

    _parallel(8, reader)
    return {"attack_statuses": dict(statuses)}


ATTACKS: dict[str, tuple[Callable[[Prover], dict[str, Any]], str, dict[str, str], int | None]] = {
    "big_challenge": (big_challenge, "planted", {}, None),
    "slowloris": (slowloris, "planted", {}, 1024),
    "sybil": (sybil, "planted", {}, None),
    "upload_cap": (upload_cap, "planted", {}, None),
    "disk_quota": (disk_quota, "planted", {"VDA_PROVER_MAX_DISK_BYTES": "3000000"}, None),
    "audit_get": (audit_get, "digits-logreg", {}, None),
}


@contextmanager
def _prover(task: str, env: dict[str, str], nofile: int | None) -> Iterator[Prover]:
    with tempfile.TemporaryDirectory() as tmp:
        p = Prover(Path(tmp), task, env, nofile)
        try:
            yield p
        finally:
            p.close()


def run(name: str) -> dict[str, Any]:
    fn, task, env, nofile = ATTACKS[name]
    with _prover(task, env, nofile) as p:
        p.mark()  # the peak from here on: the start-up task check's own peak is not the attack's
        before = _status(p.proc.pid)["VmRSS"]
        started = time.perf_counter()
        with Probe(p) as probe:
            time.sleep(1.0)
            out = fn(p)
            time.sleep(1.0)
        peak = _status(p.proc.pid)["VmHWM"] if p.proc.poll() is None else -1
        alive = p.proc.poll() is None
        before = p.baseline or before
    return {"attack": name, "seconds": round(time.perf_counter() - started, 1),
            "rss_before_mb": round(before / 2**20, 1), "rss_peak_mb": round(peak / 2**20, 1),
            "rss_growth_mb": round((peak - before) / 2**20, 1), "prover_alive": alive,
            **probe.figures(), **out}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default=",".join(ATTACKS))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "attack-load.json")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    results = [run(name) for name in args.only.split(",")]
    doc = {"load_average": os.getloadavg()[0], "goals": {"rss_growth_mb": 256, "probe_p99_s": 1.0},
           "attacks": results}  # fmt: skip
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
