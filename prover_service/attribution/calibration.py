"""Scores to datamodels: a per-target scale and intercept fitted on a few trainings.

Daunce and outside tools (TRAK, influence functions) give scores s_z (N,) per target whose
scale is unknown. The datamodel is g_z(x) = a_z + c_z s_z . x with (a_z, c_z) the least-squares
fit of f_z on the one feature u_z = s_z . x over M freshly trained subsets x ~ B_p: M trainings,
two parameters per target, so a few dozen samples suffice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from protocol.checks import as_finite_matrix
from protocol.datamodel import Datamodel
from protocol.errors import BudgetError, InvalidParameterError, ShapeError
from protocol.tasks import Task
from prover_service.attribution.base import AttributionResult, Progress, train_samples

__all__ = ["calibrate", "fit_scale", "import_scores", "load_scores"]

MIN_CALIBRATION = 3


def fit_scale(
    scores: NDArray[np.float64], masks: NDArray[np.bool_], f: NDArray[np.float64]
) -> Datamodel:
    """Least-squares (a_z, c_z) of f_z on s_z . x, per target (module doc)."""
    u = masks.astype(np.float64) @ scores.T  # (M, Z)
    uc, fc = u - u.mean(0), f - f.mean(0)
    var = np.sum(uc * uc, axis=0)
    scale = np.where(var > 0, np.sum(uc * fc, axis=0) / np.where(var > 0, var, 1.0), 0.0)
    intercept = f.mean(0) - scale * u.mean(0)
    return Datamodel(intercept, scale[:, None] * scores)


def calibrate(
    task: Task,
    scores: NDArray[np.float64],
    samples: int,
    p: float,
    seed: bytes,
    progress: Progress | None = None,
    offset: int = 0,
    total: int | None = None,
) -> Datamodel:
    """Train ``samples`` subsets and fit the scale and intercept of ``scores`` (Z, N)."""
    if samples < MIN_CALIBRATION:
        raise BudgetError(f"calibration needs at least {MIN_CALIBRATION} trainings; got {samples}")
    masks, f = train_samples(task, samples, p, seed, "calibration", progress, offset, total)
    return fit_scale(scores, masks, f)


def load_scores(path: Path, task: Task) -> NDArray[np.float64]:
    """Scores from a .npy or .csv file, one row per target: must be (Z, N) and finite."""
    if not path.is_file():
        raise InvalidParameterError(f"score file {str(path)!r} does not exist")
    try:
        if path.suffix == ".npy":
            raw = np.load(path, allow_pickle=False)
        elif path.suffix == ".csv":
            raw = np.loadtxt(path, delimiter=",", ndmin=2)
        else:
            raise InvalidParameterError(f"score file must be .npy or .csv; got {path.suffix!r}")
    except ValueError as exc:
        raise ShapeError(f"cannot read scores from {str(path)!r}: {exc}") from None
    arr = np.asarray(raw)
    if arr.shape != (task.n_targets, task.n_train):
        raise ShapeError(
            f"scores must have one row per target and one column per training example: "
            f"(Z, N) = ({task.n_targets}, {task.n_train}); got {arr.shape}"
        )
    return as_finite_matrix("scores", arr, (task.n_targets, task.n_train))


def import_scores(
    task: Task,
    scores: NDArray[np.float64],
    budget: int,
    p: float,
    seed: bytes,
    progress: Progress | None = None,
) -> AttributionResult:
    """An outside tool's scores, calibrated with ``budget`` trainings."""
    model = calibrate(task, scores, budget, p, seed, progress)
    return AttributionResult("import", model, budget, {"calibration_trainings": budget})
