"""The witness route's check on arrays in hand, and its decision: pure, so that the session and
the transcript audit (:mod:`protocol.transcript`) run the same code.

For a certifiable task (:mod:`protocol.tasks.certifiable`) the challenge states a per-value
``witness_limit`` and the Prover returns theta(S) for every subset, bound into its signed
response. :func:`witness_ref` checks the response's reference to it (before anything is
downloaded); :func:`route_from_arrays` checks every subset
(:func:`protocol.witness.check_witnesses`: gradient norm, per-value bound, values recomputed
from theta) and returns what the certificate needs: the Verifier's own values f(theta), the
per-value tau (|E|, Z), the rejections, and the cost (CPU seconds, gradient passes, bytes).
:func:`witness_certificate` certifies with m* = 0 (every subset was checked) and that tau;
:func:`witness_decision` is the verdict, an abort ``witness_rejected`` naming the first
rejected subset and its gradient norm.

The download itself is the Verifier's (``verifier_client.witness.check_route``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from protocol.certificate import Certificate
from protocol.datamodel import Datamodel
from protocol.decision import Decision, abort_decision, certify_challenge, decide
from protocol.errors import BadResponseError, InvalidParameterError, WitnessRejectedError
from protocol.messages import ArrayRef, Challenge, ResponseManifest
from protocol.sampling import ChallengeDesign, SharedBaseDesign
from protocol.tasks import TaskBase
from protocol.tasks.certifiable import certifiable_of
from protocol.witness import Rejection, WitnessCheck, check_witnesses

__all__ = [
    "WitnessRoute",
    "design_masks",
    "route_from_arrays",
    "witness_certificate",
    "witness_decision",
    "witness_ref",
]

Design = ChallengeDesign | SharedBaseDesign


@dataclass(frozen=True)
class WitnessRoute:
    """The checked witnesses of one response (module doc).

    ``values`` (|E|, Z): f(theta) computed here; ``tau`` (|E|, Z): each value's bound;
    ``rejected``: the failed subsets; ``cpu_seconds``: the Verifier's CPU time in the check
    (process time); ``gradient_passes``: one per subset; ``witness_bytes``: as downloaded."""

    values: NDArray[np.float64]
    tau: NDArray[np.float64]
    rejected: tuple[Rejection, ...]
    limit: float
    cpu_seconds: float
    gradient_passes: int
    witness_bytes: int
    check: WitnessCheck

    def figures(self) -> dict[str, float]:
        """Scalars for the signed verdict."""
        return {
            "witness_limit": self.limit,
            "witness_max_tau": float(self.tau.max(initial=0.0)),
            "witness_rejected": float(len(self.rejected)),
            "witness_gradient_passes": float(self.gradient_passes),
            "witness_cpu_s": round(self.cpu_seconds, 4),
            "witness_bytes": float(self.witness_bytes),
        }


def witness_ref(
    challenge: Challenge, manifest: ResponseManifest, task: TaskBase, n_subsets: int
) -> ArrayRef:
    """The response's reference to its witness, checked before anything is downloaded.

    A task without the extension, or a challenge that asked for no witness, is the user's
    error (:class:`InvalidParameterError`); a response without a witness, or one of the wrong
    shape or dtype (need ``<f8`` (|E|, n_params)), is the Prover's (:class:`BadResponseError`)."""
    cert = certifiable_of(task)
    if cert is None:
        raise InvalidParameterError(f"task {task.name!r} is not certifiable: no witness route")
    if challenge.witness_limit is None:
        raise InvalidParameterError("the challenge asked for no witness (witness_limit)")
    ref = manifest.witness
    want = (n_subsets, int(cert.n_params))
    if ref is None:
        raise BadResponseError("the response carries no witness, though the challenge asked")
    if ref.dtype != "<f8" or tuple(ref.shape) != want:
        raise BadResponseError(f"witness of {ref.dtype} {tuple(ref.shape)}; need <f8 {want}")
    return ref


def route_from_arrays(
    challenge: Challenge, task: TaskBase, design: Design, theta: NDArray[np.float64],
    reported: NDArray[np.float64], witness_bytes: int,
) -> WitnessRoute:  # fmt: skip
    """The check on arrays already in hand (the session's download, or an audit's transcript):
    ``theta`` (|E|, n_params) float64, ``reported`` (|E|, Z) the response's values."""
    cert = certifiable_of(task)
    if cert is None or challenge.witness_limit is None:
        raise InvalidParameterError(f"task {task.name!r} or its challenge has no witness route")
    t0 = time.process_time()
    check = check_witnesses(cert, theta, design_masks(design), reported, challenge.witness_limit)
    cpu = time.process_time() - t0
    return WitnessRoute(check.values, check.tau, check.rejected, check.limit, cpu,
                        check.gradient_passes, witness_bytes, check)  # fmt: skip


def design_masks(design: Design) -> NDArray[np.bool_]:
    """Every subset's mask, (|E|, N), in design order."""
    masks = getattr(design, "masks", None)
    if not callable(masks):
        raise InvalidParameterError("the design draws no masks")
    return np.asarray(masks(), dtype=bool)


def witness_certificate(
    challenge: Challenge, task: TaskBase, model: Datamodel, design: Design, route: WitnessRoute
) -> Certificate:
    """The certificate on the Verifier's own values f(theta): m* = 0 (every subset checked)
    and each value charged its own tau (:func:`protocol.decision.certify_challenge`)."""
    return certify_challenge(challenge, task.bound, model, design, route.values, (),
                             trusted_tau=route.tau)  # fmt: skip


def witness_decision(
    challenge: Challenge, task: TaskBase, model: Datamodel, design: Design, route: WitnessRoute
) -> Decision:
    """Abort ``witness_rejected`` if any subset failed, else the certificate's verdict."""
    figures = route.figures()
    try:
        route.check.raise_for_rejection()
    except WitnessRejectedError as exc:
        return abort_decision(exc, epsilon=challenge.epsilon, delta=challenge.delta,
                              extra=figures)  # fmt: skip
    cert = witness_certificate(challenge, task, model, design, route)
    return decide(epsilon=challenge.epsilon, delta=challenge.delta, certificate=cert, spot=None,
                  extra=figures)  # fmt: skip
