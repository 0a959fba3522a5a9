"""Daunce (Pan et al. 2025, seed 001): attribution from the covariance of losses across
perturbed copies of one trained model.

Start from the model theta_0 trained on the whole pool. Copy k is fine-tuned on a random subset
S_k (each example kept with probability ``ratio``) under the Daunce objective ::

    L_k(theta) = sum_{i in S_k} l_i(theta) + sum_{i in S_k} (xi_ik - 1/2) grad l_i(theta_0) . theta
                 + regulariser,            xi_ik ~ U(0, 1) independent,

a first-order term with per-example random weights (centred, so theta_0 stays the mean). To
first order theta_k - theta_0 ~ -H^-1 sum_i e_ik grad l_i, so the covariance across copies of
the losses on target z and on training example i is ~ grad l_z^T H^-1 F H^-1 grad l_i, an
influence-function score with the Fisher F in the middle (Daunce's Theorem 1). The score of i
for z is that covariance (``measure="correlation"`` divides by the standard deviations).
A positive covariance of *losses* means i and z improve together, so the score is positive
where including i raises z's margin; the calibration fits the sign and scale anyway.

The **black-box variant** needs only losses: plain fine-tunes of theta_0 on bootstrap resamples
of the pool (each copy's example weights are multinomial counts), same covariance.

Cost: K fine-tunes (counted as trainings) + M calibration trainings, M = ``calibration`` (default
a quarter of the budget, between 8 and 64). Daunce needs a differentiable task exposing
``full_model``, ``example_gradients``, ``example_losses`` and ``finetune`` (digits-logreg does);
it refuses others, e.g. ``planted``, which only evaluates f.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from protocol.errors import BudgetError, InvalidParameterError
from protocol.sampling import sample_masks, stream_words
from protocol.tasks import Differentiable, Task, declared
from prover_service.attribution.base import AttributionResult, Progress
from prover_service.attribution.calibration import calibrate

if TYPE_CHECKING:
    import torch

__all__ = ["daunce", "daunce_blackbox", "loss_covariance"]

MIN_COPIES = 8


def _require_differentiable(task: Task, method: str) -> Differentiable:
    ext = declared(task).differentiable()
    if ext is None:
        raise InvalidParameterError(
            f"{method} needs a differentiable trained task (protocol.tasks.Differentiable: "
            f"full_model, example_gradients, example_losses, finetune); "
            f"task {task.name!r} only evaluates f"
        )
    return ext


def _split(budget: int, calibration: int | None) -> tuple[int, int]:
    n_cal = calibration if calibration is not None else max(8, min(64, budget // 4))
    copies = budget - n_cal
    if copies < MIN_COPIES:
        raise BudgetError(
            f"Daunce needs at least {MIN_COPIES} fine-tuned copies plus {n_cal} calibration "
            f"trainings: a budget of at least {MIN_COPIES + n_cal}; got {budget}"
        )
    return copies, n_cal


def loss_covariance(
    target_losses: NDArray[np.float64], pool_losses: NDArray[np.float64], measure: str
) -> NDArray[np.float64]:
    """Across copies: (K, Z) and (K, N) losses -> (Z, N) covariance or correlation."""
    t = target_losses - target_losses.mean(0)
    q = pool_losses - pool_losses.mean(0)
    cov = t.T @ q / (len(t) - 1)
    if measure == "covariance":
        return np.asarray(cov)
    if measure != "correlation":
        raise InvalidParameterError(f"measure must be covariance or correlation; got {measure!r}")
    sd_t, sd_q = t.std(0, ddof=1), q.std(0, ddof=1)
    denom = np.outer(sd_t, sd_q)
    return np.asarray(np.where(denom > 0, cov / np.where(denom > 0, denom, 1.0), 0.0))


# The copies' pool weights (K, N) for copies [start, stop); and, for the linearised variant,
# the linear term of their objectives from those weights and the per-example gradients (the
# task's tensor, as Differentiable.example_gradients returns it: typed Any there).
_WeightsFn = Callable[[int, int], NDArray[np.float64]]
_LinearFn = Callable[[int, int, NDArray[np.float64], Any], "torch.Tensor"]


def _run_copies(
    task: Task, copies: int, weights_of: _WeightsFn, linear_of: _LinearFn | None,
    progress: Progress | None, total: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:  # fmt: skip
    import torch  # only Daunce needs it: the CLIs' start-up stays torch-free

    ext = _require_differentiable(task, "Daunce")
    theta0 = ext.full_model()
    grads = ext.example_gradients(theta0) if linear_of else None
    chunk = declared(task).chunk_size
    t_losses = np.empty((copies, task.n_targets))
    p_losses = np.empty((copies, task.n_train))
    for start in range(0, copies, chunk):
        stop = min(start + chunk, copies)
        weights = weights_of(start, stop)
        w_t = torch.tensor(weights, dtype=theta0.dtype, device=theta0.device)
        linear = linear_of(start, stop, weights, grads) if linear_of else None
        with torch.no_grad():
            thetas = ext.finetune(w_t, linear, theta0)
            t_losses[start:stop] = ext.example_losses(thetas, "targets").double().cpu().numpy()
            p_losses[start:stop] = ext.example_losses(thetas, "pool").double().cpu().numpy()
        if progress is not None:
            progress(stop, total)
    return t_losses, p_losses


def daunce(
    task: Task,
    budget: int,
    p: float,
    seed: bytes,
    progress: Progress | None = None,
    ratio: float = 0.5,
    calibration: int | None = None,
    measure: str = "covariance",
) -> AttributionResult:
    """Daunce with the first-order perturbation (module doc)."""
    _require_differentiable(task, "daunce")
    copies, n_cal = _split(budget, calibration)
    n = task.n_train

    def weights_of(start: int, stop: int) -> NDArray[np.float64]:
        return sample_masks(seed, n, ratio, range(start, stop), domain="daunce-subset").astype(
            np.float64
        )

    def linear_of(
        start: int, stop: int, weights: NDArray[np.float64], grads: torch.Tensor
    ) -> torch.Tensor:
        import torch

        xi = np.stack([stream_words(seed, "daunce-xi", k, n) / 2.0**32 for k in range(start, stop)])
        e = torch.tensor((xi - 0.5) * weights, dtype=grads.dtype, device=grads.device)
        return grads.T @ e.T  # (D C, K)

    t_l, p_l = _run_copies(task, copies, weights_of, linear_of, progress, budget)
    scores = loss_covariance(t_l, p_l, measure)
    model = calibrate(task, scores, n_cal, p, seed, progress, copies, budget)
    return AttributionResult(
        "daunce", model, budget,
        {"copies": copies, "calibration_trainings": n_cal, "ratio": ratio, "measure": measure},
    )  # fmt: skip


def daunce_blackbox(
    task: Task,
    budget: int,
    p: float,
    seed: bytes,
    progress: Progress | None = None,
    calibration: int | None = None,
    measure: str = "covariance",
) -> AttributionResult:
    """Daunce's black-box variant: plain fine-tunes on bootstrap resamples (module doc)."""
    _require_differentiable(task, "daunce-blackbox")
    copies, n_cal = _split(budget, calibration)
    n = task.n_train

    def weights_of(start: int, stop: int) -> NDArray[np.float64]:
        rows = []
        for k in range(start, stop):
            picks = (stream_words(seed, "daunce-bootstrap", k, n).astype(np.uint64) * n) >> 32
            rows.append(np.bincount(picks.astype(np.int64), minlength=n).astype(np.float64))
        return np.stack(rows)

    t_l, p_l = _run_copies(task, copies, weights_of, None, progress, budget)
    scores = loss_covariance(t_l, p_l, measure)
    model = calibrate(task, scores, n_cal, p, seed, progress, copies, budget)
    return AttributionResult(
        "daunce-blackbox", model, budget,
        {"copies": copies, "calibration_trainings": n_cal, "measure": measure},
    )  # fmt: skip
