"""Where the Prover's trainings run: one executor interface, a local and a Ray implementation.

Every training the Prover does (a challenge's chunks, an attribution's sampled subsets) is a
*chunk*: rows ``[start, stop)`` of masks (K, N) bool and seeds (K,) uint64, turned into
:class:`~protocol.tasks.base.TrainingOutputs` by :func:`protocol.evaluation.run_task`. An
executor decides only *where* that call happens; the rows, their seeds, the split into chunks and
the order in which results are assembled are the caller's, so the bytes of a response never
depend on the executor.

=========  ==================================================================================
``local``  today's engine: every chunk in this process, one after another (the default, and
           the reference the other is tested against; it never imports Ray)
``ray``    :class:`prover_service.ray_executor.RayExecutor`: chunks as Ray tasks that declare
           their CPU/GPU needs, the task object shipped once per worker process, a worker that
           dies retried a bounded number of times (``pip install .[ray]``)
=========  ==================================================================================

:meth:`Executor.map_chunks` is the primitive: it runs chunks and hands each result to a callback
*in the caller's thread* as it arrives, in any order, so the caller can persist it at once (the
resume of challenge jobs). :meth:`Executor.run` is :func:`run_task` on top of it: same chunks,
results put back in row order.

Attribution methods call :func:`prover_service.attribution.base.train_samples`, whose signature
has no executor; the job lane sets the one to use for the duration of a job with
:func:`use_executor` (a context variable), and the default is local.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from protocol.errors import TaskError
from protocol.evaluation import Progress, run_task
from protocol.tasks import Task, TaskBase, TrainingOutputs, declared

if TYPE_CHECKING:
    from prover_service.settings import Settings

__all__ = [
    "Chunk",
    "ChunkLost",
    "Executor",
    "ExecutorKind",
    "ExecutorUnavailable",
    "LocalExecutor",
    "current_executor",
    "make_executor",
    "use_executor",
]

OnChunk = Callable[["Chunk", TrainingOutputs], None]


class ExecutorKind(StrEnum):
    """The executors (module doc)."""

    LOCAL = "local"
    RAY = "ray"


class ExecutorUnavailable(RuntimeError):
    """The chosen executor cannot run here (Ray not installed, cluster unreachable)."""


class ChunkLost(RuntimeError):
    """A chunk failed on every allowed attempt for a reason outside the task (worker died)."""


@dataclass(frozen=True)
class Chunk:
    """Rows ``[start, stop)`` of a job: masks (stop - start, N) bool, seeds (stop - start,)."""

    start: int
    stop: int
    masks: NDArray[np.bool_]
    seeds: NDArray[np.uint64]


class Executor(ABC):
    """Runs chunks of trainings somewhere (module doc)."""

    kind: ExecutorKind

    @property
    @abstractmethod
    def slots(self) -> int:
        """How many chunks are worth having in flight at once (1 for the local executor)."""

    @abstractmethod
    def map_chunks(self, task: Task, chunks: Sequence[Chunk], on_chunk: OnChunk) -> None:
        """Train every chunk; call ``on_chunk(chunk, outputs)`` here as each one finishes.

        Results arrive in any order. An exception from the task or from ``on_chunk`` stops the
        call (chunks still in flight are abandoned) and propagates; a chunk whose worker died
        more often than allowed raises :class:`ChunkLost`.
        """

    def run(
        self,
        task: Task,
        masks: NDArray[np.bool_],
        seeds: NDArray[np.uint64],
        progress: Progress | None = None,
        *,
        offset: int = 0,
        total: int | None = None,
    ) -> TrainingOutputs:
        """:func:`protocol.evaluation.run_task` through this executor: the same rows in
        ``task.chunk_size`` chunks, (K, Z) float64 values and (K, P) float32 probes in row
        order; ``progress(offset + finished rows, total)`` after each chunk."""
        t = declared(task)
        rows = len(masks)
        if len(seeds) != rows:
            raise TaskError(f"need one seed per mask: {rows} masks, {len(seeds)} seeds")
        total = offset + rows if total is None else total
        step = t.chunk_size
        chunks = [
            Chunk(a, min(a + step, rows), masks[a : a + step], seeds[a : a + step])
            for a in range(0, rows, step)
        ]
        parts: dict[int, TrainingOutputs] = {}
        finished = [0]
        from prover_service.ledger import current_ledger  # sqlalchemy: only when training

        ledger = current_ledger()

        def collect(chunk: Chunk, out: TrainingOutputs, keep: bool = True) -> None:
            if ledger is not None and keep:
                ledger.put(offset + chunk.start, offset + chunk.stop, out)
            parts[chunk.start] = out
            finished[0] += chunk.stop - chunk.start
            if progress is not None:
                progress(offset + finished[0], total)

        todo = []
        for chunk in chunks:
            held = None if ledger is None else ledger.get(offset + chunk.start, offset + chunk.stop)
            if held is None:
                todo.append(chunk)
            else:
                collect(chunk, held, keep=False)
        self.map_chunks(t, todo, collect)
        return _assemble(t, [parts[c.start] for c in chunks], rows)

    @abstractmethod
    def close(self) -> None:
        """Release workers or connections (nothing for the local executor)."""


def _assemble(task: TaskBase, parts: list[TrainingOutputs], rows: int) -> TrainingOutputs:
    if not parts:
        return TrainingOutputs(np.empty((0, task.n_targets)), np.zeros((0, 0), np.float32))
    widths = {p.probes.shape[1] for p in parts}
    if len(widths) != 1:
        raise TaskError(f"task {task.name!r} returned probes of varying width")
    values = np.concatenate([p.values for p in parts]).astype(np.float64, copy=False)
    probes = np.concatenate([p.probes for p in parts]).astype(np.float32, copy=False)
    if len(values) != rows:
        raise TaskError(f"chunks returned {len(values)} rows for {rows}")
    return TrainingOutputs(values, probes)


class LocalExecutor(Executor):
    """Every chunk in this process, in order: exactly :func:`run_task` (the reference)."""

    kind = ExecutorKind.LOCAL

    @property
    def slots(self) -> int:
        return 1

    def map_chunks(self, task: Task, chunks: Sequence[Chunk], on_chunk: OnChunk) -> None:
        for chunk in chunks:
            on_chunk(chunk, run_task(task, chunk.masks, chunk.seeds))

    def close(self) -> None:
        """Nothing to release."""

    def run(
        self,
        task: Task,
        masks: NDArray[np.bool_],
        seeds: NDArray[np.uint64],
        progress: Progress | None = None,
        *,
        offset: int = 0,
        total: int | None = None,
    ) -> TrainingOutputs:
        from prover_service.ledger import current_ledger  # sqlalchemy: only when training

        if current_ledger() is not None:  # chunks kept and reused: the general path
            return super().run(task, masks, seeds, progress, offset=offset, total=total)
        return run_task(task, masks, seeds, progress, offset=offset, total=total)


def ray_available() -> bool:
    """True if Ray can be imported here (without importing it)."""
    return importlib.util.find_spec("ray") is not None


def make_executor(
    kind: str = "local",
    address: str | None = None,
    *,
    workers: int = 0,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    max_retries: int = 3,
) -> Executor:
    """The executor named ``kind``; ``address`` and the rest are Ray's (see
    :class:`~prover_service.ray_executor.RayExecutor`). Ray is imported only for ``ray``, and
    its absence is an :class:`ExecutorUnavailable` that says what to install."""
    try:
        which = ExecutorKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in ExecutorKind)
        raise ExecutorUnavailable(f"unknown executor {kind!r}; choose one of {known}") from None
    if which is ExecutorKind.LOCAL:
        return LocalExecutor()
    if not ray_available():
        raise ExecutorUnavailable(
            "the ray executor needs Ray, which is not installed: pip install .[ray]"
        )
    from prover_service.ray_executor import RayExecutor

    return RayExecutor(address, workers=workers, num_cpus=num_cpus, num_gpus=num_gpus,
                       max_retries=max_retries)  # fmt: skip


def executor_from_settings(settings: Settings) -> Executor:
    """The executor a Prover's settings name (``executor``, ``ray_*``)."""
    return make_executor(
        settings.executor, settings.ray_address, workers=settings.ray_workers,
        num_cpus=settings.ray_num_cpus, num_gpus=settings.ray_num_gpus,
        max_retries=settings.ray_max_retries,
    )  # fmt: skip


_CURRENT: ContextVar[Executor | None] = ContextVar("prover_executor", default=None)
_LOCAL = LocalExecutor()


def current_executor() -> Executor:
    """The executor set by :func:`use_executor` in this context, else the local one."""
    return _CURRENT.get() or _LOCAL


@contextmanager
def use_executor(executor: Executor) -> Iterator[Executor]:
    """Run the trainings inside the ``with`` block (attribution methods) on ``executor``."""
    token = _CURRENT.set(executor)
    try:
        yield executor
    finally:
        _CURRENT.reset(token)
