"""The Verifier's decision, pure: checked results in, :class:`Decision` out.

The session, the audit and any third party call the same functions, so an audit *recomputes*
the decision from the transcript instead of trusting a recorded threshold.

:func:`decide` (the product, docs/protocol.md#certificate), checks in order, each a reason to abort:

1. the response is malformed (shape, non-finite, outside [-b, b]) -> ``bad_response``;
2. a spot-check differs from the Verifier's own re-training under CHECKEQUIV ->
   ``spot_check_mismatch``, with advice (:func:`protocol.checkequiv.explain`);
3. the certificate (:func:`protocol.certificate.certify`) does not certify epsilon:
   ``certified_epsilon > epsilon`` -> ``not_certified``. Otherwise accept. Since
   certified_epsilon is an upper confidence bound on err(g) at level 1 - delta,
   P(accept | err(g) > epsilon) <= delta.

:func:`decide_threshold` is the baselines' rule (the paper's residual estimator, the
non-interactive protocol, the insecure naive one): accept iff a statistic <= a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray

from protocol.certificate import Certificate, certify, checked_groups
from protocol.checkequiv import EquivReport, explain
from protocol.errors import AbortReason, VerificationError

if TYPE_CHECKING:
    from protocol.datamodel import Datamodel
    from protocol.messages import Challenge
    from protocol.sampling import ChallengeDesign, SharedBaseDesign

__all__ = [
    "AbortReason",
    "Decision",
    "abort_decision",
    "certificate_figures",
    "certify_challenge",
    "certify_values",
    "decide",
    "decide_threshold",
]


@dataclass(frozen=True)
class Decision:
    """accept or abort, the reason, every figure it rests on (finite floats only: they are
    signed into the verdict), advice a user can act on, and the certificate when there is one."""

    verdict: Literal["accept", "abort"]
    reason: str
    figures: dict[str, float] = field(default_factory=dict)
    detail: str = ""
    certificate: Certificate | None = None


def certificate_figures(cert: Certificate) -> dict[str, float]:
    """The certificate's scalar parts, as signed into a verdict (non-finite ones left out)."""
    raw = {
        "certified_epsilon": cert.certified_epsilon,
        "point": cert.point,
        "statistical": cert.statistical,
        "corruption": cert.corruption,
        "tau_slack": cert.tau_slack,
        "bias": cert.bias,
        "max_corrupted": float(cert.max_corrupted),
        "trim": float(cert.trim),
    }
    return {k: float(v) for k, v in raw.items() if math.isfinite(v)}


def certify_values(
    values: NDArray[np.float64],
    model: Datamodel,
    design: ChallengeDesign | SharedBaseDesign,
    *,
    delta: float,
    aggregate: Literal["mean", "max"],
    validity: Literal["betting", "clt", "finite"],
    bound: float,
    p: float,
    tau: float | NDArray[np.float64] = 0.0,
    spots: Sequence[int] | None = None,
) -> Certificate:
    """The certificate of values f (|E|, Z) on ``design`` against the committed ``model``: the
    one call of :func:`protocol.certificate.certify` outside the benchmarks, which the session,
    the baselines, the witness route and the transcript audit (:mod:`protocol.transcript`)
    all reach (most through :func:`certify_challenge`).

    ``spots`` None: the values are the Verifier's own (checking alone, tau 0) or each checked
    by its witness (tau per value, (|E|, Z)), so m* = 0. Otherwise the opened spot-check set:
    one that is a union of whole pair-sum groups (the Verifier's default: whole bases)
    certifies with ``checked`` (m* over groups, and the checked groups' own bound), any other
    as uniformly drawn subsets (``spot_checks = |C|``, m* over subsets)."""
    groups, spot_checks = None, None
    if spots is not None:
        groups = checked_groups(design, spots)
        spot_checks = None if groups is not None else len(spots)
    return certify(
        values, model.predict(design.masks()), design, delta=delta, aggregate=aggregate,
        tau=tau, validity=validity, bound=bound, prediction_range=model.output_range(), p=p,
        checked=groups, spot_checks=spot_checks,
    )  # fmt: skip


def certify_challenge(
    challenge: Challenge,
    bound: float,
    model: Datamodel,
    design: ChallengeDesign | SharedBaseDesign,
    values: NDArray[np.float64],
    spots: Sequence[int],
    *,
    trusted_tau: float | NDArray[np.float64] | None = None,
) -> Certificate:
    """The certificate of a challenge's response (:func:`certify_values` at the challenge's
    delta, aggregate, validity, p and tau), from its opened spot-check set ``spots``: the call
    the session, ``vda-verifier audit`` and the Prover's audit page share. ``trusted_tau``
    instead (``spots`` then ignored): the values are trusted, m* = 0, each charged that tau
    rather than the challenge's (the witness route)."""
    return certify_values(
        values, model, design, delta=challenge.delta, aggregate=challenge.aggregate,
        validity=challenge.validity, bound=bound, p=challenge.p,
        tau=challenge.tau if trusted_tau is None else trusted_tau,
        spots=list(spots) if trusted_tau is None else None,
    )  # fmt: skip


def abort_decision(
    error: VerificationError, *, epsilon: float, delta: float, extra: dict[str, float] | None = None
) -> Decision:
    """The abort a peer's misbehaviour earns: ``error.reason`` (an :class:`AbortReason`) with
    the error's sentence as the detail, and only finite figures (the verdict is signed)."""
    figures = {"epsilon": float(epsilon), "delta": float(delta)}
    figures |= {k: float(v) for k, v in (extra or {}).items() if math.isfinite(v)}
    return Decision("abort", AbortReason(error.reason).value, figures, str(error))


def decide(
    *,
    epsilon: float,
    delta: float,
    certificate: Certificate | None,
    spot: EquivReport | None,
    bad_response: str | None = None,
    extra: dict[str, float] | None = None,
) -> Decision:
    """The product's decision (module doc). ``certificate`` may be None only when the response
    was bad or a spot-check failed (it is not computed then)."""
    figures: dict[str, float] = {"epsilon": float(epsilon), "delta": float(delta)}
    if spot is not None:
        figures |= {
            "spot_checks": float(len(spot.match)),
            "spot_mismatches": float(spot.mismatches),
            "spot_max_abs_diff": float(spot.max_abs_diff.max(initial=0.0)),
            "tau": spot.tau,
        }
    figures |= {k: float(v) for k, v in (extra or {}).items() if math.isfinite(v)}
    if bad_response is not None:
        return Decision("abort", AbortReason.BAD_RESPONSE.value, figures, bad_response)
    if spot is not None and not spot.all_match:
        return Decision("abort", AbortReason.SPOT_CHECK_MISMATCH.value, figures, explain(spot))
    if certificate is None:
        raise ValueError("decide needs a certificate once the response and spot-checks pass")
    figures |= certificate_figures(certificate)
    if certificate.accepts(epsilon):
        return Decision("accept", "certified", figures, "", certificate)
    detail = (
        f"certified err <= {certificate.certified_epsilon:.4g} at confidence 1 - {delta:g}, "
        f"above epsilon = {epsilon:g}"
    )
    return Decision("abort", AbortReason.NOT_CERTIFIED.value, figures, detail, certificate)


def decide_threshold(
    *,
    threshold: float,
    statistic: float,
    spot_mismatches: int = 0,
    spot_checks: int = 0,
    bad_response: str | None = None,
    extra: dict[str, float] | None = None,
    detail: str = "",
) -> Decision:
    """The baselines' rule: accept iff ``statistic <= threshold`` (module doc)."""
    figures = {
        "threshold": threshold,
        "spot_checks": float(spot_checks),
        "spot_mismatches": float(spot_mismatches),
        **(extra or {}),
    }
    if math.isfinite(statistic):
        figures["statistic"] = statistic
    figures = {k: float(v) for k, v in figures.items() if math.isfinite(v)}
    if bad_response is not None:
        return Decision("abort", AbortReason.BAD_RESPONSE.value, figures, bad_response)
    if spot_mismatches > 0:
        return Decision("abort", AbortReason.SPOT_CHECK_MISMATCH.value, figures, detail)
    if not statistic <= threshold:
        return Decision("abort", AbortReason.ESTIMATE_ABOVE_THRESHOLD.value, figures)
    return Decision("accept", "passed", figures)
