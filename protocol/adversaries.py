"""Strategic corruption of reported values against the error-gap estimator (PROTOCOL.md section 7).

The design and the estimator are public; only the spot-check set C is secret. A cheating
Prover holding a datamodel g with err(g) > epsilon reports honest f except on ``count``
subsets, chosen to push the estimate of c_0 + c_1 = sum_l a_l mean(psi_l) down, with
psi = r(x) r(x'), r = f - g. Every function here is pure: honest values in, corrupted copy
out. Corrupted values stay inside [-b, b] (a range check would catch anything else).

* :func:`corrupt_extreme` (issue 10's case a): for every subset, the value in {-b, +b} that
  moves a_l psi down the most (per target), and its gain sum_targets a_l (psi_old - psi_new);
  the ``count`` subsets with the largest gain are corrupted, at most one per pair (so each
  gain is exact). It concentrates on the high-leverage level rho0 (|a_1| = 2 / rho0) and on
  pairs whose partner has a large |r|.
* :func:`corrupt_quiet` (case b): the same choice of subsets, but each new value makes psi
  equal to the level's ``quantile`` of the honest psi on the side that helps (low for
  a_l > 0), so no reported value is extreme and the sample variance *drops* (the largest
  honest products are removed). Against a trimmed mean this realises the order-statistics
  bound: m values leave the top of the band and re-enter at its bottom.
* The best ``count`` given k secret spot-checks (case c) is a trade-off the caller computes:
  P(accept) = P(all k checks miss) x P(the estimate passes | count); the benchmark scans it
  (``benchmarks/soundness.py``) with :func:`protocol.certificate.pass_probability`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from protocol.checks import as_finite_matrix, check_positive
from protocol.errors import InvalidParameterError
from protocol.residual import StabilityDesign, linear_weights, noise_stability

__all__ = ["corrupt_extreme", "corrupt_quiet", "corruption_gains"]

FloatArray = NDArray[np.float64]


def _pairs(
    values: FloatArray, predictions: FloatArray, design: StabilityDesign
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    if getattr(design, "layout", "pairs") != "pairs":
        raise InvalidParameterError("the adversaries target the pair layout (ChallengeDesign)")
    f = as_finite_matrix("values", values, (None, None))
    g = as_finite_matrix("predictions", predictions, f.shape)
    st = noise_stability(f - g, design)
    a = linear_weights(st.rhos)
    return f, g, a, st.rhos


def _level_of_row(design: StabilityDesign, n_rows: int) -> NDArray[np.int64]:
    n = int(design.pairs_per_level)
    return np.arange(n_rows, dtype=np.int64) // (2 * n)


def corruption_gains(
    values: FloatArray,
    predictions: FloatArray,
    design: StabilityDesign,
    new_values: FloatArray,
) -> FloatArray:
    """Gain (|E|,) of replacing row e alone by ``new_values[e]``: sum_z a_l (psi_old - psi_new)."""
    f, g, a, _ = _pairs(values, predictions, design)
    r = f - g
    partner = np.arange(len(f)) ^ 1
    level = _level_of_row(design, len(f))
    r_new = new_values - g
    d_psi = (r - r_new) * r[partner]
    return np.asarray(a[level] * d_psi.sum(axis=1))


def _select(gain: FloatArray, count: int) -> NDArray[np.int64]:
    """Rows with the largest positive gain, at most one per pair."""
    pair_best = np.maximum(gain[0::2], gain[1::2])
    member = np.where(gain[0::2] >= gain[1::2], 0, 1)
    order = np.argsort(-pair_best, kind="stable")[:count]
    order = order[pair_best[order] > 0]
    return np.asarray(2 * order + member[order], dtype=np.int64)


def _check_count(count: int, n_rows: int) -> int:
    if not isinstance(count, int | np.integer) or not 0 <= count <= n_rows // 2:
        raise InvalidParameterError(f"count must be an integer in [0, |E|/2]; got {count!r}")
    return int(count)


def corrupt_extreme(
    values: FloatArray,
    predictions: FloatArray,
    design: StabilityDesign,
    count: int,
    *,
    bound: float,
) -> FloatArray:
    """Replace ``count`` values by +-b where a_l psi falls most (module doc), (|E|, Z)."""
    f, g, a, _ = _pairs(values, predictions, design)
    b = check_positive("bound", bound)
    count = _check_count(count, len(f))
    r = f - g
    partner = np.arange(len(f)) ^ 1
    level = _level_of_row(design, len(f))
    # per row and target: a_l psi_new for v = +b and v = -b; keep the smaller.
    sgn = a[level][:, None] * r[partner]
    candidate = np.where(sgn > 0, -b, b)  # a_l (v - g) r' smallest
    gain = corruption_gains(f, g, design, candidate)
    rows = _select(gain, count)
    out = f.copy()
    out[rows] = candidate[rows]
    return out


def corrupt_quiet(
    values: FloatArray,
    predictions: FloatArray,
    design: StabilityDesign,
    count: int,
    *,
    bound: float,
    quantile: float = 0.25,
) -> FloatArray:
    """Replace ``count`` values so that psi sits at a moderate quantile of its level (doc)."""
    f, g, a, rhos = _pairs(values, predictions, design)
    b = check_positive("bound", bound)
    if not 0.0 <= quantile <= 0.5:
        raise InvalidParameterError(f"quantile must lie in [0, 1/2]; got {quantile!r}")
    count = _check_count(count, len(f))
    r = f - g
    n = int(design.pairs_per_level)
    psi = (r[0::2] * r[1::2]).reshape(len(rhos), n, -1)
    low = np.quantile(psi, quantile, axis=1)  # (L, Z)
    high = np.quantile(psi, 1.0 - quantile, axis=1)
    level = _level_of_row(design, len(f))
    target = np.where((a >= 0)[:, None], low, high)[level]  # (|E|, Z) psi to aim at
    partner = np.arange(len(f)) ^ 1
    rp = r[partner]
    safe = np.where(np.abs(rp) > 1e-12, rp, 1.0)
    candidate = np.where(np.abs(rp) > 1e-12, np.clip(g + target / safe, -b, b), f)
    gain = corruption_gains(f, g, design, candidate)
    rows = _select(gain, count)
    out = f.copy()
    out[rows] = candidate[rows]
    return out
