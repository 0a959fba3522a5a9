"""The main job, end to end on real data: ``python -m verifier_client demo`` (``make demo``).

In a temporary directory: keys for a Prover and a Verifier; two local Provers (SQLite) serving
``digits-logreg`` (scikit-learn's digits: 1,497 training images, 300 targets), one honest and
one that publishes its attribution halved (``scale:0.5``, the "pay half" cheat). Both are
verified **at the same time**, each in its own thread against its own Prover process, under
the same policy: the Prover computes a ridge attribution (``budget`` trainings); the Verifier
trains a small pilot, the certificate planner sizes the challenge for ε (capped at
``max_prover_trainings``), the Verifier retrains ``spot_fraction`` of it and certifies. Then a
third-party audit of both transcripts, and every process it started is stopped.

Why these sizes (measured here on this task; ``docs/protocol.md`` says what the parts are):
ridge with 4,000 trainings has mean err about 0.076 (Var f is about 0.85; with 3,000 trainings
0.11, with 2,000 0.19), so ε = 0.2 leaves room for the certificate's width. Its largest part
is the corruption the spot-checks could miss, about 20 / k for k spot-checks whatever |E|, so
the Verifier retrains a fifth of the challenge (``spot_fraction``) and the planner then asks
the honest Prover for about 2,070 trainings. A cheat whose err is far above ε is aborted at
any size: the cap (``max_prover_trainings``) only bounds what is spent on a Prover the planner
cannot size. float32 (``TASK``) halves the CPU time of every training; ``--task digits-logreg``
runs the float64 default (tau = 1e-9) with the same figures but the tau part.

The route (``protocol``) is the interactive one by default, so that both transcripts can be
audited; the route plan it prints says what checking alone would have cost. At p = 1/2 on
digits the two tie: the certificate uses ``clt`` on its checked bases only at 200 of them or
more, 800 trainings, the fewest at which checking alone may use it too (``auto`` then checks
alone; see ``docs/verifier-cost.md``).

Seeded (``seed``): the challenge's design derives from it (the secrets never do) and the
Prover's attribution is deterministic, so two runs print the same figures (only the times
differ: an honest Prover and a scaled one pass every spot-check, whichever are drawn).
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from protocol.sampling import seed_from_text
from protocol.signing import generate_key, save_private_key
from protocol.tasks import load_task
from verifier_client.api import verify
from verifier_client.audit import audit, fetch_bundle
from verifier_client.client import ProverClient
from verifier_client.report import MEANING, summary_lines, time_lines

__all__ = ["DEFAULT_SEED", "run_demo"]

# digits-logreg trained in float32: the same data, model and objective as the float64 default,
# 2-3x fewer CPU seconds per training here; it declares tau = 1e-3 (float32 rounding between
# code paths), which every spot-check tolerates and the certificate charges (``tau`` part).
TASK = "digits-logreg:dtype=float32"
DEFAULT_SEED = "1"
PROVERS = (("honest", None), ("cheating", "scale:0.5"))


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(
    root: Path, name: str, adversary: str | None, task: str
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a Prover process serving ``task`` (its log in ``root/NAME.log``); its URL."""
    port = _port()
    cmd = [sys.executable, "-m", "prover_service", "serve", "--task", task,
           "--key", str(root / "prover.key"), "--db", f"sqlite:///{root / name}.db",
           "--port", str(port)]  # fmt: skip
    if adversary:
        cmd += ["--adversary", adversary]
    with (root / f"{name}.log").open("wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen[bytes], url: str, root: Path, name: str) -> None:
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/v1/ready", timeout=2).status_code == 200:  # tasks checked
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the {name} Prover did not start; see {root / name}.log")


def _plain(console: Console, text: str) -> None:
    """One line as it is: no markup, no highlighting, never wrapped (logs keep it whole)."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)


class _Lines:
    """Progress of one Prover's verification as plain lines: each phase's start and end."""

    def __init__(self, console: Console, name: str, started: float) -> None:
        self.console, self.name, self.started = console, name, started
        self.seen: dict[str, str] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        finished, state = total > 0 and done >= total, self.seen.get(phase)
        if finished and state != "done":
            self.seen[phase] = "done"
            self.say(f"{phase} done")
        elif not finished and state is None:
            self.seen[phase] = "started"
            self.say(f"{phase}: {total:,} trainings ..." if total > 1 else f"{phase} ...")

    def say(self, text: str) -> None:
        at = time.perf_counter() - self.started
        _plain(self.console, f"[{at:5.1f} s] {self.name}: {text}")


def run_demo(
    console: Console,
    pairs: int | None = None,
    budget: int = 4000,
    epsilon: float = 0.2,
    keep: Path | None = None,
    spot_checks: int | None = None,
    seed: bytes | None = None,
    spot_fraction: float = 0.2,
    max_prover_trainings: int = 2400,
    task_ref: str = TASK,
    seed_label: str | None = None,
    protocol: str = "interactive",
) -> dict[str, Any]:
    """Run the story (module doc) and return its figures per Prover, plus ``"run"``: the wall
    and CPU seconds of the whole demo."""
    if seed is None:
        seed, seed_label = seed_from_text(DEFAULT_SEED), DEFAULT_SEED
    started = time.perf_counter()
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if keep is None:
        tmp = tempfile.TemporaryDirectory(prefix="vda-demo-")
        root = Path(tmp.name)
    else:
        root = keep
    root.mkdir(parents=True, exist_ok=True)
    save_private_key(generate_key(), root / "prover.key", overwrite=True)
    vkey = generate_key()
    save_private_key(vkey, root / "verifier.key", overwrite=True)
    task = load_task(task_ref)
    console.print(
        f"Two Provers on {task_ref} ({task.n_train:,} training images, {task.n_targets} targets, "
        f"tau = {task.tau:g}), "
        f"verified at once: epsilon = {epsilon:g} (mean err over the targets), confidence 95 %, "
        f"seed {seed_label if seed_label is not None else seed.hex()[:12]}",
        highlight=False, soft_wrap=True,
    )  # fmt: skip
    procs = {name: _spawn(root, name, adversary, task_ref) for name, adversary in PROVERS}
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def one(name: str) -> None:
        proc, url = procs[name]
        lines = _Lines(console, name, started)
        try:
            _wait_ready(proc, url, root, name)
            lines.say(f"Prover up at {url}")
            result = verify(
                url, task_ref, epsilon, key=vkey, db=f"sqlite:///{root / 'verifier'}-{name}.db",
                seed=seed + name.encode(), progress=lines, notify=lines.say,
                timeout_s=300, method="ridge", budget=budget, pairs_per_level=pairs,
                spot_checks=spot_checks, spot_fraction=spot_fraction,
                max_prover_trainings=max_prover_trainings, protocol=protocol,
            )  # fmt: skip
            t0 = time.perf_counter()
            if result["session"] != result["record"]:  # checked alone: no Prover transcript
                with httpx.Client(base_url=url, timeout=300) as http:
                    bundle = fetch_bundle(ProverClient(http, key=vkey), result["session"], vkey)
                report = audit(bundle, task)
                result["audit"] = {"ok": report.ok, "recomputed": report.recomputed,
                                   "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
                said = f"audit {'matches' if report.ok else 'DOES NOT MATCH'}"
            else:
                result["audit"] = None
                said = "checked alone: no transcript to audit"
            result["seconds"] = round(time.perf_counter() - started, 1)
            lines.say(f"{result['verdict']}; {said}")
            results[name] = result
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(name,), daemon=True) for name, _ in PROVERS]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if tmp is not None:
            tmp.cleanup()
    if errors:
        raise errors[0]
    results = {name: results[name] for name, _ in PROVERS}
    results["run"] = _usage(time.perf_counter() - started)
    _summary(console, results, epsilon, task_ref)
    return results


def _usage(wall: float) -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the Provers, waited for above
    return {"wall_s": round(wall, 1),
            "verifier_cpu_s": round(own.ru_utime + own.ru_stime, 1),
            "provers_cpu_s": round(kids.ru_utime + kids.ru_stime, 1)}  # fmt: skip


def _summary(console: Console, results: dict[str, Any], epsilon: float, task: str) -> None:
    provers = {k: v for k, v in results.items() if k != "run"}
    for name, r in provers.items():
        colour = "green" if r["verdict"] == "accept" else "red"
        lines = summary_lines(r, explain=False)
        console.print()
        console.print(f"[bold]{name} Prover[/]: [bold {colour}]{escape(lines[0])}[/]",
                      highlight=False, soft_wrap=True)  # fmt: skip
        sizes = r.get("sizes") or {}
        if sizes:
            console.print(
                f"  sizes: {sizes['pairs_per_level']:,} bases ({r['prover_trainings']:,} Prover "
                f"trainings), {sizes['spot_checks']:,} spot-checks (source: {sizes['source']})",
                highlight=False, markup=False, soft_wrap=True,
            )  # fmt: skip
        for line in lines[1:]:
            if not line.startswith("  time:"):
                _plain(console, line)
        times = dict(r["times"])
        for line in time_lines(times):
            _plain(console, f"  time, {line}")
        if r["audit"] is not None:
            _plain(console, f"  time, audit {r['audit']['seconds']:.1f} s")
    table = Table(title=f"verifiable data attribution on {task}, epsilon = {epsilon:g}")
    table.add_column("")
    for name in provers:
        table.add_column(f"{name} Prover", justify="right")
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("verdict", lambda r: f"{r['verdict']} ({r['reason']})"),
        ("certified mean err <=", lambda r: _num(r["certified_epsilon"])),
        ("  of which the estimate", lambda r: _num((r["certificate"] or {}).get("point"))),
        ("spot-check mismatches", _spots),
        ("Prover trainings (attribution + challenge)", _prover_trainings),
        ("route", _route),
        ("Verifier trainings (pilot + route)", lambda r: f"{r['local_trainings']:,}"),
        ("  checking alone would have trained", _alone),
        ("bytes received / sent", lambda r: f"{r['bytes_received']:,} / {r['bytes_sent']:,}"),
        ("audit", _audit),
    ]
    for label, fn in rows:
        table.add_row(label, *(fn(r) for r in provers.values()))
    console.print()
    console.print(table)
    for line in MEANING:
        _plain(console, line)
    run = results["run"]
    console.print(
        f"wall time {run['wall_s']:.0f} s (both at once); CPU time: Provers "
        f"{run['provers_cpu_s']:.0f} s, Verifier {run['verifier_cpu_s']:.0f} s",
        highlight=False, soft_wrap=True,
    )  # fmt: skip


def _prover_trainings(r: dict[str, Any]) -> str:
    attribution = int((r.get("attribution") or {}).get("trainings", 0))
    if not attribution:
        return f"{r['prover_trainings']:,}"
    return f"{attribution:,} + {r['prover_trainings']:,}"


def _route(r: dict[str, Any]) -> str:
    """The route run, and whether it was asked for (``--protocol``) or the cheapest."""
    protocol: str = r["protocol"]
    name = {"noninteractive": "checking alone"}.get(protocol, protocol)
    routes = r.get("routes") or {}
    if not routes:
        return name
    return f"{name} ({'as asked' if routes.get('forced') else 'the cheapest'})"


def _alone(r: dict[str, Any]) -> str:
    """The pilot plus checking alone's own trainings, from the plan made before the Prover
    trained (``routes`` in the result), or what this run trained when it checked alone."""
    if r["protocol"] == "noninteractive":
        return f"{r['local_trainings']:,} (this run)"
    plans = {c["route"]: c for c in (r.get("routes") or {}).get("routes", [])}
    alone, pilot = (
        plans.get("noninteractive"),
        int((r.get("sizes") or {}).get("pilot_trainings", 0)),
    )
    if alone is None:
        return "-"
    if not alone["reaches_epsilon"]:
        return "no size reaches epsilon"
    return f"{pilot + int(alone['verifier_training_equivalents']):,}"


def _audit(r: dict[str, Any]) -> str:
    if r["audit"] is None:
        return "- (no transcript)"
    return "matches" if r["audit"]["ok"] else "MISMATCH"


def _spots(r: dict[str, Any]) -> str:
    figures = r["figures"]
    if "spot_checks" not in figures:
        return "-"
    return f"{int(figures['spot_mismatches'])} / {int(figures['spot_checks'])}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":  # pragma: no cover
    run_demo(Console())
    os._exit(0)
