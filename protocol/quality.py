"""An attribution's quality on fresh held-out subsets: what ``vda-prover attribute`` and
``publish`` report with ``--evaluate N``.

``count`` fresh subsets x ~ B_p (drawn from ``seed`` in their own domain, ``held-out``, so
they are never the subsets an attribution was fitted on, whatever seed that used) are trained
once each; on them, per target z:

- **LDS** (the linear datamodeling score, Ilyas et al. 2022): the Spearman correlation over the
  subsets between g_z(x) and f_z(x) (:meth:`protocol.datamodel.Datamodel.lds`);
- **MSE**: the mean of (f_z(x) - g_z(x))^2, which is err(g) + B_{>=2} (the best linear
  datamodel's MSE) in expectation.

Reported as the mean over targets, with the per-target spread. Where err(g) is known exactly
(a planted task that does not clip: :meth:`protocol.tasks.planted.PlantedTask.err`) it is
reported too, so an estimate can be set beside the truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.datamodel import Datamodel
from protocol.errors import InvalidParameterError, ShapeError
from protocol.evaluation import Progress, run_task
from protocol.sampling import sample_masks, training_seeds
from protocol.tasks.base import Task

__all__ = ["Quality", "held_out_quality"]

MIN_HELD_OUT = 3  # Spearman's correlation needs at least three points


@dataclass(frozen=True)
class Quality:
    """LDS and MSE of a datamodel on ``held_out`` fresh subsets (means over the targets; the
    LDS's standard deviation over targets), and ``err`` where it is known exactly (else None)."""

    held_out: int
    p: float
    lds: float
    lds_sd: float
    mse: float
    err: float | None
    seed: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {"held_out": self.held_out, "p": self.p, "lds": self.lds, "lds_sd": self.lds_sd,
                "mse": self.mse, "err": self.err, "seed": self.seed}  # fmt: skip


def _exact_err(task: Task, model: Datamodel, p: float) -> float | None:
    from protocol.tasks.planted import PlantedTask

    if isinstance(task, PlantedTask) and task.bound >= task.supremum:
        return float(task.err(model, p).mean())
    return None


def held_out_quality(
    task: Task,
    model: Datamodel,
    count: int,
    seed: bytes,
    p: float = 0.5,
    progress: Progress | None = None,
) -> Quality:
    """Train ``count`` fresh subsets of B_p (module doc) and score ``model`` on them."""
    if count < MIN_HELD_OUT:
        raise InvalidParameterError(
            f"--evaluate needs at least {MIN_HELD_OUT} subsets; got {count}"
        )
    if not 0 < p < 1:
        raise InvalidParameterError(f"p must lie in (0, 1); got {p}")
    if (model.n_targets, model.n_train) != (task.n_targets, task.n_train):
        raise ShapeError(f"the datamodel is (Z, N) = ({model.n_targets}, {model.n_train}); the "
                         f"task is ({task.n_targets}, {task.n_train})")  # fmt: skip
    masks = sample_masks(seed, task.n_train, p, range(count), domain="held-out")
    seeds = training_seeds(seed, range(count), domain="held-out-seed")
    values = run_task(task, masks, seeds, progress).values
    lds = model.lds(masks, values)
    finite = lds[np.isfinite(lds)]  # a target constant on every subset has no rank correlation
    return Quality(
        held_out=count, p=p,
        lds=float(finite.mean()) if finite.size else math.nan,
        lds_sd=float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        mse=float(model.mse(masks, values).mean()), err=_exact_err(task, model, p),
        seed=seed.hex(),
    )  # fmt: skip
