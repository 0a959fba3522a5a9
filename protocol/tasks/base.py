"""The training-task contract shared by both parties.

A task is what both parties agree to train. It is any object with

* ``name: str``; ``n_train: int`` (N); ``n_targets: int`` (Z); ``bound: float`` (b);
* ``spec() -> dict``: JSON-serialisable description (data hash, split, model, optimiser, ...);
  its RFC 8785 canonical SHA-256, :func:`spec_hash`, identifies the task in every message;
* ``evaluate(masks, seeds) -> values``: masks bool (K, N), seeds uint64 (K,) -> float64 (K, Z):
  train one model per row with that seed and return f for each target, clipped to [-b, b].
  The same (mask, seed) always gives the same row.

:func:`evaluate_checked` is how the rest of the code calls a task: it validates the inputs and
the task's output (shape, dtype, finiteness, range) so that a broken task is a clear
:class:`TaskError`, not a silent wrong answer.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from protocol.checks import as_mask_matrix
from protocol.codec import canonical_json, sha256_hex
from protocol.errors import ShapeError, TaskError

__all__ = ["Task", "evaluate_checked", "spec_hash"]


@runtime_checkable
class Task(Protocol):
    """Structural type of a training task (module doc)."""

    name: str
    n_train: int
    n_targets: int
    bound: float

    def spec(self) -> dict[str, Any]: ...

    def evaluate(
        self, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]
    ) -> NDArray[np.float64]: ...


def spec_hash(task: Task) -> str:
    """SHA-256 (hex) of the canonical JSON of ``task.spec()``."""
    return sha256_hex(canonical_json(task.spec()))


def evaluate_checked(
    task: Task, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]
) -> NDArray[np.float64]:
    """Call ``task.evaluate`` after validating inputs, and validate what it returns."""
    m = as_mask_matrix(masks, task.n_train)
    s = np.asarray(seeds)
    if s.ndim != 1 or s.shape[0] != m.shape[0]:
        raise ShapeError(f"need one seed per mask: {m.shape[0]} masks, seeds of shape {s.shape}")
    if s.dtype != np.uint64:
        if not np.issubdtype(s.dtype, np.integer) or (s.size and s.min() < 0):
            raise ShapeError(f"seeds must be non-negative integers (uint64); got {s.dtype}")
        s = s.astype(np.uint64)
    out = np.asarray(task.evaluate(m, s))
    if out.shape != (m.shape[0], task.n_targets):
        raise TaskError(
            f"task {task.name!r} returned shape {out.shape}, "
            f"expected {(m.shape[0], task.n_targets)}"
        )
    out = out.astype(np.float64, copy=False)
    if not np.all(np.isfinite(out)):
        raise TaskError(f"task {task.name!r} returned NaN or infinite values")
    if out.size and np.max(np.abs(out)) > task.bound:
        raise TaskError(f"task {task.name!r} returned values outside [-b, b] with b = {task.bound}")
    return out
