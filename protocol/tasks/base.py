"""The training-task contract shared by both parties.

A task is what both parties agree to train. **What a user must write** (:class:`Task`):

* ``name: str``; ``n_train: int`` (N); ``n_targets: int`` (Z); ``bound: float`` (b);
* ``spec() -> dict``: JSON-serialisable description (data hash, split, model, optimiser, ...);
  its RFC 8785 canonical SHA-256, :func:`spec_hash`, identifies the task in every message;
* ``evaluate(masks, seeds) -> values``: masks bool (K, N), seeds uint64 (K,) -> float64 (K, Z):
  train one model per row with that seed and return f for each target, clipped to [-b, b].

**What the rest of the code reads** (:class:`TaskBase`, whose defaults suit a simple numpy
task; :func:`declared` wraps an object that only meets :class:`Task`):

* ``tau: float`` (default 0): the largest difference two honest runs of the same (mask, seed)
  may show on any device the task supports. ``tau = 0`` declares the task *bitwise
  reproducible*: CHECKEQUIV then compares exact bytes. ``tau > 0`` makes CHECKEQUIV compare
  within tau on every device, and tau is slack a cheater may spend on every value, so it is
  charged in the decision. ``prover_service check-task`` measures what to declare.
* ``chunk_size: int`` (default 1024): rows per call of ``evaluate_outputs``.
* ``device_class: str``: what changes bits here (library versions, thread count, the CPU's
  vector instruction set, the GPU model). Recorded in each response; it explains differences,
  it does not decide how CHECKEQUIV compares (tau does).
* ``evaluate_outputs(masks, seeds) -> TrainingOutputs``: values and probe outputs (the
  CHECKEQUIV fingerprint; default none).
* ``differentiable() -> Differentiable | None``: the extension Daunce needs (default None).
* ``certifiable() -> Certifiable | None``: a strongly convex objective whose optimum defines f,
  checked by a gradient instead of a retraining (:mod:`protocol.tasks.certifiable`; default
  None).

:func:`evaluate_checked` validates inputs and outputs (shape, dtype, finiteness, range) so that
a broken task is a clear :class:`TaskError`, not a silent wrong answer;
:func:`protocol.evaluation.run_task` is the one evaluation loop (chunks, checks, progress).
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from protocol.checks import as_mask_matrix
from protocol.codec import canonical_json, sha256_hex
from protocol.errors import ShapeError, TaskError
from protocol.tasks.certifiable import Certifiable

__all__ = [
    "Differentiable",
    "Task",
    "TaskBase",
    "TrainingOutputs",
    "cpu_instruction_set",
    "declared",
    "evaluate_checked",
    "forced_switches",
    "spec_hash",
]

REQUIRED = ("name", "n_train", "n_targets", "bound", "spec", "evaluate")


@runtime_checkable
class Task(Protocol):
    """The minimum a task object has (module doc)."""

    name: str
    n_train: int
    n_targets: int
    bound: float

    def spec(self) -> dict[str, Any]: ...

    def evaluate(
        self, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]
    ) -> NDArray[np.float64]: ...


@runtime_checkable
class Differentiable(Protocol):
    """Daunce's extension: models as columns of a (P, K) parameter matrix (any array type the
    task uses, e.g. torch tensors).

    * ``full_model()`` -> (P, 1): the model trained on the whole pool;
    * ``example_gradients(theta)`` -> (N, P): per-example loss gradients at one model;
    * ``example_losses(theta, "pool" | "targets")`` -> (K, N or Z): losses of K models;
    * ``finetune(weights (K, N), linear (P, K) | None, start (P, 1))`` -> (P, K).
    """

    def full_model(self) -> Any: ...

    def example_gradients(self, theta: Any) -> Any: ...

    def example_losses(self, theta: Any, which: str) -> Any: ...

    def finetune(self, weights: Any, linear: Any, start: Any) -> Any: ...


@dataclass(frozen=True)
class TrainingOutputs:
    """values (K, Z) float64 clipped f; probes (K, P) float32 public-probe outputs (P may be 0)."""

    values: NDArray[np.float64]
    probes: NDArray[np.float32]


@cache
def cpu_instruction_set() -> str:
    """The widest x86 vector extension this CPU offers (``avx512``, ``avx2``, ``avx``, ``sse``),
    or the machine name elsewhere; read from /proc/cpuinfo where it exists."""
    machine = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return machine
    for flag, label in (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"), ("sse2", "sse")):
        if flag in flags:
            return label
    return machine


def forced_switches() -> str:
    """Environment switches that force another code path, as recorded in the device class."""
    keys = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")
    forced = [f"{k}={os.environ[k]}" for k in keys if os.environ.get(k)]
    return (":" + ",".join(forced)) if forced else ""


class TaskBase:
    """A task with every declared part of the contract (module doc) and its defaults.

    Subclasses set ``name``, ``n_train``, ``n_targets``, ``bound`` and implement ``spec`` and
    ``evaluate`` (or ``evaluate_outputs``, from which ``evaluate`` follows).
    """

    name: str
    n_train: int
    n_targets: int
    bound: float
    tau: float = 0.0
    chunk_size: int = 1024

    def spec(self) -> dict[str, Any]:
        """The recipe both parties train (module doc)."""
        raise NotImplementedError

    def evaluate(self, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]) -> NDArray[np.float64]:
        """f on the targets, (K, Z), clipped to [-b, b]."""
        return self.evaluate_outputs(masks, seeds).values

    def evaluate_outputs(
        self, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]
    ) -> TrainingOutputs:
        """Values and probe outputs; the default has no probes."""
        if type(self).evaluate is TaskBase.evaluate:
            raise NotImplementedError(f"{type(self).__name__} implements neither evaluate")
        values = np.asarray(self.evaluate(masks, seeds), dtype=np.float64)
        return TrainingOutputs(values, np.zeros((len(values), 0), dtype=np.float32))

    @property
    def device_class(self) -> str:
        """CPU, instruction set, library versions and BLAS threads (numpy tasks)."""
        return (
            f"cpu:{platform.machine()}:{cpu_instruction_set()}{forced_switches()}"
            f":numpy={np.__version__}:threads={os.environ.get('OMP_NUM_THREADS', 'default')}"
        )

    def differentiable(self) -> Differentiable | None:
        """The Daunce extension, if this task has it."""
        return self if isinstance(self, Differentiable) else None

    def certifiable(self) -> Certifiable | None:
        """The certified-optimality extension (:mod:`protocol.tasks.certifiable`), if any."""
        return None


class _Declared(TaskBase):
    """A user's object that meets :class:`Task`, with the contract's defaults for the rest."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name, self.n_train = str(inner.name), inner.n_train
        self.n_targets, self.bound = inner.n_targets, inner.bound
        self.tau = getattr(inner, "tau", 0.0)
        self.chunk_size = getattr(inner, "chunk_size", TaskBase.chunk_size)

    def spec(self) -> dict[str, Any]:
        return dict(self.inner.spec())

    def evaluate(self, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]) -> NDArray[np.float64]:
        return np.asarray(self.inner.evaluate(masks, seeds))

    def evaluate_outputs(
        self, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]
    ) -> TrainingOutputs:
        run = getattr(self.inner, "evaluate_outputs", None)
        if run is None:
            return super().evaluate_outputs(masks, seeds)
        out = run(masks, seeds)
        return TrainingOutputs(np.asarray(out.values), np.asarray(out.probes))

    @property
    def device_class(self) -> str:
        own = getattr(self.inner, "device_class", None)
        return str(own) if own is not None else super().device_class

    def differentiable(self) -> Differentiable | None:
        return self.inner if isinstance(self.inner, Differentiable) else None

    def certifiable(self) -> Certifiable | None:
        own = getattr(self.inner, "certifiable", None)
        return own() if callable(own) else None

    def __getattr__(self, item: str) -> Any:  # anything else the user's object offers
        return getattr(self.__dict__["inner"], item)


def declared(task: object) -> TaskBase:
    """``task`` as a :class:`TaskBase`: itself if it is one, else wrapped with the defaults.

    Refuses (:class:`TaskError`) an object missing a required attribute or declaring a bad
    ``tau`` (negative, NaN) or ``chunk_size`` (not a positive integer).
    """
    missing = [a for a in REQUIRED if not hasattr(task, a)]
    if missing:
        raise TaskError(f"a task needs {', '.join(REQUIRED)}; this one has no {', '.join(missing)}")
    out = task if isinstance(task, TaskBase) else _Declared(task)
    if not isinstance(out.n_train, int | np.integer) or out.n_train < 1:
        raise TaskError(f"task {out.name!r}: n_train must be a positive integer")
    if not isinstance(out.n_targets, int | np.integer) or out.n_targets < 1:
        raise TaskError(f"task {out.name!r}: n_targets must be a positive integer")
    if not (isinstance(out.bound, int | float) and math.isfinite(out.bound) and out.bound > 0):
        raise TaskError(f"task {out.name!r}: bound must be a finite number > 0")
    tau = out.tau
    if not (isinstance(tau, int | float) and math.isfinite(tau) and tau >= 0):
        raise TaskError(f"task {out.name!r} declares tau = {tau!r}; need a finite tau >= 0")
    chunk = out.chunk_size
    if not isinstance(chunk, int | np.integer) or isinstance(chunk, bool) or chunk < 1:
        raise TaskError(f"task {out.name!r} declares chunk_size = {chunk!r}; need an int >= 1")
    return out


def spec_hash(task: Task) -> str:
    """SHA-256 (hex) of the canonical JSON of ``task.spec()``."""
    return sha256_hex(canonical_json(task.spec()))


def _check_inputs(
    task: Task, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]
) -> tuple[NDArray[np.bool_], NDArray[np.uint64]]:
    m = as_mask_matrix(masks, task.n_train)
    s = np.asarray(seeds)
    if s.ndim != 1 or s.shape[0] != m.shape[0]:
        raise ShapeError(f"need one seed per mask: {m.shape[0]} masks, seeds of shape {s.shape}")
    if s.dtype != np.uint64:
        if not np.issubdtype(s.dtype, np.integer) or (s.size and s.min() < 0):
            raise ShapeError(f"seeds must be non-negative integers (uint64); got {s.dtype}")
        s = s.astype(np.uint64)
    return m, s


def _check_values(task: Task, out: object, rows: int) -> NDArray[np.float64]:
    arr = np.asarray(out)
    if arr.shape != (rows, task.n_targets):
        raise TaskError(
            f"task {task.name!r} returned shape {arr.shape}, expected {(rows, task.n_targets)}"
        )
    if not np.issubdtype(arr.dtype, np.number):
        raise TaskError(f"task {task.name!r} returned values of dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise TaskError(f"task {task.name!r} returned NaN or infinite values")
    if arr.size and np.max(np.abs(arr)) > task.bound:
        raise TaskError(f"task {task.name!r} returned values outside [-b, b] with b = {task.bound}")
    return arr


def evaluate_checked(
    task: Task, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]
) -> NDArray[np.float64]:
    """Call ``task.evaluate`` after validating inputs, and validate what it returns."""
    m, s = _check_inputs(task, masks, seeds)
    return _check_values(task, task.evaluate(m, s), m.shape[0])


def outputs_checked(
    task: TaskBase, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]
) -> TrainingOutputs:
    """Call ``task.evaluate_outputs`` after validating inputs, and validate what it returns."""
    m, s = _check_inputs(task, masks, seeds)
    out = task.evaluate_outputs(m, s)
    values = _check_values(task, out.values, m.shape[0])
    probes = np.asarray(out.probes)
    if probes.ndim != 2 or probes.shape[0] != m.shape[0]:
        raise TaskError(f"task {task.name!r} returned probes of shape {probes.shape}")
    probes = probes.astype(np.float32, copy=False)
    if not np.all(np.isfinite(probes)):
        raise TaskError(f"task {task.name!r} returned NaN or infinite probe outputs")
    return TrainingOutputs(values, probes)
