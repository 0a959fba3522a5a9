"""Does a task keep its declared tau? Train the same rows every way bits could change, compare.

:func:`check_task` trains R rows (masks ~ B_1/2 and seeds from a fixed stream) as one batch,
then again

* **in process**: each row alone; the batch reversed; shuffled; repeated; each row at other
  positions of a larger batch (with filler rows around it); in chunks of 1 and 3 rows;
* **in fresh processes** (:func:`_run_worker`, ``python -m prover_service.task_check``): at 1
  and 2 threads, and on the other instruction-set path the CPU can take: torch's baseline
  kernels (``ATEN_CPU_CAPABILITY=default``), MKL's and oneDNN's SSE4 paths
  (``MKL_ENABLE_INSTRUCTIONS=SSE4_2``, ``ONEDNN_MAX_CPU_ISA=SSE41``), OpenBLAS's SSE3 kernels
  for numpy (``OPENBLAS_CORETYPE=Prescott``), numba compiling for a generic x86-64
  (``NUMBA_CPU_NAME=generic``: digits-mlp's loop, :mod:`protocol.tasks.mlp_kernels`) and MKL's
  conditional-numerical-reproducibility mode (``MKL_CBWR=COMPATIBLE``); on an AVX-512 machine
  also the AVX2 path (its native path runs in the other variants).

Every variant's values and probe outputs are compared with the reference. The report gives the
largest difference, what to declare (tau = 0 when every variant is bit-identical; otherwise the
largest difference times ``SAFETY``, rounded up to one significant digit) and whether the
declared tau holds. ``serve`` runs the in-process part on a few rows at start-up
(:func:`quick_check`) in a background thread (:class:`StartupChecks`), so that it answers
``/v1/info`` at once; until a task's check has passed, work on it is refused with 503
(``task_not_ready`` and ``Retry-After`` while it runs, ``task_refused`` with the advice if the
task breaks its own declaration).
``serve`` also runs the whole check, fresh processes included, on a task loaded from a
file (:func:`check_served_tasks`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protocol.checkequiv import fingerprint
from protocol.errors import TaskError
from protocol.evaluation import run_task
from protocol.sampling import sample_masks, training_seeds
from protocol.tasks import TaskBase, load_task
from protocol.tasks.base import cpu_instruction_set
from prover_service.errors import TaskUnavailable

__all__ = [
    "SAFETY",
    "StartupChecks",
    "TaskCheck",
    "check_served_tasks",
    "check_task",
    "quick_check",
    "recommend_tau",
]

log = logging.getLogger("prover_service")

SAFETY = 10.0  # declared tau = SAFETY x the largest difference measured, rounded up
_SEED = b"VDA/v1/check-task".ljust(32, b"\0")
# The other code path of the CPU (module doc): baseline kernels of torch, MKL and oneDNN.
BASELINE_ISA = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "MKL_CBWR": "COMPATIBLE",
    "OPENBLAS_CORETYPE": "Prescott",
    "NUMBA_CPU_NAME": "generic",
}
AVX2_ISA = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
    "NUMBA_CPU_NAME": "haswell",
}
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class TaskCheck:
    """What :func:`check_task` found: per variant, the largest |difference| from the reference
    (0 also when bit-identical; ``identical`` says which were) and the verdict on the task."""

    task: str
    rows: int
    declared_tau: float
    differences: dict[str, float] = field(default_factory=dict)
    identical: dict[str, bool] = field(default_factory=dict)
    device_classes: dict[str, str] = field(default_factory=dict)

    @property
    def largest(self) -> float:
        """The largest difference over every variant."""
        return max(self.differences.values(), default=0.0)

    @property
    def bitwise(self) -> bool:
        """True iff every variant gave the reference's exact bytes."""
        return all(self.identical.values())

    @property
    def recommended_tau(self) -> float:
        """0 if bitwise reproducible, else the largest difference with a safety factor."""
        return 0.0 if self.bitwise else recommend_tau(self.largest)

    @property
    def ok(self) -> bool:
        """Does the declared tau cover what was measured?"""
        if self.declared_tau == 0:
            return self.bitwise
        return self.largest <= self.declared_tau

    def advice(self) -> str:
        """One paragraph: what was measured and what to declare."""
        if self.bitwise:
            head = f"bit-identical in all {len(self.identical)} variants"
            if self.declared_tau == 0:
                return f"{head}: tau = 0 (bitwise) holds."
            return f"{head}: the declared tau = {self.declared_tau:g} holds; tau = 0 would too."
        worst = max(self.differences, key=lambda k: self.differences[k])
        head = f"largest difference {self.largest:.3g} ({worst})"
        if self.ok:
            return f"{head}: the declared tau = {self.declared_tau:g} holds."
        return (
            f"{head}: the declared tau = {self.declared_tau:g} does NOT hold; honest Provers "
            f"would fail spot-checks. Declare tau = {self.recommended_tau:g} (measured x "
            f"{SAFETY:g}), or make the task bitwise reproducible (protocol.tasks.exact)."
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived figures."""
        return asdict(self) | {
            "largest": self.largest,
            "bitwise": self.bitwise,
            "recommended_tau": self.recommended_tau,
            "ok": self.ok,
            "advice": self.advice(),
        }


def recommend_tau(largest: float) -> float:
    """``SAFETY`` x ``largest``, rounded up to one significant digit (0 stays 0)."""
    if largest <= 0:
        return 0.0
    x = SAFETY * largest
    unit = 10.0 ** math.floor(math.log10(x))
    return float(math.ceil(x / unit - 1e-9) * unit)


def _rows(task: TaskBase, rows: int) -> tuple[NDArray[np.bool_], NDArray[np.uint64]]:
    masks = sample_masks(_SEED, task.n_train, 0.5, range(rows), domain="check-task")
    return masks, training_seeds(_SEED, range(rows), domain="check-task-seed")


def _compare(
    check: TaskCheck,
    name: str,
    ref: tuple[NDArray[np.float64], NDArray[np.float32]],
    got: tuple[NDArray[np.float64], NDArray[np.float32]],
) -> None:
    (rv, rp), (gv, gp) = ref, got
    diff = max(float(np.abs(rv - gv).max(initial=0.0)), float(np.abs(rp - gp).max(initial=0.0)))
    same = all(fingerprint(rv[i], rp[i]) == fingerprint(gv[i], gp[i]) for i in range(len(rv)))
    check.differences[name] = diff
    check.identical[name] = same


def _in_process(task: TaskBase, check: TaskCheck, masks: NDArray[np.bool_],
                seeds: NDArray[np.uint64], ref: tuple[Any, Any],
                progress: Callable[[str], None]) -> None:  # fmt: skip
    r = len(masks)

    def run(m: NDArray[np.bool_], s: NDArray[np.uint64]) -> tuple[Any, Any]:
        out = run_task(task, m, s)
        return out.values, out.probes

    def reorder(perm: NDArray[np.int64]) -> tuple[Any, Any]:
        v, p = run(masks[perm], seeds[perm])
        inv = np.argsort(perm)
        return v[inv], p[inv]

    progress("repeated")
    _compare(check, "repeated", ref, run(masks, seeds))
    progress("reversed")
    _compare(check, "reversed", ref, reorder(np.arange(r)[::-1].copy()))
    progress("shuffled")
    _compare(check, "shuffled", ref, reorder(np.random.default_rng(7).permutation(r)))
    progress("alone")
    alone = [run(masks[i : i + 1], seeds[i : i + 1]) for i in range(r)]
    _compare(check, "alone", ref, (np.concatenate([a[0] for a in alone]),
                                   np.concatenate([a[1] for a in alone])))  # fmt: skip
    progress("positions")
    # Each row at another position of a larger batch: fillers (other rows) around it.
    filler_m = sample_masks(_SEED, task.n_train, 0.5, range(r, 2 * r + 3), domain="check-task")
    filler_s = training_seeds(_SEED, range(r, 2 * r + 3), domain="check-task-seed")
    cut = 3 + r // 2
    big_m = np.concatenate([filler_m[:cut], masks, filler_m[cut:]])
    big_s = np.concatenate([filler_s[:cut], seeds, filler_s[cut:]])
    v, p = run(big_m, big_s)
    _compare(check, "positions", ref, (v[cut : cut + r], p[cut : cut + r]))
    chunk = task.chunk_size
    try:
        for size in (1, 3):
            progress(f"chunks of {size}")
            task.chunk_size = size
            _compare(check, f"chunks of {size}", ref, run(masks, seeds))
    finally:
        task.chunk_size = chunk


def _run_worker(
    task_ref: str, masks: NDArray[np.bool_], seeds: NDArray[np.uint64], env: dict[str, str]
) -> tuple[NDArray[np.float64], NDArray[np.float32], str]:
    """Train the rows in a fresh interpreter with ``env`` added; values, probes, device class."""
    with tempfile.TemporaryDirectory() as tmp:
        rows, out = Path(tmp) / "rows.npz", Path(tmp) / "out.npz"
        np.savez(rows, masks=masks, seeds=seeds)
        child_env = {**os.environ, **env}
        proc = subprocess.run(
            [sys.executable, "-m", "prover_service.task_check", task_ref, str(rows), str(out)],
            env=child_env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise TaskError(f"check-task worker ({env}) failed: {tail[0]}")
        with np.load(out) as f:
            return f["values"], f["probes"], str(f["device_class"])


def check_task(
    task_ref: str,
    rows: int = 12,
    *,
    processes: bool = True,
    progress: Callable[[str], None] | None = None,
) -> TaskCheck:
    """Measure a task's reproducibility (module doc). ``processes=False``: in process only."""
    say = progress or (lambda _s: None)
    task = load_task(task_ref)
    if rows < 2:
        raise TaskError("check-task needs at least 2 rows")
    check = TaskCheck(task=task_ref, rows=rows, declared_tau=task.tau)
    masks, seeds = _rows(task, rows)
    say("reference")
    out = run_task(task, masks, seeds)
    ref = (out.values, out.probes)
    check.device_classes["reference"] = task.device_class
    _in_process(task, check, masks, seeds, ref, say)
    if processes:
        variants = {
            "1 thread": {k: "1" for k in _THREAD_VARS},
            "2 threads": {k: "2" for k in _THREAD_VARS},
            "baseline instruction set": {**BASELINE_ISA, **{k: "1" for k in _THREAD_VARS}},
        }
        if cpu_instruction_set() == "avx512":  # the other vector path of this CPU
            variants["AVX2 instruction set"] = {**AVX2_ISA, **{k: "1" for k in _THREAD_VARS}}
        for name, env in variants.items():
            say(name)
            v, p, device = _run_worker(task_ref, masks, seeds, env)
            _compare(check, name, ref, (v, p))
            check.device_classes[name] = device
    return check


def quick_check(task: TaskBase, rows: int = 4) -> TaskCheck:
    """The in-process part of :func:`check_task` on a loaded task (``serve`` at start-up)."""
    check = TaskCheck(task=task.name, rows=rows, declared_tau=task.tau)
    masks, seeds = _rows(task, rows)
    out = run_task(task, masks, seeds)
    _in_process(task, check, masks, seeds, (out.values, out.probes), lambda _s: None)
    return check


def check_served_tasks(refs: list[str], cache_dir: Path, rows: int = 4) -> list[tuple[str, str]]:
    """``serve``'s check of tasks loaded from a file (``FILE.py:FACTORY``): :func:`check_task`
    with its fresh processes (1 and 2 threads, the other instruction sets), on ``rows`` rows;
    the refused ones as (ref, advice). The in-process part runs for every task when the service
    starts (:func:`quick_check`); the built-in tasks are exact or declare what this project's
    tests measure, so only a file's task is checked here. A passed check is remembered in
    ``cache_dir/task-checks.json``, keyed by the file's bytes, the task's spec hash, the CPU's
    instruction set and the library versions, so a restart does not repeat it."""
    from protocol.tasks import spec_hash

    refused = []
    cache_file = cache_dir / "task-checks.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    for ref in refs:
        path = Path(ref.split(":", 1)[0])
        if path.suffix != ".py" or not path.is_file():
            continue
        import hashlib

        import torch

        key = hashlib.sha256(
            path.read_bytes()
            + json.dumps(
                [
                    ref,
                    spec_hash(load_task(ref)),
                    cpu_instruction_set(),
                    torch.__version__,
                    np.__version__,
                ]
            ).encode()  # fmt: skip
        ).hexdigest()
        if cache.get(key) == "ok":
            continue
        report = check_task(ref, rows, processes=True)
        if not report.ok:
            refused.append((ref, report.advice()))
            continue
        cache[key] = "ok"
        try:
            cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            cache_file.write_text(json.dumps(cache))
        except OSError:
            pass
    return refused


class StartupChecks:
    """The start-up checks of the tasks a Prover serves, run one task after another in one
    background thread; :meth:`require` refuses work on a task until its check has passed.
    The thread starts with the app (``create_app``'s lifespan, once the server is up) or at
    the first :meth:`require` or :meth:`wait`.

    ``tasks`` maps spec hash to task; ``check`` is :func:`quick_check` (replaceable in tests).
    A task not in ``tasks`` (added later, or served without checks) is never refused."""

    RETRY_AFTER_S = 5

    def __init__(
        self,
        tasks: dict[str, TaskBase],
        labels: dict[str, str] | None = None,
        check: Callable[[TaskBase], TaskCheck] | None = None,
    ) -> None:
        self._tasks = dict(tasks)
        self._labels = labels or {h: t.name for h, t in tasks.items()}
        self._check = check or quick_check
        self._refused: dict[str, str] = {}
        self._pending = set(self._tasks)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._started = False
        if not self._tasks:
            self._done.set()

    def start(self) -> StartupChecks:
        """Start the background thread (once; later calls do nothing); returns self."""
        with self._lock:
            if self._started or self._done.is_set():
                return self
            self._started = True
        threading.Thread(target=self._run, name="vda-task-check", daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            for task_hash, task in self._tasks.items():
                label = self._labels.get(task_hash, task.name)
                try:
                    check = self._check(task)
                    refusal = None if check.ok else check.advice()
                except Exception as exc:  # noqa: BLE001 - a task's own code failed
                    refusal = f"its check failed: {type(exc).__name__}: {exc}"
                with self._lock:
                    self._pending.discard(task_hash)
                    if refusal is not None:
                        self._refused[task_hash] = f"refusing to serve {label!r}: {refusal}"
                if refusal is not None:
                    log.error("refusing to serve %s: %s", label, refusal)
        finally:
            with self._lock:
                self._pending.clear()
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every check has finished (True) or ``timeout`` seconds passed."""
        self.start()
        return self._done.wait(timeout)

    def refused(self) -> dict[str, str]:
        """Spec hash -> the reason, for each task whose check failed so far."""
        with self._lock:
            return dict(self._refused)

    def require(self, task_hash: str) -> None:
        """Raise :class:`TaskUnavailable` unless the task's check has passed (class doc)."""
        self.start()
        with self._lock:
            if task_hash in self._refused:
                raise TaskUnavailable(self._refused[task_hash])
            if task_hash in self._pending:
                label = self._labels.get(task_hash, task_hash)
                raise TaskUnavailable(
                    f"task {label!r} is still being checked at start-up; try again shortly",
                    retry_after=self.RETRY_AFTER_S,
                )


def _worker_main(argv: list[str]) -> int:
    """``python -m prover_service.task_check TASK ROWS.npz OUT.npz`` (used by check_task)."""
    task_ref, rows_path, out_path = argv
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    task = load_task(task_ref)
    with np.load(rows_path) as f:
        masks, seeds = f["masks"], f["seeds"]
    out = run_task(task, masks, seeds)
    np.savez(out_path, values=out.values, probes=out.probes, device_class=task.device_class)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_worker_main(sys.argv[1:]))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        print(f"{type(exc).__name__}: {json.dumps(str(exc))}", file=sys.stderr)
        sys.exit(1)
