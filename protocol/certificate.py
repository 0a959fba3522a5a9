"""The certificate: an upper confidence bound on err(g) that every verdict is made of (section 7).

:func:`certify` takes the Prover's reported f on the challenge subsets E (design order), the
committed datamodel's predictions g on the same masks, and the design, and returns a frozen
:class:`Certificate`. Its ``certified_epsilon`` U is an upper confidence bound at level
1 - delta on the aggregate err (the mean over targets, or the max with delta split across the
targets); the verdict is accept iff U <= epsilon, so P(accept | err > epsilon) <= delta.

**Estimand.** r = f - g, psi = r(x) r(x') per pair, mu_l = E psi at level l. For the
unconstrained quadratic fit on levels rho_l, c_0 + c_1 = sum_l a_l mu_l - beta with
a = :func:`protocol.residual.linear_weights` and beta = sum_{k>=3} B_k(r) s_k,
s_k = sum_l a_l rho_l^k. So err = sum_l a_l mu_l - beta. For (0, rho0, 2 rho0),
s_k = rho0^(k-1) (2 - 2^(k-1)) < 0: the fit *under*-estimates err, and
-beta <= kappa_+ B_{>=3}(r), kappa_+ = sup_{k>=3} max(0, -s_k) (2 rho0^2 for rho0 <= 1/3).

**The bound** U = (S + kappa_+ Q) / (1 + kappa_+) where S is an upper bound on sum_l a_l mu_l
and Q on E r^2. Since B_{>=3}(r) <= B_{>=2}(r) = E r^2 - err (g is linear, so r has f's
degree >= 2 weight), err <= S + kappa_+ (Q - err) gives U. S is made of four parts, each a
field of the certificate:

1. ``point``: ``clt``: the trimmed mean T(u) of the n pair-sums u_j = sum_l a_l psi_{l,j}
   (the j-th pair of every level; the levels are independent, so the u_j are i.i.d. with
   mean sum_l a_l mu_l and SD sigma_u = sqrt(sum_l a_l^2 sigma_l^2), smaller than
   sum_l |a_l| sigma_l), t = m* rows cut from each end (t = 0, the plain mean, when the
   values are trusted). One corrupted subset corrupts one u_j. ``finite``: the plain
   sum_l a_l mean(psi_l).
2. ``statistical``: ``clt``: z_{1-d} s_w / ((1 - 2t/n) sqrt(n)), the Tukey-McLaughlin standard
   error of a trimmed mean (s_w the winsorised SD). ``finite``: empirical Bernstein (Maurer &
   Pontil 2009, Thm 4) per level at d/L, sqrt(2 V ln(2L/d) / n) + 7 R ln(2L/d) / (3 (n - 1)),
   R the range of psi, V the sample variance of the *honest* sample, bounded by the observed
   one plus m* values at the range.
3. ``corruption``: m <= m* corrupted values (below) moved arbitrarily. ``clt``: if y and the
   honest z differ in at most m <= t places, z_(i-m) <= y_(i) <= z_(i+m), so
   T(z) <= T(y) + sum_{j<=m} (y_(n-t+j) - y_(t+j)) / (n - 2t): the spread of the observed
   sample near the trimming points, never the range (charged at m = m*; it grows with m).
   Then the honest trimmed mean's own bias. With g = t/n, mu_top and mu_bot the means of the
   top and bottom g-tails and mu_trim the band's: mu - mu_trim = g (mu_top - mu_trim) +
   g (mu_bot - mu_trim) <= g (mu_top - mu) + g (mu - mu_trim) (mu_bot <= mu_trim), and
   g (mu_top - mu) = E[(X - mu)(1_top - g)] <= sigma sqrt(g (1 - g)) (Cauchy-Schwarz), so
   mu - mu_trim <= sigma sqrt(g / (1 - g)), with sigma_u the observed SD of u.
   ``finite`` (plain means): a corrupted pair's honest psi lies in [-R_j, R_j] with
   R_j = (b + |g(x)|)(b + |g(x')|), so the honest mean is at most the observed one plus the
   m largest (R_j - y_j) / n (minus, for a_l < 0); the adversary splits m* over the levels
   and we charge the worst split (max-plus convolution). This is the range bound, rigorous
   without assumptions.
4. ``tau_slack``: each reported value may be off by tau unseen. The honest |r| <= |r_obs| + tau,
   so psi moves by at most d_j = tau (|r_obs(x)| + |r_obs(x')|) + 3 tau^2. A trimmed mean moves
   by at most (top_{n-t}(d) + top_t(d)) / (n - 2t) (a sum of the top k order statistics is
   1-Lipschitz in the sum of the k largest perturbations), with d_j = sum_l |a_l| d_{l,j} for
   the pair-sums u_j; a plain mean by mean(d).

Q, the upper bound on E r^2, is the same construction with one "level" of all |E| values of
r^2 (weight +1), at the same m*, tau (d = 2 tau |r_obs| + 3 tau^2) and validity.

**Corruption count m*.** k spot-checks drawn uniformly without replacement from |E| all
passed. If m values are corrupted, P(all pass) = C(|E| - m, k) / C(|E|, k) <= (1 - m/|E|)^k.
m* is the smallest m with P(all pass | m + 1) <= delta_spot: a Prover corrupting more than m*
passes with probability <= delta_spot. So m* ~ |E| ln(1/delta_spot) / k.

**delta** is split by the union bound: delta_spot = spot_share * delta to the spot-check
event (0 when the values are trusted, ``spot_checks=None``), and the rest half to S and half
to Q; ``max`` divides both by Z. The ``mean`` aggregate averages psi and r^2 over targets
before bounding (one bound on the mean, whose SE is far below any target's).

**Validity.** ``clt``: the normal approximation, and the observed SD standing in for the
honest SD in the trimming bias (the adversary can deflate it only by hiding m* of n values).
A bound on a mean that survives m hidden values without an assumption on the tails must
charge about m R / n (an honest atom of mass m/n at the range, hidden by the adversary, is
indistinguishable from no atom): that is ``finite``, whose corruption slack is the range bound
and whose statistics are empirical Bernstein. ``finite`` needs ``bound`` (b, the task's clip bound).

**Designs.** The pair layout (:class:`~protocol.sampling.ChallengeDesign`, 6 subsets per j)
and the shared-base layout (:class:`~protocol.sampling.SharedBaseDesign`, 4 per j: u_j =
r(x_j) sum_l a_l r(x'_l_j), whose terms are positively correlated, so its variance is several
times smaller) give the same estimand level by level; in both one subset belongs to one u_j.

Arrays: ``values``, ``predictions`` (|E|, Z) float64; per-target outputs (Z,).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypedDict

import numpy as np
from numpy.typing import NDArray

from protocol.betting import betting_upper
from protocol.checks import as_finite_matrix, check_probability
from protocol.distributions import gammaln, norm
from protocol.errors import InvalidParameterError, ShapeError
from protocol.residual import StabilityDesign, linear_weights

__all__ = [
    "Aggregate",
    "CLT_MIN_EVENTS",
    "Certificate",
    "CertificatePlan",
    "VALIDITIES",
    "Validity",
    "certify",
    "checked_groups",
    "clt_fewest",
    "clt_refusal",
    "default_validity",
    "group_subsets",
    "max_undetected",
    "pair_members",
    "pass_probability",
    "pilot_figures",
    "pilot_point",
    "plan_certificate",
    "predicted_width",
    "upper_bias_coefficient",
    "variance_lower_bound",
    "variance_upper_bound",
]

Aggregate = Literal["mean", "max"]
Validity = Literal["betting", "clt", "finite"]
VALIDITIES: tuple[str, ...] = ("betting", "clt", "finite")
#: ``clt`` is refused unless the rarest one-example event of the design, a given training
#: example in both subsets of a level-0 pair (probability min(p, 1 - p)^2), is expected at
#: least this many times among the n pair-sums (module doc, "Validity").
CLT_MIN_EVENTS = 50
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Certificate:
    """An upper confidence bound on err(g) and the parts it is made of (module doc).

    ``certified_epsilon`` is the aggregate's bound U: the smallest epsilon this run certifies
    at confidence 1 - delta. ``point + statistical + corruption + tau_slack + bias`` equals it
    (``bias`` is the degree >= 3 term kappa (Q - S) / (1 + kappa), negative only when S
    already exceeds the bound on E r^2). ``per_target`` (Z,) are bounds holding for all
    targets at once (delta split over Z), ``per_target_point`` the robust point estimates.

    With whole groups checked (``checked``), U is the smaller of two bounds at half the rest of
    delta each: ``trusted_bound`` from the checked groups alone (the Verifier's own values,
    m* = 0) and ``robust_bound`` from all of E; ``source`` names the one U and its parts come
    from ("trusted" or "robust"; "all" when nothing was checked as whole groups).
    ``trusted_validity`` is the validity the trusted bound ran at: ``clt`` only where
    :func:`clt_refusal` allows it at the checked groups' count k, else ``betting``.
    """

    aggregate: str
    validity: str
    delta: float
    delta_spot: float
    certified_epsilon: float
    point: float
    statistical: float
    corruption: float
    tau_slack: float
    bias: float
    mse_upper: float
    per_target: FloatArray
    per_target_point: FloatArray
    max_corrupted: int
    trim: int
    spot_checks: int | None
    n_subsets: int
    pairs_per_level: int
    rhos: tuple[float, ...]
    kappa: float
    tau: float
    checked_groups: int | None = None
    source: str = "all"
    trusted_bound: float | None = None
    robust_bound: float | None = None
    trusted_validity: str | None = None

    def accepts(self, epsilon: float) -> bool:
        """The verdict: accept iff certified_epsilon <= epsilon."""
        return bool(self.certified_epsilon <= epsilon)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (arrays as lists, infinities as None)."""
        out = asdict(self)
        for key in ("per_target", "per_target_point"):
            out[key] = [_json_float(v) for v in np.asarray(out[key]).tolist()]
        return {k: _json_float(v) if isinstance(v, float) else v for k, v in out.items()}


def _json_float(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def upper_bias_coefficient(rhos: FloatArray, degree: int = 2) -> float:
    """kappa_+ = sup_{k > degree} max(0, -sum_l a_l rho_l^k): err <= c0 + c1 + kappa_+ B_{>2}."""
    rhos = np.asarray(rhos, dtype=np.float64)
    a = linear_weights(rhos, degree)
    ks = np.arange(degree + 1, degree + 400)
    return float(max(0.0, float(np.max(-((rhos[None, :] ** ks[:, None]) @ a)))))


def pass_probability(n_subsets: int, corrupted: int, k: int) -> float:
    """P(k uniform draws without replacement from n_subsets all miss ``corrupted`` values)."""
    if corrupted <= 0 or k <= 0:
        return 1.0
    if corrupted + k > n_subsets:
        return 0.0
    n, m = n_subsets, corrupted
    log_p = gammaln(n - m + 1) - gammaln(n - m - k + 1) - gammaln(n + 1) + gammaln(n - k + 1)
    return float(np.exp(log_p))


def max_undetected(n_subsets: int, k: int, delta_spot: float) -> int:
    """m*: the smallest m with P(all k checks pass | m + 1 corrupted) <= delta_spot."""
    if not isinstance(n_subsets, int | np.integer) or n_subsets < 1:
        raise InvalidParameterError(f"n_subsets must be a positive integer; got {n_subsets!r}")
    if not isinstance(k, int | np.integer) or not 0 <= k <= n_subsets:
        raise InvalidParameterError(f"spot-checks must be an integer in [0, |E|]; got {k!r}")
    check_probability("delta_spot", delta_spot)
    lo, hi = 0, n_subsets  # P(pass | hi + 1) = 0 <= delta_spot by convention
    if pass_probability(n_subsets, 1, k) <= delta_spot:
        return 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pass_probability(n_subsets, mid + 1, k) <= delta_spot:
            hi = mid
        else:
            lo = mid
    return hi


# -- the bound on sum_l a_l mu_l from (L, n, C) samples ---------------------------------------


def _worst_split(gains: list[FloatArray], budget: int) -> FloatArray:
    """max over m_0 + ... + m_{L-1} <= budget of sum_l gains[l][m_l]; gains (budget+1, C)."""
    acc = gains[0]
    for g in gains[1:]:
        nxt = np.full_like(acc, -np.inf)
        for s in range(budget + 1):
            nxt[s] = np.max(acc[: s + 1][::-1] + g[: s + 1], axis=0)
        acc = nxt
    return np.asarray(np.max(acc, axis=0))


def _top_sum(d: FloatArray, k: int) -> FloatArray:
    """Sum of the k largest entries along axis 0; d (n, C) -> (C,)."""
    if k <= 0:
        return np.zeros(d.shape[1])
    return np.asarray(np.sort(d, axis=0)[-k:].sum(axis=0))


@dataclass(frozen=True)
class _Parts:
    point: FloatArray
    statistical: FloatArray
    corruption: FloatArray
    tau_slack: FloatArray

    @property
    def upper(self) -> FloatArray:
        return np.asarray(self.point + self.statistical + self.corruption + self.tau_slack)


def _bound_clt(
    y: FloatArray,
    m_star: int,
    delta: float,
    dev: FloatArray,
    reach: FloatArray | None,
    sd_cap: FloatArray | None = None,
) -> _Parts:
    """Upper bound on E y from n i.i.d. rows y (n, C), m* of them possibly corrupted.

    Trimmed mean (t = m* per end), Tukey-McLaughlin SE, the order-statistics sandwich for the
    corrupted rows, the one-sided trimming bias, and the tau deviations ``dev`` (n, C).
    ``reach`` (n, C): how far each row's honest value can lie from the observed mean (from its
    a-priori range), needed when m* > 0: the trimming bias charges the honest SD, bounded by
    the observed squares plus the m* largest reaches squared, which no corruption can deflate.
    ``sd_cap`` (C,): an upper bound on the honest SD from the Verifier's own values (the
    smaller of the two is charged).
    """
    n, cols = y.shape
    t = m_star
    if 2 * t >= n - 1:
        inf = np.full(cols, np.inf)
        return _Parts(np.full(cols, np.nan), inf, inf, inf)
    ys = np.sort(y, axis=0)
    band = n - 2 * t
    trimmed = ys[t : n - t].mean(axis=0)
    wins = np.clip(ys, ys[t : t + 1], ys[n - t - 1 : n - t])  # winsorised at t
    se = wins.std(axis=0, ddof=1) / ((band / n) * math.sqrt(n))
    stat = _z(delta) * se
    corr = np.zeros(cols)
    if t > 0:
        if reach is None and sd_cap is None:
            raise InvalidParameterError("a corrupted count m* > 0 needs the task's bound b")
        # T(z) <= T(y) + (sum_{j<=m} y_(n-t+j) - y_(t+j)) / (n - 2t), at m = m* (increasing in m)
        sandwich = (ys[n - t :].sum(axis=0) - ys[t : 2 * t].sum(axis=0)) / band
        # E y - (honest trimmed mean): only the upper tail (mass t/n) can raise the mean; the
        # honest SD is at most sqrt((sum (y - ybar)^2 + the t largest reach^2) / (n - 1)).
        frac = t / n
        sd_up = np.full(cols, np.inf)
        if reach is not None:
            centred = np.sum((y - y.mean(axis=0)) ** 2, axis=0)
            sd_up = np.sqrt((centred + _top_sum(reach**2, t)) / (n - 1))
        if sd_cap is not None:
            sd_up = np.minimum(sd_up, sd_cap)
        trim_bias = sd_up * math.sqrt(frac / (1.0 - frac))
        corr = sandwich + trim_bias
    tau = (_top_sum(dev, n - t) + _top_sum(dev, t)) / band
    return _Parts(np.asarray(trimmed), np.asarray(stat), np.asarray(corr), np.asarray(tau))


def _z(q: float) -> float:
    """The standard normal quantile z_{1-q}."""
    return float(norm.ppf(1.0 - q))


def _bound_betting(
    y: FloatArray,
    m_star: int,
    delta: float,
    dev: FloatArray,
    row_hi: FloatArray,
    upper: FloatArray,
    decompose: bool = True,
    stop_above: FloatArray | None = None,
) -> _Parts:
    """Betting upper bound on E y (:mod:`protocol.betting`): rows y (n, C) i.i.d. below
    ``upper`` (C,) when honest, m* of them possibly replaced (honest value below ``row_hi``),
    the others off by at most ``dev``. Parts: point = plain mean; statistical = the trusted
    bound's excess; corruption and tau_slack = what m* and then ``dev`` add to it."""
    point = y.mean(axis=0)
    full = betting_upper(y, upper=upper, delta=delta, corrupted=m_star, row_upper=row_hi,
                         slack=dev, stop_above=None if decompose else stop_above)  # fmt: skip
    if not decompose:
        return _Parts(point, full - point, np.zeros_like(point), np.zeros_like(point))
    trusted = betting_upper(y, upper=upper, delta=delta)
    no_tau = trusted
    if m_star > 0:
        no_tau = betting_upper(y, upper=upper, delta=delta, corrupted=m_star, row_upper=row_hi)
    stat = trusted - point
    corr = no_tau - trusted
    return _Parts(np.asarray(point), np.asarray(stat), np.asarray(corr), np.asarray(full - no_tau))


def _bound_finite(
    y: FloatArray,
    a: FloatArray,
    m_star: int,
    delta: float,
    dev: FloatArray,
    lo: FloatArray,
    hi: FloatArray,
    shared: bool,
) -> _Parts:
    """Plain means, empirical Bernstein, range-bound corruption; lo, hi (L, n, C) honest range.

    ``shared``: one corrupted subset can reach every level (shared-base layout), so each level
    is charged its full m* instead of the worst split of m* across levels."""
    n_levels, n, cols = y.shape
    if n < 2:
        inf = np.full(cols, np.inf)
        return _Parts(y.mean(axis=(0, 1)), inf, inf, inf)
    mean = y.mean(axis=1)
    lg = math.log(2.0 * n_levels / delta)
    stat = np.zeros(cols)
    gains = []
    for lv in range(n_levels):
        c = mean[lv]
        width = np.max(hi[lv], axis=0) - np.min(lo[lv], axis=0)  # (C,)
        reach = np.maximum(np.max(np.abs(hi[lv] - c), axis=0), np.max(np.abs(lo[lv] - c), axis=0))
        var = (np.sum((y[lv] - c) ** 2, axis=0) + m_star * reach**2) / (n - 1)
        dev_l = np.sqrt(2.0 * var * lg / n) + 7.0 * width * lg / (3.0 * (n - 1))
        stat += abs(a[lv]) * dev_l
        move = (hi[lv] - y[lv]) if a[lv] >= 0 else (y[lv] - lo[lv])
        top = np.sort(np.maximum(move, 0.0), axis=0)[::-1][:m_star]
        g = np.concatenate([np.zeros((1, cols)), np.cumsum(top, axis=0)], axis=0)
        if len(g) < m_star + 1:
            g = np.concatenate([g, np.repeat(g[-1:], m_star + 1 - len(g), 0)], axis=0)
        gains.append(abs(a[lv]) * g / n)
    if m_star == 0:
        corr = np.zeros(cols)
    elif shared:
        corr = np.asarray(np.sum([gl[m_star] for gl in gains], axis=0))
    else:
        corr = _worst_split(gains, m_star)
    tau = np.sum(np.abs(a)[:, None] * dev.mean(axis=1), axis=0)
    return _Parts(np.asarray(a @ mean), stat, corr, np.asarray(tau))


# -- certify ----------------------------------------------------------------------------------


def pair_members(
    design: StabilityDesign, n_rows: int
) -> tuple[FloatArray, Callable[[FloatArray], tuple[FloatArray, FloatArray]]]:
    """The levels and a map from per-subset rows (|E|, C) to the pair members (L, n, C) x 2:
    the protocol's pair layout, public so that a page charting a fit uses the certificate's own.

    Pair layout (:class:`~protocol.sampling.ChallengeDesign`): subsets 2g and 2g + 1 of pair
    g = l n + j. Shared-base layout (:class:`~protocol.sampling.SharedBaseDesign`): x of base j
    is subset (1 + L) j, its level-l partner (1 + L) j + 1 + l.
    """
    rhos = np.asarray(design.rhos, dtype=np.float64)
    levels, n = len(rhos), int(design.pairs_per_level)
    if design.layout == "shared-base":
        group = 1 + levels
        if n_rows != group * n:
            raise ShapeError(
                f"the design has {group * n} subsets ({group} per base x {n} bases); "
                f"got {n_rows} rows of values"
            )

        def shared(x: FloatArray) -> tuple[FloatArray, FloatArray]:
            b = x.reshape(n, group, -1)
            base = np.broadcast_to(b[:, 0][None], (levels, n, b.shape[2]))
            return np.asarray(base), np.asarray(b[:, 1:].transpose(1, 0, 2))

        return rhos, shared
    if n_rows != 2 * levels * n:
        raise ShapeError(
            f"the design has {2 * levels * n} subsets (2 x {levels} levels x {n} pairs); "
            f"got {n_rows} rows of values"
        )

    def pairs(x: FloatArray) -> tuple[FloatArray, FloatArray]:
        return x[0::2].reshape(levels, n, -1), x[1::2].reshape(levels, n, -1)

    return rhos, pairs


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidParameterError(f"{name} must be one of {allowed}; got {value!r}")


def default_validity(p: float, pairs_per_level: int) -> Validity:
    """The product's choice: ``clt`` where :func:`clt_refusal` allows it, else ``betting``."""
    return "clt" if clt_refusal(p, pairs_per_level) is None else "betting"


def group_subsets(design: StabilityDesign, groups: NDArray[np.int64]) -> NDArray[np.int64]:
    """The subsets (design order, sorted) of pair-sum groups j: a base and its partners on the
    shared-base layout, the j-th pair of every level on the pair layout."""
    levels, n = len(design.rhos), int(design.pairs_per_level)
    j = np.asarray(groups, dtype=np.int64)
    if design.layout == "shared-base":
        out = (1 + levels) * j[:, None] + np.arange(1 + levels)[None, :]
    else:
        pair = np.arange(levels)[None, :] * n + j[:, None]
        out = np.concatenate([2 * pair, 2 * pair + 1], axis=1)
    return np.asarray(np.sort(out.ravel()), dtype=np.int64)


def checked_groups(design: StabilityDesign, spots: Sequence[int]) -> NDArray[np.int64] | None:
    """The groups j whose every subset is in ``spots``, if ``spots`` is exactly their union
    (None otherwise, and for an empty set)."""
    idx = np.unique(np.asarray(list(spots), dtype=np.int64))
    if len(idx) == 0:
        return None
    levels, n = len(design.rhos), int(design.pairs_per_level)
    if design.layout == "shared-base":
        owner = idx // (1 + levels)
    else:
        owner = (idx // 2) % n
    groups = np.unique(owner)
    if len(groups) >= n + 1 or not np.array_equal(group_subsets(design, groups), idx):
        return None
    return np.asarray(groups, dtype=np.int64)


def clt_fewest(p: float) -> int:
    """The fewest pair-sums at which ``clt`` may be used at subset fraction p
    (:func:`clt_refusal`): ceil(CLT_MIN_EVENTS / min(p, 1 - p)^2), 200 at p = 1/2."""
    return math.ceil(CLT_MIN_EVENTS / min(p, 1.0 - p) ** 2)


def clt_refusal(p: float, pairs_per_level: int) -> str | None:
    """Why ``clt`` may not be used on a design with subset fraction p and n pair-sums, or None.

    The normal approximation of the pair-sums' mean needs the events that carry its variance
    to occur many times. The rarest one-example event, a given training example in both
    subsets of a level-0 pair, has probability min(p, 1 - p)^2; it must be expected at least
    :data:`CLT_MIN_EVENTS` times among the n pair-sums (module doc, "Validity")."""
    q = min(p, 1.0 - p) ** 2
    expected = pairs_per_level * q
    if expected >= CLT_MIN_EVENTS:
        return None
    need = clt_fewest(p)
    return (
        f"validity 'clt' needs n min(p, 1-p)^2 >= {CLT_MIN_EVENTS} (the rarest one-example event "
        f"seen often enough for the normal approximation); here p = {p:g}, n = "
        f"{pairs_per_level:,} gives {expected:.3g}. Use validity 'betting' (sound at every p), or "
        f"n >= {need:,}"
    )


def _scaled(w: float, lo: FloatArray, hi: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The interval w [lo, hi]."""
    return (w * lo, w * hi) if w >= 0 else (w * hi, w * lo)


def _product(
    alo: FloatArray, ahi: FloatArray, blo: FloatArray, bhi: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """The interval [alo, ahi] x [blo, bhi] (elementwise corners)."""
    corners = np.stack(np.broadcast_arrays(alo * blo, alo * bhi, ahi * blo, ahi * bhi))
    return np.asarray(corners.min(axis=0)), np.asarray(corners.max(axis=0))


def _pair_sum_range(
    lo: tuple[FloatArray, FloatArray], hi: tuple[FloatArray, FloatArray], a: FloatArray,
    shared: bool,
) -> tuple[FloatArray, FloatArray]:  # fmt: skip
    """Range of u = sum_l a_l r(x_l) r(x'_l) when every r lies in its interval; lo, hi are the
    (base, partner) interval ends, each (L, ...). Shared-base: one head r(x) for all levels."""
    if shared:
        in_lo = np.zeros_like(lo[1][0])
        in_hi = np.zeros_like(hi[1][0])
        for lv, w in enumerate(a):
            s_lo, s_hi = _scaled(float(w), lo[1][lv], hi[1][lv])
            in_lo, in_hi = in_lo + s_lo, in_hi + s_hi
        return _product(lo[0][0], hi[0][0], in_lo, in_hi)
    tot_lo = np.zeros_like(lo[0][0])
    tot_hi = np.zeros_like(hi[0][0])
    for lv, w in enumerate(a):
        p_lo, p_hi = _product(lo[0][lv], hi[0][lv], lo[1][lv], hi[1][lv])
        s_lo, s_hi = _scaled(float(w), p_lo, p_hi)
        tot_lo, tot_hi = tot_lo + s_lo, tot_hi + s_hi
    return tot_lo, tot_hi


def _square_range(lo: FloatArray, hi: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Range of r^2 for r in [lo, hi]."""
    top = np.maximum(lo * lo, hi * hi)
    bottom = np.where((lo <= 0) & (hi >= 0), 0.0, np.minimum(lo * lo, hi * hi))
    return np.asarray(bottom), np.asarray(top)


def certify(
    values: FloatArray,
    predictions: FloatArray,
    design: StabilityDesign,
    *,
    delta: float,
    aggregate: Aggregate = "mean",
    spot_checks: int | None = None,
    tau: float | FloatArray = 0.0,
    validity: Validity = "betting",
    bound: float | None = None,
    spot_share: float = 0.5,
    max_corrupted: int | None = None,
    prediction_range: tuple[FloatArray, FloatArray] | None = None,
    p: float | None = None,
    detail: bool = True,
    checked: NDArray[np.int64] | list[int] | tuple[int, ...] | None = None,
    decide_at: float | None = None,
) -> Certificate:
    """Upper confidence bound on err(g) at level 1 - delta from a challenge (module doc).

    ``values`` (|E|, Z): the reported f in design order; ``predictions`` (|E|, Z): g on the
    same masks (g committed before E was drawn). ``spot_checks``: the number k of uniformly
    drawn spot-checks that all passed (None: the values are trusted, m* = 0).
    ``checked`` instead: the indices j of the pair-sum groups (a base and its partners, or the
    j-th pair of every level) drawn uniformly without replacement, every subset of which was
    retrained by the Verifier and matched: m* then counts corrupted groups among the n, and U
    is the smaller of the bound on the checked groups alone (their values are the Verifier's)
    and the robust bound on all of E (``clt`` charges its trimming bias at the checked groups'
    SD), each at half of the rest of delta (module doc, "Checked groups").
    ``max_corrupted`` overrides m* (then ``spot_share`` of delta is still reserved if
    ``spot_checks`` is given). ``tau``: a scalar, or per value (|E|, Z) or (|E|, 1): how far
    each reported value may lie from the true f unseen. ``bound``: the task's b (required by
    ``betting`` and ``finite``, and by ``clt`` when m* > 0; with it, values outside [-b, b]
    are refused). ``prediction_range``: (inf g, sup g) (Z,) over every mask
    (:meth:`~protocol.datamodel.Datamodel.output_range`), the a-priori range ``betting`` bets
    against (default: the range of ``predictions``, which covers E only). ``p``: the subset
    fraction (default the design's ``p``, else 1/2), checked by ``clt`` (:func:`clt_refusal`).
    ``detail=False`` skips the split of a ``betting`` bound into its parts (three bounds
    instead of one): U is the same, ``statistical`` then holds all of U - point - bias, and
    for ``mean`` the per-target bounds are not computed (NaN). ``decide_at`` (with
    ``detail=False``, ``betting``, ``mean``): a bound known to lie above this epsilon is
    reported as +inf after one evaluation of the capital: the verdict at that epsilon is the
    same, at a fraction of the cost (benchmarks of the decision only).
    """
    f = as_finite_matrix("values", values, (None, None))
    g = as_finite_matrix("predictions", predictions, f.shape)
    dlt = check_probability("delta", delta)
    _check_choice("aggregate", aggregate, ("mean", "max"))
    _check_choice("validity", validity, VALIDITIES)
    tau_arr = _check_tau(tau, f.shape)
    if bound is not None:
        if not (math.isfinite(bound) and bound > 0):
            raise InvalidParameterError(f"bound must be finite and > 0; got {bound!r}")
        if np.max(np.abs(f)) > bound:
            raise InvalidParameterError(f"values outside the declared range [-{bound}, {bound}]")
    elif validity in ("finite", "betting"):
        raise InvalidParameterError(f"validity {validity!r} needs the task's bound b")
    rhos, _ = pair_members(design, f.shape[0])
    n_sub = f.shape[0]
    n = int(design.pairs_per_level)
    groups: NDArray[np.int64] | None = None
    if checked is not None and spot_checks is not None:
        raise InvalidParameterError("give spot_checks (uniform subsets) or checked (groups)")
    if spot_checks is None and checked is None:
        d_spot, m_star = 0.0, 0
    else:
        d_spot = dlt * check_probability("spot_share", spot_share)
        if checked is not None:
            groups = np.unique(np.asarray(checked, dtype=np.int64))
            if len(groups) != len(np.asarray(checked)) or (
                len(groups) and (groups[0] < 0 or groups[-1] >= n)
            ):
                raise InvalidParameterError(f"checked must be distinct group indices in [0, {n})")
            m_star = max_undetected(n, len(groups), d_spot)
        else:
            assert spot_checks is not None
            m_star = max_undetected(n_sub, spot_checks, d_spot)
    if max_corrupted is not None:
        if not isinstance(max_corrupted, int) or max_corrupted < 0:
            raise InvalidParameterError(f"max_corrupted must be an int >= 0; got {max_corrupted!r}")
        m_star = max_corrupted
    frac = float(getattr(design, "p", 0.5)) if p is None else check_probability("p", p)
    if validity == "clt":
        refusal = clt_refusal(frac, n)
        if refusal is not None:
            raise InvalidParameterError(refusal)
    pieces = _Pieces.build(f, g, design, tau_arr, bound, prediction_range)
    common: _BoundOptions = {"aggregate": aggregate, "validity": validity, "detail": detail,
                             "decide_at": None if detail else decide_at}  # fmt: skip
    trusted_validity: Validity | None = None
    if groups is None or len(groups) < 3:
        res = _bound_err(pieces, None, m_star, (dlt - d_spot) / 2.0, None, **common)
        source, trusted_u, robust_u = "all", None, None
    else:
        # half of the rest to the checked groups alone, half to all of E; within the robust
        # half, clt spends a sixth on the checked groups' SD bounds (for S and for Q). The
        # normal approximation is held to the same condition at k checked groups as at n:
        # below it the trusted bound is the betting one, and no SD cap is read from them
        share = (dlt - d_spot) / 2.0
        k_clt = validity == "clt" and clt_refusal(frac, len(groups)) is None
        trusted_validity = validity if validity != "clt" or k_clt else "betting"
        if trusted_validity == "betting" and bound is None:
            raise InvalidParameterError(
                f"{len(groups)} checked groups are too few for validity 'clt' "
                f"({clt_refusal(frac, len(groups))}); the betting bound on them needs the "
                "task's bound b"
            )
        k_opts: _BoundOptions = {**common, "validity": trusted_validity}
        trusted = _bound_err(pieces, groups, 0, share / 2.0, None, **k_opts)
        sd_caps = None
        d_half = share / 2.0
        if k_clt and m_star > 0:
            d_half = share / 3.0
            sd_caps = pieces.sd_caps(groups, share / 6.0, aggregate == "mean")
        robust = _bound_err(pieces, None, m_star, d_half, sd_caps, **common)
        trusted_u, robust_u = trusted.u, robust.u
        res = trusted if trusted.u <= robust.u else robust
        source = "trusted" if trusted.u <= robust.u else "robust"
    kappa = upper_bias_coefficient(rhos)
    return Certificate(
        aggregate=aggregate,
        validity=validity,
        delta=dlt,
        delta_spot=d_spot,
        certified_epsilon=res.u,
        point=float(res.parts.point[0]),
        statistical=float(res.parts.statistical[0]),
        corruption=float(res.parts.corruption[0]),
        tau_slack=float(res.parts.tau_slack[0]),
        bias=res.bias,
        mse_upper=res.q_up,
        per_target=res.per_target,
        per_target_point=res.per_target_point,
        max_corrupted=m_star,
        trim=m_star if validity == "clt" and source != "trusted" else 0,
        spot_checks=spot_checks if groups is None else int(len(groups)) * (n_sub // n),
        n_subsets=n_sub,
        pairs_per_level=n,
        rhos=tuple(float(x) for x in rhos),
        kappa=kappa,
        tau=float(np.max(tau_arr)) if tau_arr.size else 0.0,
        checked_groups=None if groups is None else int(len(groups)),
        source=source,
        trusted_bound=trusted_u,
        robust_bound=robust_u,
        trusted_validity=trusted_validity,
    )


@dataclass(frozen=True)
class _Pieces:
    """Everything the bounds read, arranged by pair-sum group j (module doc).

    psi, dev_psi (L, n, Z): the products r(x) r(x') and their tau deviations per level;
    sq, dev_sq (|E|, Z): r^2 and its deviation per subset; u_lo, u_hi (n, Z) and q_lo, q_hi
    (|E|, Z): each row's honest range (None without a bound); big_u, big_q (Z,): the a-priori
    upper ends over every mask; psi_hi (L, n, Z), sq_hi (|E|, Z): ``finite``'s reaches."""

    a: FloatArray
    kappa: float
    shared: bool
    group_width: int
    subsets_of: NDArray[np.int64]  # (n, W): the subsets of each group j, design order
    psi: FloatArray
    dev_psi: FloatArray
    sq: FloatArray
    dev_sq: FloatArray
    psi_hi: FloatArray
    sq_hi: FloatArray
    u_lo: FloatArray | None
    u_hi: FloatArray | None
    q_lo: FloatArray | None
    q_hi: FloatArray | None
    big_u: FloatArray | None
    big_q: FloatArray | None

    @classmethod
    def build(
        cls,
        f: FloatArray,
        g: FloatArray,
        design: StabilityDesign,
        tau_arr: FloatArray,
        bound: float | None,
        prediction_range: tuple[FloatArray, FloatArray] | None,
    ) -> _Pieces:
        r = f - g
        rhos, arrange = pair_members(design, f.shape[0])
        levels, n = len(rhos), int(design.pairs_per_level)
        z_targets = f.shape[1]
        shared = design.layout == "shared-base"
        a = linear_weights(rhos)
        if shared:
            subsets_of = (1 + levels) * np.arange(n)[:, None] + np.arange(1 + levels)[None, :]
        else:  # pair l n + j holds subsets 2 (l n + j) and 2 (l n + j) + 1
            pair = np.arange(levels)[None, :] * n + np.arange(n)[:, None]  # (n, L)
            subsets_of = np.stack([2 * pair, 2 * pair + 1], axis=2).reshape(n, 2 * levels)
        ra, rb = arrange(r)
        ta, tb = arrange(tau_arr)
        psi = ra * rb
        dev_psi = ta * np.abs(rb) + tb * np.abs(ra) + 3.0 * ta * tb
        sq = r * r
        dev_sq = 2.0 * tau_arr * np.abs(r) + 3.0 * tau_arr * tau_arr
        u_lo = u_hi = q_lo = q_hi = big_u = big_q = None
        if bound is not None:
            reach = bound + np.abs(g)
            ga, gb = arrange(reach)
            psi_hi, sq_hi = ga * gb, reach * reach
            r_lo, r_hi = -bound - g, bound - g  # every honest r, subset by subset
            lo_a, lo_b = arrange(r_lo)
            hi_a, hi_b = arrange(r_hi)
            u_lo, u_hi = _pair_sum_range((lo_a, lo_b), (hi_a, hi_b), a, shared)
            q_lo, q_hi = _square_range(r_lo, r_hi)
            g_lo, g_hi = g.min(axis=0), g.max(axis=0)
            if prediction_range is not None:
                lo_in = as_finite_matrix(
                    "prediction_range", np.asarray(prediction_range[0])[None], (1, z_targets)
                )[0]
                hi_in = as_finite_matrix(
                    "prediction_range", np.asarray(prediction_range[1])[None], (1, z_targets)
                )[0]
                g_lo, g_hi = np.minimum(g_lo, lo_in), np.maximum(g_hi, hi_in)
            any_lo = np.broadcast_to(-bound - g_hi, (levels, z_targets))
            any_hi = np.broadcast_to(bound - g_lo, (levels, z_targets))
            big_u = _pair_sum_range((any_lo, any_lo), (any_hi, any_hi), a, shared)[1]
            big_q = _square_range(any_lo[0], any_hi[0])[1]
        else:
            psi_hi, sq_hi = np.full_like(psi, np.inf), np.full_like(sq, np.inf)
        return cls(
            a, upper_bias_coefficient(rhos), shared, 1 + levels if shared else 2,
            np.asarray(subsets_of, dtype=np.int64), psi, dev_psi, sq, dev_sq, psi_hi, sq_hi,
            u_lo, u_hi, q_lo, q_hi, big_u, big_q,
        )  # fmt: skip

    def sd_caps(
        self, groups: NDArray[np.int64], delta: float, avg: bool
    ) -> tuple[FloatArray, FloatArray]:
        """Upper confidence bounds on the honest SD of the pair-sums and of r^2, each at
        delta / 2 per target, from the checked groups (:func:`variance_upper_bound`)."""
        u = np.einsum("l,lnc->nc", self.a, self.psi[:, groups])
        sq = self.sq[self.subsets_of[groups].ravel()]
        if avg:
            u, sq = u.mean(axis=1, keepdims=True), sq.mean(axis=1, keepdims=True)
        d = delta / 2.0 / (1 if avg else u.shape[1])
        return (
            np.sqrt(variance_upper_bound(u, d)),
            np.sqrt(variance_upper_bound(sq, d)),
        )


class _BoundOptions(TypedDict):
    """What every :func:`_bound_err` call of one certificate shares (its keyword arguments)."""

    aggregate: Aggregate
    validity: Validity
    detail: bool
    decide_at: float | None


@dataclass(frozen=True)
class _Result:
    u: float
    parts: _Parts
    bias: float
    q_up: float
    per_target: FloatArray
    per_target_point: FloatArray


def _bound_err(
    pc: _Pieces,
    groups: NDArray[np.int64] | None,
    m_star: int,
    d_rest: float,
    sd_caps: tuple[FloatArray, FloatArray] | None,
    *,
    aggregate: Aggregate,
    validity: Validity,
    detail: bool,
    decide_at: float | None = None,
) -> _Result:
    """The bound on err from the groups ``groups`` (None: all n), m* of them possibly
    corrupted, at d_rest for S and d_rest for Q (module doc)."""
    a, kappa, shared = pc.a, pc.kappa, pc.shared
    if groups is None:
        psi, dev_psi, psi_hi = pc.psi, pc.dev_psi, pc.psi_hi
        subs = None
        u_lo, u_hi = pc.u_lo, pc.u_hi
    else:
        psi, dev_psi, psi_hi = pc.psi[:, groups], pc.dev_psi[:, groups], pc.psi_hi[:, groups]
        subs = np.sort(pc.subsets_of[groups].ravel())
        u_lo = None if pc.u_lo is None else pc.u_lo[groups]
        u_hi = None if pc.u_hi is None else pc.u_hi[groups]

    def rows(x: FloatArray | None) -> FloatArray | None:
        return x if x is None or subs is None else x[subs]

    sq, dev_sq, sq_hi = rows(pc.sq), rows(pc.dev_sq), rows(pc.sq_hi)
    q_lo, q_hi = rows(pc.q_lo), rows(pc.q_hi)
    assert sq is not None and dev_sq is not None and sq_hi is not None
    z_targets = psi.shape[2]

    def grouped(x: FloatArray) -> FloatArray:
        """Per-subset rows (|E|, C) -> one row per independent group (base or pair)."""
        return np.asarray(x.reshape(-1, pc.group_width, x.shape[-1]).mean(axis=1))

    def bound_all(d_s: float, d_q: float, avg: bool, parts: bool) -> tuple[_Parts, _Parts]:
        def col(x: FloatArray) -> FloatArray:
            return np.asarray(x.mean(axis=-1, keepdims=True)) if avg else x

        u = np.einsum("l,lnc->nc", a, col(psi))  # one row per pair index j: sum_l a_l psi_lj
        du = np.einsum("l,lnc->nc", np.abs(a), col(dev_psi))
        caps = (None, None) if sd_caps is None else sd_caps
        if validity == "betting":
            assert u_hi is not None and pc.big_u is not None and q_hi is not None
            assert pc.big_q is not None
            q_rows = grouped(col(sq))
            s_stop = q_stop = None
            if decide_at is not None and avg:
                # U = (S + kappa Q) / (1 + kappa) <= eps needs S <= eps (1 + kappa), since
                # Q >= 0 (the bound on a mean of squares is never below 0)
                s_stop = np.array([decide_at * (1 + kappa)])
            s_b = _bound_betting(u, m_star, d_s, du, col(u_hi), col(pc.big_u[None])[0], parts,
                                 s_stop)  # fmt: skip
            if s_stop is not None:
                s_up = s_b.upper
                if not np.all(np.isfinite(s_up)):  # U > eps already: Q need not be bounded
                    inf = np.full(s_up.shape, np.inf)
                    return s_b, _Parts(inf, inf, np.zeros_like(inf), np.zeros_like(inf))
                q_stop = (float(decide_at or 0.0) * (1 + kappa) - s_up) / max(kappa, 1e-12)
            q_b = _bound_betting(q_rows, m_star, d_q, grouped(col(dev_sq)), grouped(col(q_hi)),
                                 col(pc.big_q[None])[0], parts, q_stop)  # fmt: skip
            return s_b, q_b
        if validity == "clt":
            u_reach = q_reach = None
            if u_lo is not None and u_hi is not None and q_lo is not None and q_hi is not None:
                ub = u.mean(axis=0)
                u_reach = np.maximum(col(u_hi) - ub, ub - col(u_lo))
                qb = col(sq).mean(axis=0)
                q_reach = np.maximum(col(q_hi) - qb, qb - col(q_lo))
            return (
                _bound_clt(u, m_star, d_s, du, u_reach, caps[0]),
                _bound_clt(col(sq), m_star, d_q, col(dev_sq), q_reach, caps[1]),
            )
        pp, dp, ph = col(psi), col(dev_psi), col(psi_hi)
        sqa, ds, sh = col(sq)[None], col(dev_sq)[None], col(sq_hi)[None]
        return (
            _bound_finite(pp, a, m_star, d_s, dp, -ph, ph, shared),
            _bound_finite(sqa, np.ones(1), m_star, d_q, ds, np.zeros_like(sh), sh, False),
        )

    def combine(s_part: _Parts, q_part: _Parts) -> tuple[FloatArray, FloatArray, FloatArray]:
        s_up, q_up = s_part.upper, q_part.upper
        u = (s_up + kappa * q_up) / (1.0 + kappa)
        u = np.where(np.isfinite(s_up) & np.isfinite(q_up), u, np.inf)
        with np.errstate(invalid="ignore"):  # inf - inf: no finite bias to report
            bias = np.where(np.isfinite(u), u - s_up, 0.0)
        return u, bias, q_up

    if detail or aggregate == "max":
        per_s, per_q = bound_all(
            d_rest / z_targets, d_rest / z_targets, False, detail and aggregate == "max"
        )
        per_u, _, _ = combine(per_s, per_q)
    else:  # U only: the per-target bounds are left out (NaN)
        nan = np.full(z_targets, np.nan)
        per_s = per_q = _Parts(nan, nan, nan, nan)
        per_u = nan
    if aggregate == "max":
        worst = int(np.argmax(np.where(np.isnan(per_u), np.inf, per_u)))
        parts, q_part = _pick(per_s, worst), _pick(per_q, worst)
    else:
        s_agg, q_agg = bound_all(d_rest, d_rest, True, detail)
        parts, q_part = _pick(s_agg, 0), _pick(q_agg, 0)
    u_agg, bias, q_up = combine(parts, q_part)
    return _Result(float(u_agg[0]), parts, float(bias[0]), float(q_up[0]), per_u, per_s.point)


def _check_tau(tau: float | FloatArray, shape: tuple[int, ...]) -> FloatArray:
    """tau as an (|E|, Z) array of finite values >= 0 (a scalar, (|E|, Z) or (|E|, 1))."""
    if isinstance(tau, bool):
        raise InvalidParameterError(f"tau must be finite and >= 0; got {tau!r}")
    if isinstance(tau, int | float):
        if not (math.isfinite(tau) and tau >= 0):
            raise InvalidParameterError(f"tau must be finite and >= 0; got {tau!r}")
        return np.full(shape, float(tau))
    arr = np.asarray(tau, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != shape[0] or arr.shape[1] not in (1, shape[1]):
        raise ShapeError(f"tau must be a scalar, ({shape[0]}, {shape[1]}) or ({shape[0]}, 1); "
                         f"got {arr.shape}")  # fmt: skip
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise InvalidParameterError("every tau must be finite and >= 0")
    return np.asarray(np.broadcast_to(arr, shape), dtype=np.float64)


def _pick(parts: _Parts, j: int) -> _Parts:
    return _Parts(
        parts.point[j : j + 1],
        parts.statistical[j : j + 1],
        parts.corruption[j : j + 1],
        parts.tau_slack[j : j + 1],
    )


# -- planning ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificatePlan:
    """Sizes for the ``clt`` certificate and the width it predicts at err = epsilon / 2."""

    epsilon: float
    delta: float
    pairs_per_level: int
    n_subsets: int
    spot_checks: int
    max_corrupted: int
    predicted_width: float
    parts: dict[str, float]


def _pilot_pair_sums(
    values: FloatArray, predictions: FloatArray, design: StabilityDesign, aggregate: Aggregate
) -> tuple[FloatArray, FloatArray]:
    """The pair-sums u (n, Z) and residuals r = f - g of a pilot, inputs checked."""
    f = as_finite_matrix("values", values, (None, None))
    g = as_finite_matrix("predictions", predictions, f.shape)
    _check_choice("aggregate", aggregate, ("mean", "max"))
    r = f - g
    rhos, arrange = pair_members(design, f.shape[0])
    ra, rb = arrange(r)
    return np.einsum("l,lnc->nc", linear_weights(rhos), ra * rb), r


def pilot_figures(
    values: FloatArray, predictions: FloatArray, design: StabilityDesign, aggregate: Aggregate
) -> tuple[float, float]:
    """(SD of the pair-sums u_j, E r^2) from a pilot run: the mean over targets for ``mean``,
    the largest target for ``max``. Inputs as :func:`certify`."""
    u, r = _pilot_pair_sums(values, predictions, design, aggregate)
    sq = r * r
    if aggregate == "mean":
        return float(u.mean(axis=1).std(ddof=1)), float(sq.mean())
    return float(np.max(u.std(axis=0, ddof=1))), float(np.max(sq.mean(axis=0)))


def pilot_point(
    values: FloatArray, predictions: FloatArray, design: StabilityDesign, aggregate: Aggregate
) -> tuple[float, float]:
    """The certificate's point estimate of err on a pilot, without its bound, and its standard
    error. ``mean``: the mean pair-sum over bases and targets, SE from the bases. ``max``: the
    largest target's err, estimated by empirical Bayes: the raw largest of Z noisy per-target
    means is biased up by about SE sqrt(2 ln Z), and on a small pilot it is mostly noise. Each
    target's mean m_z (SE s_z) is shrunk to the grand mean by s_z^2 / (s_z^2 + t^2), with t^2 =
    max(0, Var_z m_z - mean s_z^2) the spread of the true errs the means show beyond their
    noise (s_z^2 less the grand mean's: the targets share their masks); the point is the
    largest shrunk mean, its SE the posterior SD of that target plus the grand mean's SE.
    Inputs as :func:`certify`."""
    u, _ = _pilot_pair_sums(values, predictions, design, aggregate)
    n = u.shape[0]
    if aggregate == "mean":
        per_base = u.mean(axis=1)
        return float(per_base.mean()), float(per_base.std(ddof=1) / math.sqrt(n))
    means = u.mean(axis=0)
    se2 = u.var(axis=0, ddof=1) / n
    z = len(means)
    if z == 1:
        return float(means[0]), float(math.sqrt(se2[0]))
    # the targets share their masks, so their noise is correlated: the grand mean's SE comes
    # from the per-base averages, and the deviations m_z - grand carry the rest of the noise
    grand = float(means.mean())
    se2_grand = float(u.mean(axis=1).var(ddof=1) / n)
    noise = np.maximum(se2 - se2_grand, 0.0)
    spread = max(0.0, float(means.var(ddof=1) - noise.mean()))
    keep = np.divide(spread, spread + noise, out=np.ones_like(noise), where=(spread + noise) > 0)
    shrunk = grand + keep * (means - grand)
    top = int(np.argmax(shrunk))
    return float(shrunk[top]), float(math.sqrt(keep[top] * noise[top] + se2_grand))


def predicted_width(
    n: int, m_star: int, sd_pair_sum: float, mse: float, delta_stat: float, kappa: float
) -> dict[str, float]:
    """Expected parts of certified_epsilon - point for a sample whose u_j are near-normal.

    statistical z sd / ((1 - 2g) sqrt(n)); corruption: the sandwich m* (q_{1-g} - q_g) / (n - 2m*)
    with normal quantiles, plus sd sqrt(g / (1 - g)); bias kappa mse / (1 + kappa) (an upper
    figure: the certificate's is kappa (Q - S) / (1 + kappa)). g = m*/n.
    """
    if 2 * m_star >= n - 1:
        return {"statistical": math.inf, "corruption": math.inf, "bias": math.inf}
    g = m_star / n
    z = float(norm.ppf(1.0 - delta_stat))
    stat = z * sd_pair_sum / ((1.0 - 2.0 * g) * math.sqrt(n))
    corr = 0.0
    if m_star:
        spread = 2.0 * float(norm.ppf(1.0 - g)) * sd_pair_sum
        corr = m_star * spread / (n - 2 * m_star) + sd_pair_sum * math.sqrt(g / (1.0 - g))
    return {"statistical": stat, "corruption": corr, "bias": kappa * mse / (1.0 + kappa)}


def plan_certificate(
    epsilon: float,
    delta: float,
    *,
    sd_pair_sum: float,
    mse: float,
    rhos: tuple[float, ...] = (0.0, 0.2, 0.4),
    spot_fraction: float = 0.1,
    spot_share: float = 0.5,
    n_targets_split: int = 1,
    layout: str = "pairs",
    trusted: bool = False,
    assumed_err: float | None = None,
) -> CertificatePlan:
    """Smallest n pairs per level (with k = spot_fraction |E| spot-checks) such that a g with
    err = epsilon / 2 is accepted w.p. >= 1 - delta under the normal approximation:
    epsilon / 2 + z_{1-delta} SE + predicted_width(...) <= epsilon.

    ``sd_pair_sum``, ``mse``: from :func:`pilot_figures` (take an upper figure); for ``max``
    pass ``n_targets_split = Z``. ``layout``: ``pairs`` (|E| = 2 L n) or ``shared-base``
    (|E| = (1 + L) n; ``sd_pair_sum`` then from a shared-base pilot). ``trusted``: the
    values are the Verifier's own (checking alone): m* = 0 and no delta for spot-checks.
    ``assumed_err`` (default epsilon / 2): the err of the attribution the size must accept,
    e.g. an upper figure from the pilot (:func:`pilot_point`), for a first look.
    """
    eps = _check_positive_float("epsilon", epsilon)
    dlt = check_probability("delta", delta)
    frac = check_probability("spot_fraction", spot_fraction)
    levels = len(rhos)
    kappa = upper_bias_coefficient(np.asarray(rhos, dtype=np.float64))
    d_spot = 0.0 if trusted else dlt * spot_share
    d_stat = (dlt - d_spot) / 2.0 / n_targets_split
    z_c = float(norm.ppf(1.0 - dlt))
    assumed = eps / 2 if assumed_err is None else float(assumed_err)
    if not (math.isfinite(assumed) and 0 <= assumed < eps):
        raise InvalidParameterError(f"assumed_err must lie in [0, epsilon); got {assumed_err!r}")

    _check_choice("layout", layout, ("pairs", "shared-base"))
    per_j = 2 * levels if layout == "pairs" else 1 + levels

    def margin(n: int) -> tuple[float, dict[str, float], int, int]:
        n_sub = per_j * n
        k = max(1, math.ceil(frac * n_sub))
        m_star = 0 if trusted else max_undetected(n_sub, k, d_spot)
        parts = predicted_width(n, m_star, sd_pair_sum, mse, d_stat, kappa)
        parts["completeness"] = z_c * sd_pair_sum / math.sqrt(n)
        return eps - assumed - sum(parts.values()), parts, k, m_star

    n = 16
    while margin(n)[0] < 0:
        n *= 2
        if n > 2**26:
            raise InvalidParameterError("no size up to 2^26 pairs per level meets this epsilon")
    lo, hi = n // 2, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if margin(mid)[0] < 0 else (lo, mid)
    _, parts, k, m_star = margin(hi)
    return CertificatePlan(eps, dlt, hi, per_j * hi, k, m_star, sum(parts.values()), parts)


def _check_positive_float(name: str, value: float) -> float:
    """``value`` as float if finite and > 0 (InvalidParameterError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidParameterError(f"{name} must be > 0; got {value!r}")
    if not math.isfinite(value):
        raise InvalidParameterError(f"{name} must be finite; got {value!r}")
    return float(value)


def variance_upper_bound(trusted: FloatArray, delta: float) -> FloatArray:
    """Upper confidence bound (C,) on the variance per column from trusted rows (k, C):
    V_k + z_{1-delta} sqrt((m_4 - V_k^2) / k), the normal approximation of the sample
    variance (the ``clt`` validity's; :func:`variance_lower_bound` is its mirror)."""
    x = as_finite_matrix("trusted", trusted, (None, None))
    dlt = check_probability("delta", delta)
    k = x.shape[0]
    if k < 3:
        raise InvalidParameterError(f"a variance bound needs at least 3 trusted values; got {k}")
    var = x.var(axis=0, ddof=1)
    m4 = np.mean((x - x.mean(axis=0)) ** 4, axis=0)
    se = np.sqrt(np.maximum(m4 - var**2, 0.0) / k)
    return np.asarray(var + _z(dlt) * se)


def variance_lower_bound(
    trusted: FloatArray, delta: float, *, validity: Validity = "clt", bound: float | None = None
) -> FloatArray:
    """Lower confidence bound (Z,) on Var f per target from values the Verifier trusts.

    For a relative epsilon (a fraction of Var f) to stay sound, the variance must be the
    Verifier's own: pass f on its spot-checked subsets (re-trained locally, each marginally
    B_p), shape (k, Z). ``clt``: V_n - z_{1-delta} sqrt((m_4 - V_n^2) / k), the normal
    approximation of the sample variance (m_4 the fourth central moment). ``finite``: Maurer &
    Pontil (2009, Thm 10) for values in an interval of length R = 2b:
    sigma >= sqrt(V_n) - R sqrt(2 ln(1/delta) / (k - 1)). Clipped at 0.
    """
    x = as_finite_matrix("trusted", trusted, (None, None))
    dlt = check_probability("delta", delta)
    _check_choice("validity", validity, ("clt", "finite"))
    k = x.shape[0]
    if k < 3:
        raise InvalidParameterError(f"a variance bound needs at least 3 trusted values; got {k}")
    var = x.var(axis=0, ddof=1)
    if validity == "finite":
        if bound is None:
            raise InvalidParameterError("validity 'finite' needs the task's bound b")
        b = _check_positive_float("bound", bound)
        lo = np.sqrt(var) - 2.0 * b * math.sqrt(2.0 * math.log(1.0 / dlt) / (k - 1))
        return np.asarray(np.maximum(lo, 0.0) ** 2)
    m4 = np.mean((x - x.mean(axis=0)) ** 4, axis=0)
    se = np.sqrt(np.maximum(m4 - var**2, 0.0) / k)
    return np.asarray(np.maximum(var - float(norm.ppf(1.0 - dlt)) * se, 0.0))
