"""The Verifier's decision, pure: results in, :class:`Decision` out (PROTOCOL.md section 4).

Order of the checks, each a reason to abort (:class:`AbortReason`):

1. the response is malformed (shape, non-finite, outside [-b, b]) -> ``bad_response``;
2. any spot-check differs from V's own re-training under CHECKEQUIV -> ``spot_check_mismatch``;
3. the consistency test fails:
   * gap estimator: accept iff gap-hat <= theta;
   * the paper's estimator: accept iff MSE-hat - B-hat_{>=2} <= theta;
   * naive baseline (insecure, fooled by w/2): accept iff MSE-hat <= theta + B-hat_{>=2} is not
     checked at all -- it accepts iff MSE-hat <= ``naive_mse_threshold``;
   -> ``estimate_above_threshold``.

theta = (epsilon + honest_err) / 2 (``protocol.budget``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["AbortReason", "Decision", "decide"]


class AbortReason(StrEnum):
    """Why a verification aborted."""

    BAD_RESPONSE = "bad_response"
    SPOT_CHECK_MISMATCH = "spot_check_mismatch"
    ESTIMATE_ABOVE_THRESHOLD = "estimate_above_threshold"


@dataclass(frozen=True)
class Decision:
    """accept or abort, the reason, every figure it rests on, and advice a user can act on."""

    verdict: str
    reason: str
    figures: dict[str, float] = field(default_factory=dict)
    detail: str = ""


def decide(
    *,
    threshold: float,
    spot_mismatches: int,
    spot_checks: int,
    statistic: float,
    bad_response: str | None = None,
    extra: dict[str, float] | None = None,
    detail: str = "",
) -> Decision:
    """Apply the checks in order (module doc); ``statistic``: gap, MSE - B-hat, or MSE."""
    figures = {
        "threshold": threshold,
        "statistic": statistic,
        "spot_checks": float(spot_checks),
        "spot_mismatches": float(spot_mismatches),
        **(extra or {}),
    }
    if bad_response is not None:
        return Decision("abort", AbortReason.BAD_RESPONSE.value, figures, bad_response)
    if spot_mismatches > 0:
        return Decision("abort", AbortReason.SPOT_CHECK_MISMATCH.value, figures, detail)
    if not statistic <= threshold:
        return Decision("abort", AbortReason.ESTIMATE_ABOVE_THRESHOLD.value, figures)
    return Decision("accept", "passed", figures)
