"""The executor interface (:mod:`prover_service.executor` has the module doc): a chunk of
trainings, the abstract :class:`Executor` that runs chunks somewhere, and its errors. The local
implementation is in :mod:`prover_service.executor`, the Ray one in
:mod:`prover_service.ray_executor`; both import this module, and neither imports the other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from protocol.errors import TaskError
from protocol.evaluation import Progress
from protocol.tasks import Task, TaskBase, TrainingOutputs, declared

__all__ = ["Chunk", "ChunkLost", "Executor", "ExecutorKind", "ExecutorUnavailable", "OnChunk"]

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
        return assemble(t, [parts[c.start] for c in chunks], rows)

    @abstractmethod
    def close(self) -> None:
        """Release workers or connections (nothing for the local executor)."""


def assemble(task: TaskBase, parts: list[TrainingOutputs], rows: int) -> TrainingOutputs:
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
