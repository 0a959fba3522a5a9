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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from protocol.evaluation import Progress, run_task
from protocol.tasks import Task, TrainingOutputs
from prover_service.executor_base import (
    Chunk,
    ChunkLost,
    Executor,
    ExecutorKind,
    ExecutorUnavailable,
    OnChunk,
)

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
