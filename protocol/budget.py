"""The planner: every sample size of the protocol from explicit finite-sample bounds.

Given (epsilon, delta, b, Z, p, estimator) :func:`plan` returns a :class:`Plan` with rho0, the
pairs per noise level n, |E| = 6n, the spot-checks k, the fresh samples |M|, the decision
threshold, and a breakdown of every error term with the inequality it came from. All constants
are derived here; none is hidden in an O(.).

**Decision and tolerances.** Let h_c = ``honest_err`` (the largest err(g) an honest Prover
should still pass with; 0 by default, as in the paper). With the paper's estimator V accepts iff
``MSE-hat - B-hat_{>=2} <= theta`` with theta = (epsilon + h_c) / 2, and each of the two
estimates must be within eta = (epsilon - h_c) / 4 of its truth. Then err > epsilon gives
D-hat > epsilon - 2 eta = theta (sound) and err <= h_c gives D-hat <= h_c + 2 eta = theta
(complete); epsilon = 2 theta, eta = epsilon / 4 at h_c = 0 is the paper's Algorithm 1. With the
gap estimator V accepts iff ``gap-hat <= theta`` and one estimate gets eta = (epsilon - h_c) / 2.

**Error budget of B-hat_{>=2}** (NNLS fit on levels (0, rho0, 2 rho0), ``rho0 <= 1/4``). Let
a = A^{-T} e (the weights of c_0 + c_1, :func:`protocol.residual.linear_weights`) and
K = ||a||_2. NNLS is the projection of the unconstrained fit onto c >= 0 in the norm ||A .||,
which is non-expansive and fixes feasible points; with errors eta_l in the h-hat this gives
``|c0 + c1 - (B0 + B1)| <= K ||eta||_2 + |beta_1| (1 + sqrt(5) K rho0)``, where
beta_1 = (4 R(rho0) - R(2 rho0)) / (2 rho0), |beta_1| <= 2 rho0^2 B_{>=3}. So the estimate is off by
at most the sum of

* *statistics*: ``K sqrt(L) t + t_1`` where t bounds each level mean and t_1 the mean of f^2;
  Hoeffding for n i.i.d. products in [-b^2, b^2] gives t = b^2 sqrt(2 ln(2/delta_l) / n);
  f^2 in [0, b^2] over the two halves of E (L n i.i.d. each) gives
  t_1 = b^2 sqrt(ln(2/delta_l) / (2 L n)). With a pilot, Bernstein with a variance bound v:
  t = sqrt(2 v ln(2/delta_l) / n) + 2 M ln(2/delta_l) / (3 n), M the range of the variable;
* *degree >= 3 bias*: ``2 rho0^2 (1 + sqrt(5) K rho0) B3max``, B3max = b^2 unless a pilot or
  ``b3_bound`` bounds it;
* *CHECKEQUIV slack*: a Prover may move every value by tau unseen, each h-hat by
  s = 2 b tau + tau^2, the estimate by ``(K sqrt(L) + 1) s``. Plans where this eats more than
  half of eta are refused (:class:`BudgetError`): the rest would cost over 4x the trainings;
* *undetected corruption*: m reported values in [-b, b] moved arbitrarily shift one level mean by
  at most 2 b^2 m / n and the mean of f^2 by b^2 m / (2 L n): ``(2 K b^2 + b^2 / (2L)) m / n``
  (for r = f - g a moved f moves r by <= 2b, a product by <= 2 b R: ``2 K b R m / n``).
  The plan allows m* such values, and k spot-checks drawn uniformly catch a Prover that corrupts
  more than m* with probability >= 1 - delta_spot: ``k = ceil(ln(1/delta_spot) /
  -ln(1 - (m*+1)/|E|))`` (draws with replacement; drawing without replacement only helps).

The remainder after bias and slack is split between statistics and corruption
(``corruption_share``, default 1/2: n grows as 1/share_stat^2, k as 1/share_corr); rho0 is the grid
point in [0.01, 0.25] that minimises n (under Hoeffding, n and k both scale as
(K / (eta - bias))^2 and K / (eta - bias), so the same rho0 minimises both).
For the gap estimator the same terms apply with f replaced by r = f - g (range
``residual_range``, default 2b: V checks |g| <= b on the committed model) and no h(1) term.

**delta** is split by the union bound: delta/4 to the spot-check, and the rest over the Z
targets and the events (L level means, the two halves of f^2, the MSE mean).

**MSE-hat** from |M| fresh samples of (f - g)^2 in [0, R^2] (R = ``residual_range``): Hoeffding
``|M| = ceil(R^4 ln(2/delta_m) / (2 eta^2))`` or Bernstein with a pilot variance.

The paper's orders (constants 1) are reported beside: n ~ ln(1/delta)/eps^3,
k, |M| ~ ln(1/delta)/eps^2, rho0 ~ sqrt(eps).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from protocol.checks import check_positive, check_probability
from protocol.distributions import chi2
from protocol.errors import BudgetError, InvalidParameterError
from protocol.residual import StabilityDesign, estimate_residual, linear_weights, noise_stability

__all__ = ["Pilot", "Plan", "bernstein_deviation", "hoeffding_deviation", "plan", "spot_checks"]

Estimator = Literal["residual", "gap"]
_LEVELS = 3
_RHO_GRID = np.round(np.arange(0.01, 0.2501, 0.005), 6)


@dataclass(frozen=True)
class Pilot:
    """Variance bounds from a pilot run, enabling Bernstein bounds (upper bounds, not estimates).

    ``product_variance``: Var of f(x) f(x') (or r(x) r(x')) at any level; ``square_variance``:
    Var of f^2; ``mse_variance``: Var of (f - g)^2; ``b3``: an upper bound on B_{>=3}.
    """

    product_variance: float
    square_variance: float
    mse_variance: float
    b3: float

    @classmethod
    def from_values(
        cls, values: NDArray[np.float64], design: StabilityDesign, confidence: float = 0.99
    ) -> Pilot:
        """Upper bounds from pilot f-values on a design (all targets pooled by their maximum).

        Variances: the chi-square upper confidence bound (n - 1) s^2 / chi2_{1-c}(n - 1) of the
        largest per-level sample variance. B_{>=3} <= B_{>=2} <= the upper CI of B-hat_{>=2}.
        Var((f - g)^2) <= R^2 E[(f - g)^2] <= R^2 E[f^2] assumes the datamodel g is no worse
        than predicting 0 (V can check this on its fresh samples); R = 2b is applied by
        :func:`plan`, so ``mse_variance`` here is stored per unit R^2 times E[f^2].
        """
        st = noise_stability(values, design)
        n = st.products.shape[1]
        if n < 3:
            raise InvalidParameterError("a pilot needs at least 3 pairs per level")
        df = n - 1
        inflate = df / float(chi2.ppf(1.0 - check_probability("confidence", confidence), df))
        prod_var = float(np.max(st.products.var(axis=1, ddof=1))) * inflate
        f = np.asarray(values, dtype=np.float64)
        sq_var = float(np.max((f * f).var(axis=0, ddof=1))) * inflate
        est = estimate_residual(values, design, confidence=confidence)
        second_moment = float(np.max(np.mean(f * f, axis=0))) * inflate
        return cls(prod_var, sq_var, second_moment, float(np.max(est.ci_high)))


def hoeffding_deviation(value_range: float, n: int, delta: float) -> float:
    """t with P(|mean - E| >= t) <= delta for n i.i.d. values in an interval of this length."""
    return value_range * math.sqrt(math.log(2.0 / delta) / (2.0 * n))


def bernstein_deviation(variance: float, deviation: float, n: int, delta: float) -> float:
    """Bernstein: t with P(|mean - E| >= t) <= delta when Var <= variance, |X - EX| <= deviation."""
    lg = math.log(2.0 / delta)
    return math.sqrt(2.0 * variance * lg / n) + 2.0 * deviation * lg / (3.0 * n)


def _smallest_n(error_of_n: Any, target: float, start: int = 2) -> int:
    """Smallest n >= start with error_of_n(n) <= target (error decreasing in n)."""
    hi = start
    while error_of_n(hi) > target:
        hi *= 2
        if hi > 2**62:
            raise BudgetError("no sample size meets this tolerance")
    lo = max(start, hi // 2)
    if error_of_n(lo) <= target:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if error_of_n(mid) <= target else (mid, hi)
    return hi


def spot_checks(n_subsets: int, corruptible: int, delta: float) -> int:
    """k uniform draws catch one of > ``corruptible`` corrupted subsets w.p. >= 1 - delta."""
    bad = min(corruptible + 1, n_subsets)
    if bad >= n_subsets:
        return 1
    return max(1, math.ceil(math.log(1.0 / delta) / -math.log1p(-bad / n_subsets)))


@dataclass(frozen=True)
class Plan:
    """Every sample size of one protocol run, the error budget, and where each number came from."""

    estimator: str
    epsilon: float
    delta: float
    bound: float
    n_targets: int
    p: float
    tau: float
    honest_err: float
    threshold: float
    tolerance: float
    rho0: float
    pairs_per_level: int
    n_subsets: int
    spot_checks: int
    fresh_samples: int
    max_corrupted: int
    error_budget: dict[str, float]
    delta_split: dict[str, float]
    sources: dict[str, str]
    paper_orders: dict[str, float]
    verifier_trainings: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def plan(
    epsilon: float,
    delta: float,
    bound: float,
    n_targets: int = 1,
    p: float = 0.5,
    estimator: Estimator = "residual",
    tau: float = 0.0,
    honest_err: float = 0.0,
    residual_range: float | None = None,
    pilot: Pilot | None = None,
    corruption_share: float = 0.5,
    b3_bound: float | None = None,
) -> Plan:
    """Turn the guarantees asked for into sample sizes (module doc)."""
    eps = check_positive("epsilon", epsilon)
    dlt = check_probability("delta", delta)
    b = check_positive("bound b", bound)
    p = check_probability("p", p)
    if not isinstance(n_targets, int) or n_targets < 1:
        raise InvalidParameterError(f"the number of targets Z must be >= 1; got {n_targets!r}")
    if estimator not in ("residual", "gap"):
        raise InvalidParameterError(f"unknown estimator {estimator!r}; use 'residual' or 'gap'")
    if not (math.isfinite(tau) and tau >= 0):
        raise InvalidParameterError(f"tau must be finite and >= 0; got {tau!r}")
    if not (math.isfinite(honest_err) and 0 <= honest_err < eps):
        raise InvalidParameterError("honest_err must lie in [0, epsilon)")
    corruption_share = check_probability("corruption_share", corruption_share)
    rr = 2.0 * b if residual_range is None else check_positive("residual_range", residual_range)

    gap = estimator == "gap"
    eta = (eps - honest_err) / (2.0 if gap else 4.0)
    theta = (eps + honest_err) / 2.0
    events = n_targets * (_LEVELS + (0 if gap else 2))
    d_spot = dlt / 4.0
    d_mse = 0.0 if gap else dlt / 4.0
    d_event = (dlt - d_spot - d_mse) / events
    fb = rr if gap else b  # range bound of the values whose products are averaged
    b3max = b * b
    if pilot:
        b3max = min(b3max, pilot.b3)
    if b3_bound is not None:
        if not (math.isfinite(b3_bound) and b3_bound >= 0):
            raise InvalidParameterError(f"b3_bound must be finite and >= 0; got {b3_bound!r}")
        b3max = min(b3max, b3_bound)
    sources = {
        "tolerance": f"eta = (epsilon - honest_err) / {2 if gap else 4}; "
        "theta = (epsilon + honest_err) / 2",
        "delta_split": f"union bound: delta/4 spot-check{'' if gap else ', delta/4 MSE'}, "
        f"rest over {events} events",
        "pairs_per_level": ("Bernstein with pilot variance" if pilot else "Hoeffding")
        + " on level means, NNLS projection bound K ||eta||_2",
        "rho0": "grid search minimising n under the degree>=3 bias bound "
        "2 rho0^2 (1 + sqrt5 K rho0) B3max",
        "spot_checks": "k = ceil(ln(1/delta_spot) / -ln(1 - (m*+1)/|E|))",
        "max_corrupted": "m* = corruption share of eta / per-value shift (2 K b R + b^2 / 2L) / n",
        "fresh_samples": "none: the gap estimator needs no fresh samples" if gap else
        ("Bernstein with pilot variance" if pilot else "Hoeffding") + " on (f - g)^2 in [0, R^2]",
    }  # fmt: skip

    best: tuple[int, float, dict[str, float], int] | None = None
    tau_blocked = 0
    for rho0 in _RHO_GRID:
        a = linear_weights(np.array([0.0, rho0, 2 * rho0]))
        k_norm = float(np.linalg.norm(a))
        slack = 2 * fb * tau + tau * tau
        e_tau = (k_norm * math.sqrt(_LEVELS) + (0.0 if gap else 1.0)) * slack
        if e_tau > eta / 2:
            tau_blocked += 1
            continue
        e_bias = 2 * rho0**2 * (1 + math.sqrt(5) * k_norm * rho0) * b3max
        rest = eta - e_tau - e_bias
        if rest <= 0:
            continue
        e_stat, e_corr = (1 - corruption_share) * rest, corruption_share * rest

        def stat_error(n: int, k_norm: float = k_norm) -> float:
            if pilot:
                t = bernstein_deviation(pilot.product_variance, 2 * fb * fb, n, d_event)
                t1 = bernstein_deviation(pilot.square_variance, fb * fb, _LEVELS * n, d_event)
            else:
                t = hoeffding_deviation(2 * fb * fb, n, d_event)
                t1 = hoeffding_deviation(fb * fb, _LEVELS * n, d_event)
            return k_norm * math.sqrt(_LEVELS) * t + (0.0 if gap else t1)

        n = _smallest_n(stat_error, e_stat)
        per_value = (2 * k_norm * b * fb + (0.0 if gap else b * b / (2 * _LEVELS))) / n
        m_star = int(e_corr / per_value)
        budget = {"tau_slack": e_tau, "bias": e_bias, "statistics": e_stat, "corruption": e_corr,
                  "K": k_norm}  # fmt: skip
        if best is None or n < best[0]:
            best = (n, float(rho0), budget, m_star)
    if best is None:
        if tau_blocked == len(_RHO_GRID):
            raise BudgetError(
                f"the CHECKEQUIV tolerance tau = {tau} eats more than half of the margin eta = "
                f"{eta:.3g} at every rho0; tighten tau or loosen epsilon"
            )
        raise BudgetError(
            f"epsilon = {eps} is too small for the degree>=3 bias bound at every rho0 with "
            f"B3max = {b3max:.3g} (b^2 unless bounded): run a pilot or give b3_bound"
        )
    n, rho0, budget, m_star = best
    n_subsets = 2 * _LEVELS * n
    k = spot_checks(n_subsets, m_star, d_spot)
    if gap:
        m_fresh = 0
    elif pilot:
        mse_var = pilot.mse_variance * rr * rr
        m_fresh = _smallest_n(
            lambda m: bernstein_deviation(mse_var, rr * rr, m, d_mse / n_targets), eta
        )
    else:
        m_fresh = math.ceil(rr**4 * math.log(2 * n_targets / d_mse) / (2 * eta * eta))
    lg = math.log(1.0 / dlt)
    return Plan(
        estimator=estimator, epsilon=eps, delta=dlt, bound=b, n_targets=n_targets, p=p, tau=tau,
        honest_err=honest_err, threshold=theta, tolerance=eta, rho0=rho0, pairs_per_level=n,
        n_subsets=n_subsets, spot_checks=k, fresh_samples=m_fresh, max_corrupted=m_star,
        error_budget=budget,
        delta_split={"spot_check": d_spot, "mse": d_mse, "per_event": d_event},
        sources=sources,
        paper_orders={"pairs": lg / eps**3, "spot_checks": lg / eps**2,
                      "fresh_samples": lg / eps**2, "rho0": math.sqrt(eps)},
        verifier_trainings={"interactive": k + m_fresh, "noninteractive": n_subsets + m_fresh,
                            "prover": n_subsets},
    )  # fmt: skip
