"""The one evaluation loop: (task, rows) -> checked values and probes, in chunks, with progress.

Every caller that trains models (the Prover's challenges, attributions and ``train`` command;
the Verifier's spot-checks and fresh samples; ``check-task``) goes through :func:`run_task`:
rows are handed to ``task.evaluate_outputs`` ``task.chunk_size`` at a time, inputs and outputs
are validated (:func:`protocol.tasks.base.outputs_checked`) and ``progress(done, total)`` is
called after each chunk. :func:`evaluate_design` does the same over a challenge design without
materialising all its masks at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from protocol.errors import TaskError
from protocol.sampling import ChallengeDesign
from protocol.tasks.base import Task, TaskBase, TrainingOutputs, declared, outputs_checked

__all__ = ["Progress", "evaluate_design", "evaluate_with_probes", "run_task"]

Progress = Callable[[int, int], None]


def run_task(
    task: Task,
    masks: NDArray[np.bool_],
    seeds: NDArray[np.uint64],
    progress: Progress | None = None,
    *,
    offset: int = 0,
    total: int | None = None,
) -> TrainingOutputs:
    """Values (K, Z) float64 and probes (K, P) float32 for K rows, checked (module doc).

    ``offset`` and ``total`` let a caller chain several calls under one progress bar: progress
    is reported as ``(offset + done, total)``.
    """
    t: TaskBase = declared(task)
    rows = len(masks)
    if len(seeds) != rows:
        raise TaskError(f"need one seed per mask: {rows} masks, {len(seeds)} seeds")
    total = offset + rows if total is None else total
    values = np.empty((rows, t.n_targets))
    probes: NDArray[np.float32] | None = None
    for start in range(0, rows, t.chunk_size):
        stop = min(start + t.chunk_size, rows)
        out = outputs_checked(t, masks[start:stop], seeds[start:stop])
        if probes is None:
            probes = np.empty((rows, out.probes.shape[1]), dtype=np.float32)
        elif out.probes.shape[1] != probes.shape[1]:
            raise TaskError(f"task {t.name!r} returned probes of varying width")
        values[start:stop], probes[start:stop] = out.values, out.probes
        if progress is not None:
            progress(offset + stop, total)
    return TrainingOutputs(values, np.zeros((0, 0), np.float32) if probes is None else probes)


def evaluate_design(
    task: Task, design: ChallengeDesign, progress: Progress | None = None
) -> NDArray[np.float64]:
    """f for every subset of the design, (|E|, Z) float64, in the design's order; masks are
    drawn one chunk at a time."""
    t = declared(task)
    if design.n_train != t.n_train:
        raise TaskError(f"design is for N = {design.n_train}; task {t.name!r} has N = {t.n_train}")
    out = np.empty((len(design), t.n_targets))
    for lo, hi in design.chunks(max(2, t.chunk_size)):
        out[lo:hi] = run_task(t, design.masks(lo, hi), design.seeds(lo, hi)).values
        if progress is not None:
            progress(hi, len(design))
    return out


def evaluate_with_probes(
    task: Task, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]
) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
    """Values (K, Z) and CHECKEQUIV probe outputs (K, P); tasks without probes give P = 0."""
    out = run_task(task, masks, seeds)
    return out.values, out.probes
