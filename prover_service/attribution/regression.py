"""Sampling-based attributions: empirical influence, ridge and LASSO datamodels, leave-one-out.

All four return weights in mask units (x in {0, 1}) and an intercept, per target.

* **influence** (Feldman & Zhang 2020): w_i = mean f over samples with x_i = 1 minus the mean over
  samples with x_i = 0; for f = w_0 + sum w_i x_i + noise and x ~ B_p this is unbiased for w_i.
  Intercept: g(x-bar) = f-bar. Streaming sums, O(N Z) memory.
* **ridge** (Ilyas et al. 2022): least squares of f on the centred masks with an L2 penalty
  lambda ||w||^2 (intercept unpenalised). X^T X (N x N) and X^T f (N x Z) accumulate chunk by
  chunk, so 10^4 or 10^5 samples never sit in memory as floats. lambda is chosen *per target*
  from a grid on the last 20 % of samples held out (one eigendecomposition serves every lambda),
  then refit on all samples.
* **lasso**: scikit-learn's coordinate descent, alpha shared across targets and chosen on the
  same held-out split; the masks stay boolean until a chunk is converted.
* **loo** (Hampel 1974): N + 1 trainings with one common seed (common random numbers):
  w_i = f(all) - f(all but i), w_0 = f(all) - sum_i w_i. This is the *local* effect of removing
  one example from the full pool, not the slope of the best linear datamodel under B_p: it is a
  different quantity, reported for comparison.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from protocol.datamodel import Datamodel
from protocol.errors import BudgetError
from protocol.sampling import training_seeds
from protocol.tasks import Task
from prover_service.attribution.base import AttributionResult, Progress, train_samples
from prover_service.executor import current_executor

__all__ = ["influence", "lasso", "loo", "ridge"]

RIDGE_GRID = np.logspace(-2, 4, 13)
LASSO_GRID = np.logspace(-4, -1, 7)
HOLDOUT = 0.2


def _min_budget(method: str, budget: int, needed: int, why: str) -> None:
    if budget < needed:
        raise BudgetError(
            f"{method} needs a budget of at least {needed} trainings ({why}); got {budget}"
        )


def influence(
    task: Task, budget: int, p: float, seed: bytes, progress: Progress | None = None
) -> AttributionResult:
    """Empirical influence (module doc)."""
    _min_budget("influence", budget, 8, "each example must be seen in and out")
    masks, f = train_samples(task, budget, p, seed, "attribution", progress)
    x = masks.astype(np.float64)
    inside = x.sum(0)
    if np.any(inside == 0) or np.any(inside == budget):
        raise BudgetError(
            f"influence: with {budget} samples some example was never (or always) included; "
            "raise the budget"
        )
    s1 = x.T @ f  # (N, Z)
    mean_in = s1 / inside[:, None]
    mean_out = (f.sum(0)[None, :] - s1) / (budget - inside)[:, None]
    w = (mean_in - mean_out).T
    intercept = f.mean(0) - w @ (inside / budget)
    return AttributionResult("influence", Datamodel(intercept, w), budget)


def _gram(
    masks: NDArray[np.bool_], f: NDArray[np.float64], chunk: int = 4096
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Centred X^T X, X^T f, column means of X and of f, accumulated chunk by chunk."""
    n = len(masks)
    mx = masks.mean(0, dtype=np.float64)
    mf = f.mean(0)
    xtx = np.zeros((masks.shape[1], masks.shape[1]))
    xtf = np.zeros((masks.shape[1], f.shape[1]))
    for start in range(0, n, chunk):
        xc = masks[start : start + chunk].astype(np.float64) - mx
        xtx += xc.T @ xc
        xtf += xc.T @ (f[start : start + chunk] - mf)
    return xtx, xtf, mx, mf


def ridge(
    task: Task, budget: int, p: float, seed: bytes, progress: Progress | None = None
) -> AttributionResult:
    """Ridge datamodels with a per-target lambda chosen on held-out samples (module doc)."""
    _min_budget("ridge", budget, 10, "a held-out fifth must have at least 2 samples")
    masks, f = train_samples(task, budget, p, seed, "attribution", progress)
    n_fit = budget - max(2, int(HOLDOUT * budget))
    xtx, xtf, mx, mf = _gram(masks[:n_fit], f[:n_fit])
    evals, evecs = np.linalg.eigh(xtx)
    proj = evecs.T @ xtf  # (N, Z)
    held = (masks[n_fit:].astype(np.float64) - mx) @ evecs  # (M, N)
    target = f[n_fit:] - mf
    errors = np.stack(
        [
            np.mean((held @ (proj / (evals + lam)[:, None]) - target) ** 2, axis=0)
            for lam in RIDGE_GRID
        ]
    )  # (grid, Z)
    lam = RIDGE_GRID[np.argmin(errors, axis=0)]  # per target
    xtx, xtf, mx, mf = _gram(masks, f)
    evals, evecs = np.linalg.eigh(xtx)
    proj = evecs.T @ xtf
    w = (evecs @ (proj / (evals[:, None] + lam[None, :]))).T  # (Z, N)
    intercept = mf - w @ mx
    return AttributionResult(
        "ridge",
        Datamodel(intercept, w),
        budget,
        {"lambda": lam.tolist(), "held_out": budget - n_fit},
    )


def lasso(
    task: Task, budget: int, p: float, seed: bytes, progress: Progress | None = None
) -> AttributionResult:
    """LASSO datamodels, alpha shared across targets, chosen on held-out samples (module doc)."""
    from sklearn.linear_model import Lasso

    _min_budget("lasso", budget, 10, "a held-out fifth must have at least 2 samples")
    masks, f = train_samples(task, budget, p, seed, "attribution", progress)
    n_fit = budget - max(2, int(HOLDOUT * budget))
    x = masks.astype(np.float64)
    best, best_err = LASSO_GRID[0], np.inf
    for alpha in LASSO_GRID:
        model = Lasso(alpha=alpha, max_iter=5000, tol=1e-4).fit(x[:n_fit], f[:n_fit])
        err = float(np.mean((model.predict(x[n_fit:]).reshape(-1, f.shape[1]) - f[n_fit:]) ** 2))
        if err < best_err:
            best, best_err = alpha, err
    model = Lasso(alpha=best, max_iter=5000, tol=1e-4).fit(x, f)
    w = np.atleast_2d(model.coef_)
    intercept = np.atleast_1d(model.intercept_).astype(np.float64)
    return AttributionResult("lasso", Datamodel(intercept, w), budget, {"alpha": float(best)})


def loo(
    task: Task, budget: int, p: float, seed: bytes, progress: Progress | None = None
) -> AttributionResult:
    """Leave-one-out (module doc): exactly N + 1 trainings."""
    n = task.n_train
    _min_budget("loo", budget, n + 1, f"one training per example plus the full pool, N = {n}")
    masks = np.ones((n + 1, n), dtype=bool)
    masks[np.arange(1, n + 1), np.arange(n)] = False
    seeds = np.repeat(training_seeds(seed, range(1), domain="loo-seed"), n + 1)
    f = current_executor().run(task, masks, seeds, progress).values
    w = (f[0][None, :] - f[1:]).T
    return AttributionResult(
        "loo", Datamodel(f[0] - w.sum(1), w), n + 1,
        {"note": "leave-one-out estimates the local effect at the full pool, not Phi"},
    )  # fmt: skip
