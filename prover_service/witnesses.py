"""The Prover's side of the witness route (:mod:`protocol.witness`).

A challenge with a ``witness_limit`` asks for theta(S) for every subset of E. Each chunk is
solved in this process by the task's certifiable extension (:mod:`protocol.tasks.certifiable`)
until every per-value bound L_z ||grad|| / mu is at most a quarter of the limit (room for the
Verifier's own rounding allowance); the values are the outputs of exactly those parameters, and
the probes are empty (the route compares no fingerprints). The parameters are stored with the
chunk and bound into the signed response as the ``witness`` array.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protocol.tasks import TaskBase
from protocol.tasks.certifiable import Certifiable, certifiable_of
from prover_service.errors import Invalid

__all__ = ["PROVER_SHARE", "WitnessHook", "WitnessOutputs", "require_certifiable", "solve_chunk"]

PROVER_SHARE = 0.25  # the Prover aims at this share of the challenge's limit
# An adversary's hook (tests): (theta, values, masks, task, label) -> (theta, values).
WitnessHook = Callable[
    [NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_], TaskBase, str],
    tuple[NDArray[np.float64], NDArray[np.float64]],
]


@dataclass(frozen=True)
class WitnessOutputs:
    """One chunk's witnesses (K, P) float64, values (K, Z) and empty probes (K, 0)."""

    theta: NDArray[np.float64]
    values: NDArray[np.float64]
    probes: NDArray[np.float32]


def require_certifiable(task: TaskBase) -> Certifiable:
    """The task's certifiable extension, or 400 naming the task."""
    cert = certifiable_of(task)
    if cert is None:
        raise Invalid(f"task {task.name!r} is not certifiable: it has no witness route")
    return cert


def solve_chunk(
    task: TaskBase, masks: NDArray[np.bool_], seeds: NDArray[np.uint64], limit: float,
    hook: WitnessHook | None = None, label: str = "",
) -> WitnessOutputs:  # fmt: skip
    """Witnesses and their values for one chunk (module doc)."""
    cert = require_certifiable(task)
    theta = np.ascontiguousarray(
        cert.witnesses(masks, seeds, PROVER_SHARE * limit), dtype=np.float64
    )
    values = np.asarray(cert.outputs(theta), dtype=np.float64)
    if hook is not None:
        theta, values = hook(theta, values, masks, task, label)
    probes: Any = np.zeros((len(theta), 0), dtype=np.float32)
    return WitnessOutputs(theta, values, probes)
