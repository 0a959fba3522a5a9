"""Attribution methods for the Prover: each turns training runs into a :class:`Datamodel`.

The registry (:class:`Method`, :func:`attribute`) maps a method name to its function; every
function takes the task, a budget of trainings, p, a 32-byte seed and a progress callback and
returns an :class:`AttributionResult` (the datamodel in mask units plus what it cost).

=================  ======================================================================
``influence``      empirical influence (Feldman & Zhang 2020): difference of means
``ridge``          datamodels regression (Ilyas et al. 2022), ridge, lambda on held-out data
``lasso``          the same with an L1 penalty
``loo``            leave-one-out: N + 1 trainings; estimates a *different* quantity
``daunce``         Daunce (Pan et al. 2025): covariance of losses across perturbed fine-tunes
``daunce-blackbox`` Daunce's black-box variant: plain fine-tunes on bootstrap resamples
``import``         scores from any outside tool, calibrated on a few trainings
=================  ======================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from protocol.errors import InvalidParameterError
from protocol.tasks import Task
from prover_service.attribution.base import AttributionResult, Progress
from prover_service.attribution.calibration import (
    LoadedScores,
    ScoreSource,
    calibrate,
    import_scores,
    load_scores,
    read_scores,
)
from prover_service.attribution.daunce import daunce, daunce_blackbox
from prover_service.attribution.regression import influence, lasso, loo, ridge

__all__ = [
    "AttributionResult",
    "Method",
    "attribute",
    "calibrate",
    "daunce",
    "daunce_blackbox",
    "import_scores",
    "influence",
    "lasso",
    "load_scores",
    "loo",
    "ridge",
]


class Method(StrEnum):
    """The attribution methods (module doc)."""

    INFLUENCE = "influence"
    RIDGE = "ridge"
    LASSO = "lasso"
    LOO = "loo"
    DAUNCE = "daunce"
    DAUNCE_BLACKBOX = "daunce-blackbox"
    IMPORT = "import"


_SAMPLED: dict[Method, Callable[..., AttributionResult]] = {
    Method.INFLUENCE: influence,
    Method.RIDGE: ridge,
    Method.LASSO: lasso,
    Method.LOO: loo,
    Method.DAUNCE: daunce,
    Method.DAUNCE_BLACKBOX: daunce_blackbox,
}


def attribute(
    task: Task,
    method: str,
    budget: int,
    p: float = 0.5,
    seed: bytes = bytes(32),
    scores: ScoreSource | LoadedScores | None = None,
    progress: Progress | None = None,
    orientation: str | None = None,
    key: str | None = None,
) -> AttributionResult:
    """Run ``method`` on ``task`` with at most ``budget`` trainings. For ``import``: ``scores``
    (a file or an array, :func:`read_scores`; ``orientation`` and the ``.npz``/``.pt`` ``key``),
    checked before any training."""
    try:
        m = Method(method)
    except ValueError:
        known = ", ".join(x.value for x in Method)
        raise InvalidParameterError(f"unknown method {method!r}; choose one of {known}") from None
    if not isinstance(budget, int) or budget < 1:
        raise InvalidParameterError(
            f"--budget must be a positive number of trainings; got {budget}"
        )
    if m is Method.IMPORT:
        if scores is None:
            raise InvalidParameterError(
                "method 'import' needs --scores FILE (.npy, .npz, .pt, .mmap or .csv)"
            )
        if not isinstance(scores, LoadedScores):
            scores = read_scores(scores, task, orientation, key)
        return import_scores(task, scores, budget, p, seed, progress)
    if scores is not None:
        raise InvalidParameterError("--scores is only for method 'import'")
    return _SAMPLED[m](task, budget, p, seed, progress)
