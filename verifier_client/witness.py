"""The Verifier's witness route: every subset of E checked by one gradient pass, no retraining.

For a certifiable task (:mod:`protocol.tasks.certifiable`) the challenge states a per-value
``witness_limit`` and the Prover returns theta(S) for every subset, bound into its signed
response. :func:`check_route` downloads the witness, checks every subset
(:func:`protocol.witness.check_witnesses`: gradient norm, per-value bound, values recomputed from
theta) and returns what the certificate needs: the Verifier's own values f(theta), the
per-value tau (|E|, Z), the rejections, and the cost (CPU seconds, gradient passes, bytes).
:func:`witness_certificate` certifies with m* = 0 (every subset was checked) and that tau;
:func:`witness_decision` is the verdict, an abort ``witness_rejected`` naming the first
rejected subset and its gradient norm.

The session calls these behind ``verify --protocol witness``; they take the objects the session
already holds, so the route can be planned and re-plumbed without touching the check. Only the
download is here: the check and the decision are pure (:mod:`protocol.witness_route`, re-exported
below), so the transcript audit (:mod:`protocol.transcript`) runs the same code.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from protocol.messages import Challenge, ResponseManifest
from protocol.tasks import TaskBase
from protocol.witness_route import (
    Design,
    WitnessRoute,
    design_masks,
    route_from_arrays,
    witness_certificate,
    witness_decision,
    witness_ref,
)
from verifier_client.client import ProverClient

__all__ = [
    "WitnessRoute",
    "check_route",
    "design_masks",
    "route_from_arrays",
    "witness_certificate",
    "witness_decision",
]


def check_route(
    client: ProverClient,
    challenge: Challenge,
    manifest: ResponseManifest,
    task: TaskBase,
    design: Design,
    reported: NDArray[np.float64],
) -> WitnessRoute:
    """Download and check the witness of every subset (module doc).

    A task without the extension is the user's error (:class:`InvalidParameterError`); a
    response without a witness, or one of the wrong shape or dtype, is the Prover's
    (:class:`BadResponseError`), refused before the array is downloaded
    (:func:`protocol.witness_route.witness_ref`)."""
    ref = witness_ref(challenge, manifest, task, len(reported))
    before = client.bytes_received
    theta = np.asarray(client.array(ref), dtype=np.float64)
    return route_from_arrays(challenge, task, design, theta, reported,
                             client.bytes_received - before)  # fmt: skip
