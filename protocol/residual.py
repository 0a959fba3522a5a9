"""Residual estimation (Saunshi et al. 2022) and the error-gap estimator.

See docs/protocol.md#noise-stability.

**Noise stability.** For pairs (x, x') with x' rho-correlated to x and independent training
seeds, h(rho) = E[f(x) f(x')] = sum_k B_k rho^k. :func:`noise_stability` turns the f-values of
a :class:`~protocol.sampling.ChallengeDesign` into h-hat(rho_l) = mean of f(x) f(x') over the n
pairs of level l, and h-hat(1) = mean of f^2 over all 2 L n entries (every entry is marginally
B_p with its own seed, so this is an unbiased estimate of E[f^2]).

**Residual (the paper's estimator).** Fit c_0 + c_1 rho + c_2 rho^2 with c >= 0 to the points
(rho_l, h-hat(rho_l)) by non-negative least squares and return
``B-hat_{>=2} = h-hat(1) - c_0 - c_1``, with ``B-hat_0 = c_0`` and ``B-hat_1 = c_1``. With the
paper's levels (0, rho0, 2 rho0) the fit interpolates three points, and NNLS only acts when the
interpolant has a negative coefficient.

**Error gap of a committed datamodel.** Subtracting a linear g leaves B_{>=2} unchanged, so for
r = f - g, err(g) = B_0(r) + B_1(r) = c_0(r) + c_1(r). :func:`estimate_gap` runs the same fit on
r's noise stability. r has far less variance than f when g is good (the linear part, usually
most of Var f, is gone), so the estimate is much tighter than MSE-hat - B-hat_{>=2}.
*Valid only if g was fixed before E was drawn*: a g chosen after seeing E could be fit to E's
own samples and make r look smaller there than it is under B_p. In the protocol g is committed
by its content hash before the challenge is sent.

**Confidence intervals** (``ci_low``, ``ci_high``): the unconstrained fit is linear in the h-hat,
``c_0 + c_1 = sum_l a_l h-hat(rho_l)``, so each estimate is a sum over levels of means of
independent per-pair terms psi; its standard error is ``sqrt(sum_l Var(psi_l) / n)`` (a normal
approximation at the requested confidence). To it we add the bias the quadratic cannot see:
``|sum_l a_l R(rho_l)| <= kappa B_{>=3}`` with R(rho) = sum_{k>=3} B_k rho^k and
``kappa = sup_{k>=3} |sum_l a_l rho_l^k|``; B_{>=3} <= B_{>=2} is bounded from the data
(fixed point U = (B-hat + z SE) / (1 - kappa)). Finite-sample bounds for *planning* are in
:mod:`protocol.budget`.

Arrays: ``values`` (|E|, Z) float64 in the design's order; outputs are (Z,) per target.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from protocol.checks import as_finite_matrix, check_probability
from protocol.distributions import nnls, norm
from protocol.errors import InvalidParameterError, ShapeError

__all__ = [
    "GapEstimate",
    "ResidualEstimate",
    "StabilityDesign",
    "StabilityEstimates",
    "bias_coefficient",
    "estimate_gap",
    "estimate_residual",
    "estimate_residual_reference",
    "fit_nonnegative",
    "fit_nonnegative_reference",
    "linear_weights",
    "noise_stability",
]


class StabilityDesign(Protocol):
    """What the estimators need of a design: its layout (``pairs`` or ``shared-base``), the
    levels and n (:data:`protocol.sampling.Design` has them all)."""

    @property
    def layout(self) -> str: ...

    @property
    def rhos(self) -> tuple[float, ...]: ...

    @property
    def pairs_per_level(self) -> int: ...


@dataclass(frozen=True)
class StabilityEstimates:
    """h-hat at each level, (L, Z); h-hat(1), (Z,); and the per-pair products, (L, n, Z)."""

    rhos: NDArray[np.float64]
    h: NDArray[np.float64]
    h1: NDArray[np.float64]
    products: NDArray[np.float64]
    squares: NDArray[np.float64]  # (f_a^2 + f_b^2) per pair, (L, n, Z)


def _design_arrays(design: StabilityDesign, n_rows: int) -> tuple[NDArray[np.float64], int]:
    rhos = np.asarray(design.rhos, dtype=np.float64)
    n = int(design.pairs_per_level)
    if n_rows != 2 * len(rhos) * n:
        raise ShapeError(
            f"the design has {2 * len(rhos) * n} subsets (2 x {len(rhos)} levels x {n} pairs); "
            f"got {n_rows} rows of values"
        )
    return rhos, n


def noise_stability(values: NDArray[np.float64], design: StabilityDesign) -> StabilityEstimates:
    """h-hat(rho_l) per level and h-hat(1), from f-values in the design's order."""
    f = as_finite_matrix("values", values, (None, None))
    rhos, n = _design_arrays(design, f.shape[0])
    z = f.shape[1]
    a = f[0::2].reshape(len(rhos), n, z)
    b = f[1::2].reshape(len(rhos), n, z)
    prod = a * b
    sq = a * a + b * b
    return StabilityEstimates(rhos, prod.mean(axis=1), f.__pow__(2).mean(axis=0), prod, sq)


def _vandermonde(rhos: NDArray[np.float64], degree: int) -> NDArray[np.float64]:
    return np.vander(rhos, degree + 1, increasing=True)


def fit_nonnegative(
    rhos: NDArray[np.float64], h: NDArray[np.float64], degree: int = 2
) -> NDArray[np.float64]:
    """NNLS fit of sum_k c_k rho^k (c >= 0) to (rhos (L,), h (L, Z)) for every target at once.

    Returns c, (degree + 1, Z). Exact active-set enumeration: the NNLS optimum is the least
    squares solution on its support, and every feasible support solution is a feasible point,
    so the best feasible support solution is the optimum. 2^(d+1) small solves, vectorised
    over Z. Requires L >= degree + 1 distinct levels (full column rank).
    """
    rhos = np.asarray(rhos, dtype=np.float64)
    h = as_finite_matrix("h", h, (len(rhos), None))
    if degree < 0 or len(np.unique(rhos)) < degree + 1:
        raise InvalidParameterError(
            f"a degree-{degree} fit needs at least {degree + 1} distinct noise levels"
        )
    a = _vandermonde(rhos, degree)
    best = np.zeros((degree + 1, h.shape[1]))
    best_res = np.sum(h * h, axis=0)  # the empty support: c = 0
    for size in range(1, degree + 2):
        for support in itertools.combinations(range(degree + 1), size):
            cols = list(support)
            sol, *_ = np.linalg.lstsq(a[:, cols], h, rcond=None)
            feasible = np.all(sol >= 0.0, axis=0)
            res = np.sum((a[:, cols] @ sol - h) ** 2, axis=0)
            better = feasible & (res < best_res - 1e-15 * (1.0 + best_res))
            if np.any(better):
                full = np.zeros_like(best)
                full[cols] = sol
                best[:, better] = full[:, better]
                best_res = np.where(better, res, best_res)
    return best


def fit_nonnegative_reference(
    rhos: NDArray[np.float64], h: NDArray[np.float64], degree: int = 2
) -> NDArray[np.float64]:
    """Reference for :func:`fit_nonnegative`: scipy's NNLS, one target at a time."""
    a = _vandermonde(np.asarray(rhos, dtype=np.float64), degree)
    h = np.asarray(h, dtype=np.float64)
    return np.stack([nnls(a, h[:, j])[0] for j in range(h.shape[1])], axis=1)


def _fit(
    rhos: NDArray[np.float64], h: NDArray[np.float64], degree: int, nonnegative: bool
) -> NDArray[np.float64]:
    if nonnegative:
        return fit_nonnegative(rhos, h, degree)
    return np.asarray(np.linalg.lstsq(_vandermonde(rhos, degree), h, rcond=None)[0])


def linear_weights(rhos: NDArray[np.float64], degree: int = 2) -> NDArray[np.float64]:
    """a (L,) with c_0 + c_1 = sum_l a_l h(rho_l) for the unconstrained least-squares fit."""
    a = _vandermonde(np.asarray(rhos, dtype=np.float64), degree)
    e = np.zeros(degree + 1)
    e[:2] = 1.0
    return np.asarray(a @ np.linalg.solve(a.T @ a, e))


def bias_coefficient(rhos: NDArray[np.float64], degree: int = 2) -> float:
    """kappa = sup_{k > degree} |sum_l a_l rho_l^k|: |bias of c_0 + c_1| <= kappa B_{>degree}."""
    rhos = np.asarray(rhos, dtype=np.float64)
    a = linear_weights(rhos, degree)
    ks = np.arange(degree + 1, degree + 400)
    return float(np.max(np.abs((rhos[None, :] ** ks[:, None]) @ a)))


@dataclass(frozen=True)
class ResidualEstimate:
    """Per-target estimates (Z,) of B_0, B_1, B_{>=2}, Var f, with a confidence interval."""

    b0: NDArray[np.float64]
    b1: NDArray[np.float64]
    residual: NDArray[np.float64]
    h1: NDArray[np.float64]
    variance: NDArray[np.float64]
    std_error: NDArray[np.float64]
    bias_bound: NDArray[np.float64]
    ci_low: NDArray[np.float64]
    ci_high: NDArray[np.float64]
    confidence: float


@dataclass(frozen=True)
class GapEstimate:
    """Per-target estimates (Z,) of err(g) = B_0(r) + B_1(r) and MSE(g) = E r^2, with a CI."""

    gap: NDArray[np.float64]
    mse: NDArray[np.float64]
    std_error: NDArray[np.float64]
    bias_bound: NDArray[np.float64]
    ci_low: NDArray[np.float64]
    ci_high: NDArray[np.float64]
    confidence: float


def _z(confidence: float) -> float:
    return float(norm.ppf(0.5 + check_probability("confidence", confidence) / 2.0))


def _linear_se(psi: NDArray[np.float64]) -> NDArray[np.float64]:
    """SE of sum_l mean_j psi[l, j] for independent pairs: psi (L, n, Z) -> (Z,)."""
    n = psi.shape[1]
    if n < 2:
        return np.full(psi.shape[2], np.inf)
    return np.asarray(np.sqrt(np.sum(psi.var(axis=1, ddof=1), axis=0) / n))


def _bias_allowance(kappa: float, upper: NDArray[np.float64]) -> NDArray[np.float64]:
    if kappa >= 1.0:
        return np.full_like(upper, np.inf)
    return kappa * np.maximum(upper, 0.0) / (1.0 - kappa)


def estimate_residual(
    values: NDArray[np.float64],
    design: StabilityDesign,
    confidence: float = 0.95,
    degree: int = 2,
    nonnegative: bool = True,
) -> ResidualEstimate:
    """The paper's estimator (module doc): B-hat_{>=2} = h-hat(1) - c_0 - c_1, per target.

    ``nonnegative=False`` replaces NNLS by plain least squares: unbiased up to the degree >= 3
    term, but it can return B-hat_0 or B-hat_1 < 0. NNLS (the paper's choice, the default) has
    lower variance and an upward bias where the unconstrained c_2 is often negative (small
    rho0, few pairs); ``docs/estimators.md`` measures both.
    """
    st = noise_stability(values, design)
    c = _fit(st.rhos, st.h, degree, nonnegative)
    residual = st.h1 - c[0] - c[1]
    a = linear_weights(st.rhos, degree)
    psi = st.squares / (2.0 * len(st.rhos)) - a[:, None, None] * st.products
    se = _linear_se(psi)
    z = _z(confidence)
    f = np.asarray(values, dtype=np.float64)
    bias = _bias_allowance(bias_coefficient(st.rhos, degree), residual + z * se)
    return ResidualEstimate(
        b0=c[0],
        b1=c[1],
        residual=residual,
        h1=st.h1,
        variance=f.var(axis=0, ddof=1) if f.shape[0] > 1 else np.zeros(f.shape[1]),
        std_error=se,
        bias_bound=bias,
        ci_low=residual - z * se - bias,
        ci_high=residual + z * se + bias,
        confidence=confidence,
    )


def estimate_residual_reference(
    values: NDArray[np.float64], design: StabilityDesign, degree: int = 2
) -> NDArray[np.float64]:
    """Reference B-hat_{>=2}: plain loops over targets, levels and pairs, scipy NNLS."""
    f = np.asarray(values, dtype=np.float64)
    rhos, n = _design_arrays(design, f.shape[0])
    out = np.empty(f.shape[1])
    for t in range(f.shape[1]):
        h = [
            np.mean([f[2 * (lv * n + j), t] * f[2 * (lv * n + j) + 1, t] for j in range(n)])
            for lv in range(len(rhos))
        ]
        c = nnls(_vandermonde(rhos, degree), np.array(h))[0]
        out[t] = np.mean(f[:, t] ** 2) - c[0] - c[1]
    return out


def estimate_gap(
    values: NDArray[np.float64],
    predictions: NDArray[np.float64],
    design: StabilityDesign,
    confidence: float = 0.95,
    degree: int = 2,
    nonnegative: bool = True,
) -> GapEstimate:
    """err(g) of a datamodel committed before E was drawn: c_0(r) + c_1(r) for r = f - g.

    ``predictions`` are g(x) on the same subsets, (|E|, Z).
    """
    f = as_finite_matrix("values", values, (None, None))
    g = as_finite_matrix("predictions", predictions, f.shape)
    r = f - g
    st = noise_stability(r, design)
    c = _fit(st.rhos, st.h, degree, nonnegative)
    gap = c[0] + c[1]
    a = linear_weights(st.rhos, degree)
    se = _linear_se(a[:, None, None] * st.products)
    z = _z(confidence)
    sq = r * r
    mse_upper = sq.mean(axis=0) + z * sq.std(axis=0, ddof=1) / np.sqrt(max(len(sq), 1))
    kappa = bias_coefficient(st.rhos, degree)
    bias = kappa * mse_upper  # B_{>=3}(r) = B_{>=3}(f) <= E r^2
    return GapEstimate(
        gap=gap,
        mse=st.h1,
        std_error=se,
        bias_bound=bias,
        ci_low=np.maximum(gap - z * se - bias, 0.0),
        ci_high=gap + z * se + bias,
        confidence=confidence,
    )
