"""Confidence bounds on a mean by betting, for bounded values some of which may be corrupted.

The certificate's ``betting`` validity (:mod:`protocol.certificate`) rests on these. They are
non-asymptotic (no normal approximation), adapt to the variance, and need only an a-priori
upper (or lower) end of the honest values: the task's clip bound b makes one.

**Capital.** Let z_1..z_n be i.i.d. with mean mu and z <= H almost surely. For a hypothesis m < H
and a bet c in (0, 1), put lambda = c / (H - m) and K_c(m) = prod_i (1 + lambda (m - z_i)).
Every factor is >= 1 - c > 0, and if mu >= m then E[1 + lambda (m - z)] = 1 + lambda (m - mu)
<= 1, so K_c(m) is a non-negative supermartingale in i (Waudby-Smith & Ramdas, "Estimating means
of bounded random variables by betting", JRSS-B 2024). The mixture K(m) = mean_c K_c(m) over a
fixed grid of bets is one too, so by Ville's inequality P(exists t: K_t(m) >= 1/delta) <= delta
when mu >= m. U = inf{m : K(m) >= 1/delta} is therefore an upper confidence bound on mu at level
1 - delta, valid at every n at once (anytime: a Verifier may look after every round and stop).
K(m) increases with m (each factor does, since z <= H), so U is found by bisection.
The grid of bets is fixed before any value is seen, which is what keeps the bound valid when
some values are adversarial (below); its price is ln(G) in log-capital (about 40 % more width
than an oracle bet at delta = 0.05), bought back by adapting to the variance: near the
optimum c ~ (H - m) sqrt(2 ln(1/delta) / (n sigma^2)), the width is about
sigma sqrt(2 ln(G / delta) / n), plus (H - mu) ln(G / delta) / n when the range is large: the
range price no bound can avoid for values that an unseen atom of mass ~1/n at H could carry.

**Corruption.** The Verifier sees y, equal to the honest z except on at most m* rows chosen by
an adversary who knows everything (also future values). For an honest row z_i <= y_i + s_i
(s the CHECKEQUIV slack); for a corrupted one only z_i <= H_i, the row's own a-priori end. The
bets do not depend on the values, so for each c, log K_c(m; z) >= sum_i log(1 + lambda (m - y_i
- s_i)) - (the m* largest losses log(1 + lambda(m - y_i - s_i)) - log(1 + lambda (m - H_i))):
a deterministic lower bound on the honest capital, computed from y. Rejecting m only when the
lower bound reaches 1/delta keeps P(mu > U) <= delta whatever the adversary does. The price is
(per bet) the m* largest losses, about m* lambda (H_i - y_i): the range bound of a corrupted
value, charged only where the bet is large.

Arrays: ``values``, ``slack``, ``row_upper`` (n, C); ``upper`` (C,); results (C,).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from protocol.errors import InvalidParameterError, ShapeError

__all__ = ["BET_GRID", "betting_lower", "betting_upper"]

FloatArray = NDArray[np.float64]

#: The mixture's bets c: 16 points, a factor 2^(2/3) apart, from 0.98 down to 6.2e-4.
BET_GRID: tuple[float, ...] = tuple(0.98 * 2.0 ** (-2.0 * i / 3.0) for i in range(16))
_ITERATIONS = 64  # bisection steps at most (it stops at 1e-6 of the initial bracket)


def _grid_capital(
    m: FloatArray,
    y: FloatArray,
    upper: FloatArray,
    row_upper: FloatArray,
    m_star: int,
    bets: NDArray[np.int64],
) -> FloatArray:
    """log of a lower bound on the mixture's honest capital at hypotheses m (P, C) (module doc).

    Only the bets ``bets`` (B, C) (indices into :data:`BET_GRID`, chosen per column) are summed;
    leaving the others out lowers the capital, so the bound stays valid, and it costs nothing
    where the left-out bets are far from the optimum (their capital is tiny there)."""
    gap = np.maximum(upper[None, :] - m, 1e-300)  # (P, C)
    grid = np.asarray(BET_GRID)
    out = np.empty((bets.shape[0],) + m.shape)
    for b in range(bets.shape[0]):
        c = grid[bets[b]][None, :]  # (1, C)
        lam = (c / gap)[:, None, :]  # (P, 1, C)
        term = np.log1p(np.maximum(lam * (m[:, None, :] - y[None]), -c[:, None, :]))
        total = term.sum(axis=1)
        if m_star > 0:
            worst = np.log1p(np.maximum(lam * (m[:, None, :] - row_upper[None]), -c[:, None, :]))
            loss = term - worst
            n = loss.shape[1]
            k = min(m_star, n)
            total = total - np.partition(loss, n - k, axis=1)[:, n - k :].sum(axis=1)
        out[b] = total
    peak = out.max(axis=0)
    return np.asarray(peak + np.log(np.exp(out - peak).sum(axis=0) / len(BET_GRID)))


def _plugin_capital(
    m: FloatArray, y: FloatArray, upper: FloatArray, lam_hat: FloatArray
) -> FloatArray:
    """log capital (P, C) of the predictable plug-in bets lambda_i = min(lam_hat_i,
    0.98 / (H - m)) at hypotheses m (P, C)."""
    cap = BET_GRID[0] / np.maximum(upper[None, :] - m, 1e-300)  # (P, C)
    lam = np.minimum(lam_hat[None], cap[:, None, :])  # (P, n, C)
    return np.asarray(np.log1p(np.maximum(lam * (m[:, None, :] - y[None]), -BET_GRID[0])).sum(1))


def _plugin_bets(y: FloatArray, upper: FloatArray, delta: float, horizon: int) -> FloatArray:
    """Predictable bets (n, C): lambda_0 = 0, then lambda_i = sqrt(2 ln(1/delta) / (horizon
    sigma_i^2)) with sigma_i^2 = (s_0^2 + sum_{k<i} (y_k - mean_{<k})^2) / (i + 1) from rows
    before i only, s_0 = (H - y_0) / 2 (Waudby-Smith & Ramdas's PrPl rule, its prior the
    first row's distance to the end)."""
    n, cols = y.shape
    lam = np.zeros((n, cols))
    if n < 2:
        return lam
    idx = np.arange(1, n + 1, dtype=np.float64)[:, None]
    run_mean = np.cumsum(y, axis=0) / idx  # mean of rows <= i
    prior_mean = np.concatenate([y[:1], run_mean[:-1]], axis=0)  # mean of rows < i (row 0: y_0)
    sq = np.cumsum((y - prior_mean) ** 2, axis=0)  # sum over rows <= i
    prior = np.maximum((upper - y[0]) / 2.0, 1e-12 * (1.0 + np.abs(upper))) ** 2
    var_before = (prior[None, :] + sq[:-1]) / (idx[:-1] + 1.0)  # for rows 1..n-1
    lam[1:] = np.sqrt(2.0 * math.log(1.0 / delta) / (horizon * var_before))
    return lam


def betting_upper(
    values: FloatArray,
    *,
    upper: FloatArray,
    delta: float,
    corrupted: int = 0,
    row_upper: FloatArray | None = None,
    slack: FloatArray | None = None,
    horizon: int | None = None,
) -> FloatArray:
    """Upper confidence bound (C,) at level 1 - delta on the mean of i.i.d. honest values that
    lie below ``upper`` (C,), from ``values`` (n, C) in an order fixed before they were seen, of
    which up to ``corrupted`` rows may be arbitrary (module doc). ``row_upper`` (n, C): each
    row's own end (default ``upper``); ``slack`` (n, C) >= 0: an honest row may exceed its
    reported value by that much.

    Trusted values (``corrupted = 0``, no slack) use predictable plug-in bets tuned for
    ``horizon`` rows (default n): anytime-valid, and tighter than the grid. Otherwise the bets
    are the fixed grid, which an adversary cannot steer."""
    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] < 1:
        raise ShapeError(f"values must be (n, C) with n >= 1; got {y.shape}")
    n, cols = y.shape
    hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), (cols,)).copy()
    if not np.all(np.isfinite(hi)):
        raise InvalidParameterError("betting bounds need a finite a-priori upper end")
    if not (0.0 < delta < 1.0):
        raise InvalidParameterError(f"delta must be in (0, 1); got {delta!r}")
    if not isinstance(corrupted, int | np.integer) or corrupted < 0:
        raise InvalidParameterError(f"corrupted must be an integer >= 0; got {corrupted!r}")
    if corrupted >= n:
        return hi
    rows_hi = hi[None, :] if row_upper is None else np.asarray(row_upper, dtype=np.float64)
    rows_hi = np.minimum(np.broadcast_to(rows_hi, y.shape), hi[None, :])
    trusted = corrupted == 0 and (slack is None or not np.any(np.asarray(slack) > 0))
    s = np.zeros_like(y) if slack is None else np.broadcast_to(np.asarray(slack, float), y.shape)
    # an honest row is at most y + s, and never above its own end
    z = np.minimum(y + s, rows_hi)
    target = math.log(1.0 / delta)
    if trusted:
        lam_hat = _plugin_bets(z, hi, delta, n if horizon is None else max(int(horizon), 1))

        def capital(m: FloatArray) -> FloatArray:
            return _plugin_capital(m, z, hi, lam_hat)
    else:
        sd = np.maximum(z.std(axis=0), 1e-12 * (1.0 + np.abs(hi)))
        c_opt = (hi - z.mean(axis=0)) * np.sqrt(2.0 * (target + 3.0) / n) / sd
        near = np.abs(np.log(np.asarray(BET_GRID))[:, None] - np.log(np.clip(c_opt, 1e-9, 1)))
        bets = np.argsort(near, axis=0)[:3]

        def capital(m: FloatArray) -> FloatArray:
            return _grid_capital(m, z, hi, rows_hi, int(corrupted), bets)

    # at m = lo every term is <= 0 and the capital <= 1 < 1/delta: never rejected
    lo = np.minimum(z.min(axis=0), hi) - 1e-12 * (1.0 + np.abs(hi))
    top = hi.copy()
    # bisection (the capital is increasing in m) to 1e-6 of the initial bracket
    tol = 1e-6 * (top - lo) + 1e-12 * (1.0 + np.abs(top))
    for _ in range(_ITERATIONS):
        mid = 0.5 * (lo + top)
        rejected = capital(mid[None, :])[0] >= target
        top = np.where(rejected, mid, top)
        lo = np.where(rejected, lo, mid)
        if np.all(top - lo <= tol):
            break
    return np.asarray(top)


def betting_lower(
    values: FloatArray,
    *,
    lower: FloatArray,
    delta: float,
    corrupted: int = 0,
    row_lower: FloatArray | None = None,
    slack: FloatArray | None = None,
    horizon: int | None = None,
) -> FloatArray:
    """Lower confidence bound (C,): :func:`betting_upper` applied to the negated values
    (honest values above ``lower``, each row above ``row_lower``, below y - slack at most)."""
    neg_rows = None if row_lower is None else -np.asarray(row_lower, dtype=np.float64)
    return np.asarray(
        -betting_upper(
            -np.asarray(values, dtype=np.float64),
            upper=-np.asarray(lower, dtype=np.float64),
            delta=delta,
            corrupted=corrupted,
            row_upper=neg_rows,
            slack=slack,
            horizon=horizon,
        )
    )
