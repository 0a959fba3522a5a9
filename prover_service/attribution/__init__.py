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
``trak``           TRAK (Park et al. 2023) through MadryLab's ``traker`` (extra ``trak``)
``dattri-if``      influence functions through dattri's attributors (extra ``dattri``)
=================  ======================================================================

A method may carry settings, as a task reference does: ``trak:checkpoints=32,proj_dim=256``
(:func:`prover_service.attribution.checkpoints.parse_method`); each is a keyword of the
method's function, and an unknown one is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

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
from prover_service.attribution.checkpoints import check_settings, parse_method
from prover_service.attribution.dattri_methods import dattri_if
from prover_service.attribution.daunce import daunce, daunce_blackbox
from prover_service.attribution.regression import influence, lasso, loo, ridge
from prover_service.attribution.trak import trak

__all__ = [
    "AttributionResult",
    "Method",
    "attribute",
    "calibrate",
    "check_method",
    "daunce",
    "dattri_if",
    "daunce_blackbox",
    "import_scores",
    "influence",
    "lasso",
    "load_scores",
    "loo",
    "ridge",
    "trak",
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
    TRAK = "trak"
    DATTRI_IF = "dattri-if"


_SAMPLED: dict[Method, Callable[..., AttributionResult]] = {
    Method.INFLUENCE: influence,
    Method.RIDGE: ridge,
    Method.LASSO: lasso,
    Method.LOO: loo,
    Method.DAUNCE: daunce,
    Method.DAUNCE_BLACKBOX: daunce_blackbox,
    Method.TRAK: trak,
    Method.DATTRI_IF: dattri_if,
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
    checked before any training. A method may carry settings (module doc)."""
    m, options = check_method(method)
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
    return _SAMPLED[m](task, budget, p, seed, progress, **options)


def check_method(method: str) -> tuple[Method, dict[str, Any]]:
    """Parse a method reference (``ridge``, ``trak:checkpoints=32,proj_dim=128``) and check its
    name and the names of its settings, before any training; the method and its settings."""
    name, options = parse_method(method)
    try:
        m = Method(name)
    except ValueError:
        known = ", ".join(x.value for x in Method)
        raise InvalidParameterError(f"unknown method {name!r}; choose one of {known}") from None
    if m is Method.IMPORT:
        if options:
            raise InvalidParameterError("method 'import' takes no settings")
    else:
        check_settings(m.value, _SAMPLED[m], options)
    return m, options
