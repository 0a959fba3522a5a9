"""TRAK (Park et al. 2023) through MadryLab's ``traker``: scores from projected gradients of
checkpoints trained on the task's own engine, calibrated into a datamodel.

For checkpoints theta_1 .. theta_K (each fitted on a subset x_k ~ B_subset, see
:mod:`prover_service.attribution.checkpoints`) TRAK computes, per checkpoint, the projected
per-example gradients of the model output (the margin log p / (1 - p) of the correct class),
Phi_k = P^T grad f (N, d) on the pool and phi_k (Z, d) on the targets, and the score ::

    tau(z)_i = mean_k [phi_k(z) (Phi_k^T Phi_k + lambda I)^-1 Phi_k^T]_i  *  mean_k Q_k,i

with Q the out-to-loss term 1 - p_i. ``traker.TRAKer`` does all of it (its CPU
``BasicProjector``, Gaussian, seeded by ``projector_seed``; float32; a temporary save folder).
The scores (N, Z) are transposed to (Z, N) and calibrated
(:func:`prover_service.attribution.calibration.calibrate`): M trainings fit each target's scale
and intercept. Cost: K + M = budget trainings.

Settings (``trak:checkpoints=32,proj_dim=128``): ``checkpoints`` K (default 32), ``proj_dim``
d (default 128), ``lambda_reg`` (default 0), ``subset`` the checkpoints' inclusion probability
(default 0.5), ``calibration`` M (default budget - K), ``projector_seed`` (default 0). The
defaults are measured (mean LDS on fresh half-subsets, 64 calibration trainings): K = 32 with
d = 128 / 256 / 2048 gave 0.74 / 0.73 / 0.11 on digits-logreg (128 fresh subsets: 0.48 / 0.45
on digits-mlp); K = 16 gave 0.71 (d = 256, logreg), K = 64 gave 0.47 (d = 256, mlp). traker's
own default d = 2048 exceeds what 1,497 pool examples can fit.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from typing import Any

import numpy as np

from protocol.errors import InvalidParameterError
from protocol.tasks import Task
from prover_service.attribution.base import AttributionResult, Progress
from prover_service.attribution.checkpoints import (
    calibrated_result,
    model_view,
    split_budget,
    train_checkpoints,
)

__all__ = ["trak", "trak_scores"]

BATCH = 256


def _require_traker() -> Any:
    try:
        import trak
        import trak.traker
    except ImportError:
        raise InvalidParameterError(
            "method 'trak' needs MadryLab's traker: pip install '.[trak]'"
        ) from None
    # traker draws tqdm bars on stderr in finalize_*; a service has no terminal for them.
    if not isinstance(trak.traker.tqdm, functools.partial):
        trak.traker.tqdm = functools.partial(trak.traker.tqdm, disable=True)
    return trak


def trak_scores(
    task: Task,
    thetas: Any,
    proj_dim: int,
    lambda_reg: float,
    projector_seed: int,
) -> np.ndarray:
    """TRAK scores (Z, N) of the checkpoints ``thetas`` (P, K) through ``traker.TRAKer``."""
    trak = _require_traker()
    _, view = model_view(task, "trak")
    x, y = view.pool
    xt, yt = view.targets
    with tempfile.TemporaryDirectory(prefix="vda-trak-") as tmp:
        traker = trak.TRAKer(
            model=view.module, task="image_classification", train_set_size=task.n_train,
            save_dir=tmp, load_from_save_dir=True, device="cpu", proj_dim=proj_dim,
            use_half_precision=False, projector_seed=projector_seed, lambda_reg=lambda_reg,
            logging_level=logging.WARNING,
        )  # fmt: skip
        states = [view.state_dict(thetas[:, k]) for k in range(thetas.shape[1])]
        for k, state in enumerate(states):
            traker.load_checkpoint(state, model_id=k)
            for start in range(0, len(x), BATCH):
                batch = (x[start : start + BATCH], y[start : start + BATCH])
                traker.featurize(batch=batch, num_samples=len(batch[0]))
        traker.finalize_features()
        for k, state in enumerate(states):
            traker.start_scoring_checkpoint(
                exp_name="targets", checkpoint=state, model_id=k, num_targets=len(xt)
            )
            for start in range(0, len(xt), BATCH):
                batch = (xt[start : start + BATCH], yt[start : start + BATCH])
                traker.score(batch=batch, num_samples=len(batch[0]))
        scores = np.array(traker.finalize_scores(exp_name="targets"), dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise InvalidParameterError(
            f"TRAK gave non-finite scores (proj_dim={proj_dim}, lambda_reg={lambda_reg}): "
            "Phi^T Phi is singular; lower proj_dim or raise lambda_reg"
        )
    return np.ascontiguousarray(scores.T)


def trak(
    task: Task,
    budget: int,
    p: float,
    seed: bytes,
    progress: Progress | None = None,
    checkpoints: int = 32,
    proj_dim: int = 128,
    lambda_reg: float = 0.0,
    subset: float = 0.5,
    calibration: int | None = None,
    projector_seed: int = 0,
) -> AttributionResult:
    """TRAK with K checkpoints and M calibration trainings, K + M = budget (module doc)."""
    _require_traker()
    if not isinstance(proj_dim, int) or proj_dim < 1 or proj_dim % 8:
        raise InvalidParameterError(f"trak: proj_dim must be a multiple of 8, >= 8; got {proj_dim}")
    if not isinstance(lambda_reg, int | float) or not lambda_reg >= 0:
        raise InvalidParameterError(f"trak: lambda_reg must be a number >= 0; got {lambda_reg}")
    if not isinstance(projector_seed, int) or projector_seed < 0:
        raise InvalidParameterError("trak: projector_seed must be an integer >= 0")
    n_cal = split_budget("trak", budget, checkpoints, calibration, subset)
    ext, _ = model_view(task, "trak")
    thetas = train_checkpoints(task, ext, checkpoints, subset, seed, "trak-checkpoint",
                               progress, budget)  # fmt: skip
    scores = trak_scores(task, thetas, proj_dim, float(lambda_reg), projector_seed)
    settings = {
        "checkpoints": checkpoints,
        "proj_dim": proj_dim,
        "lambda_reg": lambda_reg,
        "subset": subset,
        "calibration": n_cal,
        "projector_seed": projector_seed,
        "projector": "BasicProjector (normal)",
        "model_output": "image_classification",
    }
    return calibrated_result("trak", "traker", task, scores, budget, checkpoints, p, seed,
                             progress, settings)  # fmt: skip
