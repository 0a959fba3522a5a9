"""Running a task over a design: chunked, validated, with a progress callback.

This is the one place the rest of the code turns (design, task) into the (|E|, Z) f-values the
estimators take. Chunks are aligned to pairs and evaluated in order; ``progress(done, total)``
is called after each chunk so CLIs and services can show it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from protocol.errors import InvalidParameterError, TaskError
from protocol.sampling import ChallengeDesign
from protocol.tasks.base import Task, evaluate_checked

__all__ = ["Progress", "evaluate_design", "evaluate_with_probes"]

Progress = Callable[[int, int], None]


def evaluate_design(
    task: Task, design: ChallengeDesign, chunk_size: int = 2048, progress: Progress | None = None
) -> NDArray[np.float64]:
    """f for every subset of the design, (|E|, Z) float64, in the design's order."""
    if design.n_train != task.n_train:
        raise TaskError(
            f"design is for N = {design.n_train}; task {task.name!r} has N = {task.n_train}"
        )
    if chunk_size < 2:
        raise InvalidParameterError("chunk size must be at least 2")
    out = np.empty((len(design), task.n_targets))
    for start, stop in design.chunks(chunk_size):
        masks, seeds = design.masks(start, stop), design.seeds(start, stop)
        out[start:stop] = evaluate_checked(task, masks, seeds)
        if progress is not None:
            progress(stop, len(design))
    return out


def evaluate_with_probes(
    task: Task, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]
) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
    """Values (K, Z) and CHECKEQUIV probe logits (K, P); tasks without probes give P = 0."""
    run = getattr(task, "evaluate_outputs", None)
    if run is not None:
        out = run(masks, seeds)
        return np.asarray(out.values, dtype=np.float64), np.asarray(out.probes, dtype=np.float32)
    values = evaluate_checked(task, masks, seeds)
    return values, np.zeros((len(values), 0), dtype=np.float32)
