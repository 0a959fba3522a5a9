"""A job's ledger of trained chunks: what an attribution job has already paid for.

An attribution job trains its sampled subsets through the current executor
(:meth:`prover_service.executor.Executor.run`); with a ledger in force (:func:`use_ledger`) each
chunk of ``task.chunk_size`` rows is written to the ``chunks`` table (key: the job and the chunk's
first row in the job, ``offset + start``) and the array store *as it arrives*, and a chunk already
there is read back instead of trained. A killed Prover therefore re-trains only the chunks that
were missing, and the result is the same bytes, since every row's mask and seed are fixed by
the job's seed.

Row numbers are the ones the methods report progress in: stages of one job (calibration after
Daunce's copies) use disjoint ``offset`` ranges, so keys never collide. A chunk whose arrays are
damaged, or whose length disagrees, is forgotten and trained again.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from sqlalchemy.orm import Session, sessionmaker

from protocol.messages import array_to_npy
from protocol.tasks import TrainingOutputs
from prover_service.arrays import ArrayStore
from prover_service.errors import CorruptArray
from prover_service.tables import ChunkRow

__all__ = ["ChunkLedger", "JobLedger", "current_ledger", "use_ledger"]


class ChunkLedger(Protocol):
    """Where finished chunks are kept: rows ``[start, stop)`` of one job."""

    def get(self, start: int, stop: int) -> TrainingOutputs | None: ...

    def put(self, start: int, stop: int, out: TrainingOutputs) -> None: ...


def _load_npy(data: bytes) -> NDArray[Any]:
    return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))


class JobLedger:
    """The chunks of job ``job_id`` in the ``chunks`` table and the array store (module doc)."""

    def __init__(self, db: sessionmaker[Session], arrays: ArrayStore, job_id: str) -> None:
        self.db, self.arrays, self.job_id = db, arrays, job_id

    def get(self, start: int, stop: int) -> TrainingOutputs | None:
        """The chunk's values (K, Z) float64 and probes (K, P) float32, or None to train it."""
        with self.db() as s:
            row = s.get(ChunkRow, (self.job_id, start))
        if row is None:
            return None
        values: NDArray[Any] | None
        probes: NDArray[Any] | None
        try:
            values = _load_npy(self.arrays.get(row.values_sha))
            probes = _load_npy(self.arrays.get(row.probes_sha))
        except (CorruptArray, KeyError, ValueError):
            values = probes = None
        if values is None or probes is None or row.stop != stop or len(values) != stop - start:
            with self.db.begin() as s:
                s.delete(s.get(ChunkRow, (self.job_id, start)))
            return None
        return TrainingOutputs(values.astype(np.float64), probes.astype(np.float32))

    def put(self, start: int, stop: int, out: TrainingOutputs) -> None:
        """Keep a finished chunk (its arrays first, then the row that names them)."""
        vsha = self.arrays.put(array_to_npy("values", out.values)[1])
        psha = self.arrays.put(array_to_npy("probes", out.probes)[1])
        with self.db.begin() as s:
            s.merge(ChunkRow(job_id=self.job_id, start=start, stop=stop, values_sha=vsha,
                             probes_sha=psha))  # fmt: skip


_CURRENT: ContextVar[ChunkLedger | None] = ContextVar("prover_ledger", default=None)


def current_ledger() -> ChunkLedger | None:
    """The ledger in force in this context (:func:`use_ledger`), if any."""
    return _CURRENT.get()


@contextmanager
def use_ledger(ledger: ChunkLedger) -> Iterator[ChunkLedger]:
    """Keep (and reuse) the chunks trained inside the ``with`` block in ``ledger``."""
    token = _CURRENT.set(ledger)
    try:
        yield ledger
    finally:
        _CURRENT.reset(token)
