"""The witness check: the Prover's parameters certify its values, one gradient pass per subset.

For a certifiable task (:mod:`protocol.tasks.certifiable`; L_S mu-strongly convex, f(S) the
outputs at the exact optimum theta*(S), output z L_z-Lipschitz in the parameters), the Prover
returns theta(S) for every subset S of E (the *witness*, bound into its signed response). For
each subset it checks, the Verifier (:func:`check_witnesses`):

1. computes gamma >= ||grad L_S(theta)|| in float64, its own rounding included;
2. bounds ||theta - theta*(S)|| <= gamma / mu (strong convexity: mu ||a - b||^2 <=
   <grad L(a) - grad L(b), a - b>, with grad L(theta*) = 0), and each output's distance to the
   true f_z(S): tau_z = L_z gamma / mu + (rounding of the output itself);
3. takes the values from theta itself (f(theta), computed here), so a Prover's values are
   never trusted; a reported value differing from f(theta) by more than its tau (plus the
   output's rounding, the Prover's own) is a rejection, and so is a subset whose largest
   tau exceeds the ``limit`` the challenge states.

A rejection names the subset and its gradient norm; :class:`WitnessRejectedError` (abort
reason ``witness_rejected``) carries the first. The per-value tau (|E|, Z) goes to
:func:`protocol.certificate.certify`, whose tau_slack then charges each value its own bound;
all values are checked, so no corruption slack remains (m* = 0).

:func:`witness_limit` is the limit a Verifier states by default: the largest per-value tau
whose charge in the certificate cannot exceed ``share`` (1 %) of epsilon, whatever the values:
the charge is at most sum_l |a_l| (2 tau R + 3 tau^2) with R = 2 b the largest |f - g| the
certificate allows (module doc of :mod:`protocol.certificate`, part 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from protocol.checks import as_mask_matrix
from protocol.errors import InvalidParameterError, ShapeError, WitnessRejectedError
from protocol.residual import linear_weights
from protocol.tasks.certifiable import Certifiable, gradient_norm_bounds, output_errors

__all__ = [
    "Rejection",
    "WitnessCheck",
    "WitnessRejectedError",
    "check_witnesses",
    "witness_limit",
]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Rejection:
    """One rejected subset: its index in E, its gradient norm bound, its largest per-value
    bound, and why (``limit``: the bound exceeds the challenge's limit; ``values``: a reported
    value is not the witness's output)."""

    subset: int
    gradient_norm: float
    bound: float
    why: str

    def sentence(self, limit: float) -> str:
        """The abort's detail."""
        if self.why == "values":
            return (
                f"subset {self.subset}: the reported values are not the outputs of its witness "
                f"(gradient norm {self.gradient_norm:.3g}, bound {self.bound:.3g})"
            )
        return (
            f"subset {self.subset}: gradient norm {self.gradient_norm:.3g} bounds its values "
            f"only within {self.bound:.3g}, above the challenge's limit {limit:.3g}"
        )


@dataclass(frozen=True)
class WitnessCheck:
    """The check's result on the subsets ``indices`` of E.

    ``values`` (K, Z): f(theta) computed here; ``tau`` (K, Z): |values - f(theta*)| bounds;
    ``gradient_norms`` (K,); ``distance`` (K,) = gradient_norms / mu; ``rejected``: the failed
    subsets; ``gradient_passes``: passes over a subset's data spent (one per subset)."""

    indices: NDArray[np.int64]
    values: FloatArray
    tau: FloatArray
    gradient_norms: FloatArray
    distance: FloatArray
    rejected: tuple[Rejection, ...]
    limit: float
    gradient_passes: int

    def raise_for_rejection(self) -> None:
        """:class:`WitnessRejectedError` naming the first rejected subset, if any."""
        if self.rejected:
            more = f" ({len(self.rejected)} subsets rejected)" if len(self.rejected) > 1 else ""
            raise WitnessRejectedError(self.rejected[0].sentence(self.limit) + more)


def check_witnesses(
    cert: Certifiable,
    theta: FloatArray,
    masks: NDArray[np.bool_],
    reported: FloatArray,
    limit: float,
    *,
    indices: NDArray[np.int64] | None = None,
    chunk: int = 256,
) -> WitnessCheck:
    """Check the witnesses theta (K, P) of K subsets (masks (K, N)) against the reported values
    (K, Z) under the per-value ``limit`` (module doc). ``indices``: the subsets' places in E
    (default 0..K-1), used to name rejections."""
    if not (isinstance(limit, int | float) and math.isfinite(limit) and limit > 0):
        raise InvalidParameterError(f"the witness limit must be finite and > 0; got {limit!r}")
    t = np.asarray(theta)
    if t.ndim != 2 or t.shape[1] != cert.n_params or t.dtype != np.float64:
        raise ShapeError(f"witnesses of shape {t.shape} ({t.dtype}); need (K, {cert.n_params}) f8")
    m = as_mask_matrix(masks, masks.shape[1] if masks.ndim == 2 else 0)
    rep = np.asarray(reported, dtype=np.float64)
    k = len(t)
    if len(m) != k or rep.ndim != 2 or len(rep) != k:
        raise ShapeError(f"{k} witnesses, {len(m)} masks, values of shape {rep.shape}")
    idx = np.arange(k, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    lips = np.asarray(cert.output_lipschitz(), dtype=np.float64)
    if lips.shape != (rep.shape[1],) or not np.all(np.isfinite(lips) & (lips >= 0)):
        raise ShapeError(f"output_lipschitz() of shape {lips.shape}; need ({rep.shape[1]},) >= 0")
    finite: NDArray[np.bool_] = np.asarray(np.isfinite(t).all(axis=1))
    safe = np.where(finite[:, None], t, 0.0)
    gamma = np.empty(k)
    values = np.empty_like(rep)
    out_err = np.empty_like(rep)
    for lo in range(0, k, chunk):
        hi = min(lo + chunk, k)
        gamma[lo:hi] = gradient_norm_bounds(cert, safe[lo:hi], m[lo:hi])
        values[lo:hi] = np.asarray(cert.outputs(safe[lo:hi]), dtype=np.float64)
        out_err[lo:hi] = output_errors(cert, safe[lo:hi], (hi - lo, rep.shape[1]))
    gamma = np.where(finite, gamma, np.inf)
    distance = gamma / float(cert.mu)
    with np.errstate(invalid="ignore"):
        tau = lips[None, :] * distance[:, None] + out_err
    tau = np.where(np.isfinite(tau), tau, np.inf)
    worst = tau.max(axis=1, initial=0.0)
    disagree: NDArray[np.bool_] = np.asarray(~(np.abs(rep - values) <= tau + out_err).all(axis=1))
    rejected = tuple(
        Rejection(
            int(idx[i]), float(gamma[i]), float(worst[i]), "values" if disagree[i] else "limit"
        )  # fmt: skip
        for i in np.flatnonzero(disagree | ~(worst <= limit))
    )
    return WitnessCheck(idx, values, tau, gamma, distance, rejected, float(limit), k)


def witness_limit(
    epsilon: float, bound: float, rhos: tuple[float, ...] | list[float], share: float = 0.01
) -> float:
    """The per-value bound whose certificate charge is <= ``share`` * epsilon (module doc):
    the root tau of sum|a| (4 b tau + 3 tau^2) = share * epsilon."""
    if not (epsilon > 0 and bound > 0 and 0 < share < 1):
        raise InvalidParameterError("need epsilon > 0, bound > 0 and 0 < share < 1")
    a = float(np.abs(linear_weights(np.asarray(rhos, dtype=np.float64))).sum())
    c = share * epsilon / a  # the root of 3 tau^2 + 4 b tau - c = 0, without cancellation
    return float(2.0 * c / (4.0 * bound + math.sqrt(16.0 * bound * bound + 12.0 * c)))
