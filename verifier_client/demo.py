"""The main job, end to end on real data: ``python -m verifier_client demo`` (``make demo``).

In a temporary directory: keys for a Prover and a Verifier; two local Provers (SQLite) serving
``digits-logreg``, one honest and one that publishes its attribution halved (``scale:0.5``,
the "pay half" cheat); an attribution computed by each; one interactive verification of each
(accept, then abort with its reason); a third-party audit of both transcripts; then every
process it started is stopped. Prints a short summary (``--json`` for the figures).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from protocol.signing import generate_key, save_private_key
from protocol.tasks import load_task
from verifier_client.audit import audit, fetch_bundle
from verifier_client.client import ProverClient
from verifier_client.report import summary_lines
from verifier_client.session import Options, run_verification
from verifier_client.store import VerifierStore

__all__ = ["run_demo"]

TASK = "digits-logreg"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(root: Path, name: str, adversary: str | None) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    cmd = [
        sys.executable,
        "-m",
        "prover_service",
        "serve",
        "--task",
        TASK,
        "--key",
        str(root / "prover.key"),
        "--db",
        f"sqlite:///{root / name}.db",
        "--port",
        str(port),
    ]
    if adversary:
        cmd += ["--adversary", adversary]
    log = (root / f"{name}.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/v1/info", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"the {name} Prover did not start; see {root / name}.log")


def run_demo(
    console: Console,
    pairs: int = 2000,
    budget: int = 4000,
    epsilon: float = 0.2,
    keep: Path | None = None,
    spot_checks: int = 800,
    seed: bytes | None = None,
) -> dict[str, Any]:
    """Run the story (module doc) and return its figures."""
    tmp = tempfile.TemporaryDirectory(prefix="vda-demo-")
    root = keep or Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    save_private_key(generate_key(), root / "prover.key", overwrite=True)
    vkey = generate_key()
    save_private_key(vkey, root / "verifier.key", overwrite=True)
    store = VerifierStore(f"sqlite:///{root / 'verifier.db'}")
    task = load_task(TASK)
    procs = []
    results: dict[str, Any] = {}
    try:
        for name, adversary in (("honest", None), ("cheating", "scale:0.5")):
            console.print(f"[bold]{name} Prover[/] ({adversary or 'no adversary'}) on {TASK} ...")
            proc, url = _start(root, name, adversary)
            procs.append(proc)
            opts = Options(
                task=TASK,
                epsilon=epsilon,
                pairs_per_level=pairs,
                spot_checks=spot_checks,
                method="ridge",
                budget=budget,
                seed=None if seed is None else seed + name.encode(),
            )
            t0 = time.perf_counter()
            with httpx.Client(base_url=url, timeout=300) as http:
                client = ProverClient(http, key=vkey)
                result = run_verification(client, store, vkey, opts, url)
                result["seconds"] = round(time.perf_counter() - t0, 1)
                t1 = time.perf_counter()
                report = audit(fetch_bundle(client, result["session"], vkey), task)
                result["audit"] = {
                    "ok": report.ok,
                    "recomputed": report.recomputed,
                    "seconds": round(time.perf_counter() - t1, 1),
                }
            results[name] = result
            colour = "green" if result["verdict"] == "accept" else "red"
            lines = summary_lines(result)
            console.print(f"  [bold {colour}]{lines[0]}[/]", highlight=False)
            for line in lines[1:]:
                console.print(f"  {line}", highlight=False)
            console.print(
                f"  audit {'[green]matches[/]' if report.ok else '[red]DOES NOT MATCH[/]'}"
            )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if keep is None:
            tmp.cleanup()
    _summary(console, results)
    return results


def _summary(console: Console, results: dict[str, Any]) -> None:
    table = Table(title=f"verifiable data attribution on {TASK}")
    table.add_column("")
    for name in results:
        table.add_column(name, justify="right")
    rows = [
        ("verdict", lambda r: f"{r['verdict']} ({r['reason']})"),
        ("epsilon (mean err over targets)", lambda r: f"{r['epsilon']:g}"),
        ("certified mean err <=", lambda r: _num(r["certified_epsilon"])),
        ("  of which: estimate", lambda r: _num((r["certificate"] or {}).get("point"))),
        (
            "  statistics + corruption + bias",
            lambda r: _num(_margin(r["certificate"])),
        ),  # fmt: skip
        ("confidence", lambda r: f"1 - {r['delta']:g}"),
        (
            "spot-check mismatches",
            lambda r: (
                f"{int(r['figures']['spot_mismatches'])} / {int(r['figures']['spot_checks'])}"
            ),
        ),  # fmt: skip
        ("Prover trainings", lambda r: f"{r['prover_trainings']:,}"),
        ("Verifier trainings", lambda r: f"{r['local_trainings']:,}"),
        ("ratio", lambda r: f"{r['prover_trainings'] / max(r['local_trainings'], 1):,.0f}x"),
        ("bytes received / sent", lambda r: f"{r['bytes_received']:,} / {r['bytes_sent']:,}"),
        ("audit", lambda r: "matches" if r["audit"]["ok"] else "MISMATCH"),
        ("wall time (s)", lambda r: f"{r['seconds']}"),
    ]
    for label, fn in rows:
        table.add_row(label, *(fn(r) for r in results.values()))
    console.print(table)
    console.print(
        "The certificate bounds err(g), the gap between the attribution's error and the best "
        "linear datamodel's,\nfrom above at the stated confidence: accept iff that bound is "
        "at most epsilon (docs/soundness.md)."
    )
    for name, r in results.items():
        phases = ", ".join(f"{k} {v:.1f}" for k, v in r["times"].items())
        console.print(f"{name}: seconds per phase: {phases}")


def _spots(r: dict[str, Any]) -> str:
    return f"{int(r['figures']['spot_mismatches'])} / {int(r['figures']['spot_checks'])}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _margin(cert: dict[str, Any] | None) -> float | None:
    if not cert or cert.get("certified_epsilon") is None:
        return None
    return float(cert["certified_epsilon"] - cert["point"])


if __name__ == "__main__":  # pragma: no cover
    run_demo(Console())
    os._exit(0)
