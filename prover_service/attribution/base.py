"""What every attribution method shares: the result type and the training of sampled subsets.

Trainings run on the current executor (:func:`prover_service.executor.current_executor`: the
job's, set by the job lane, else local), with the same rows, seeds and chunks on every executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protocol.checks import check_probability
from protocol.datamodel import Datamodel
from protocol.evaluation import Progress as Progress
from protocol.sampling import sample_masks, training_seeds
from protocol.tasks import Task
from prover_service.executor import current_executor

__all__ = ["AttributionResult", "Progress", "train_samples"]


@dataclass(frozen=True)
class AttributionResult:
    """A datamodel, the method that made it, and the trainings it cost (by kind)."""

    method: str
    datamodel: Datamodel
    trainings: int
    details: dict[str, Any] = field(default_factory=dict)


def train_samples(
    task: Task,
    count: int,
    p: float,
    seed: bytes,
    domain: str,
    progress: Progress | None = None,
    offset: int = 0,
    total: int | None = None,
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """``count`` subsets x ~ B_p (stream ``domain``) trained with their own seeds: masks, f.

    Progress is reported as (offset + done, total) so a method can chain several stages.
    """
    check_probability("p", p)
    masks = sample_masks(seed, task.n_train, p, range(count), domain=domain)
    seeds = training_seeds(seed, range(count), domain=f"{domain}-seed")
    run = current_executor().run
    values = run(task, masks, seeds, progress, offset=offset, total=total).values
    return masks, values
