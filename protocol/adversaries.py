"""Strategic corruption of reported values against the error-gap certificate.

See docs/protocol.md#certificate.

The design, the estimator and the aggregate are public; only the spot-check set C is secret.
A cheating Prover holding a datamodel g with err(g) > epsilon reports honest f except on
``count`` subsets, chosen to push the estimate of c_0 + c_1 = mean_j u_j down, with
u_j = sum_l a_l r(x_{l,j}) r(x'_{l,j}), r = f - g. Every function here is pure: honest values
in, corrupted copy out. Corrupted values stay inside [-b, b] (a range check catches the rest).

**One bilinear form for both layouts.** Split the subsets into disjoint *items*, each a head
row h and tails t_1..t_M with weights w, contributing v = r(h) sum_m w_m r(t_m):

* pair layout (:class:`~protocol.sampling.ChallengeDesign`): one item per pair (l, j), head x,
  one tail x' with weight a_l; u_j is the sum of the L items of index j;
* shared-base layout (:class:`~protocol.sampling.SharedBaseDesign`): one item per base j,
  head x_j, tails x'_{l,j} with weights a_l; u_j is that item. A corrupted base moves every
  level of u_j at once (by (r_new - r) sum_l a_l r(x'_l)); a corrupted copy moves one level
  (by a_l r(x_j) (r_new - r)).

**extreme** (:func:`corrupt_extreme`, against the plain mean). For a fixed set S of corrupted
rows the plain estimate is multilinear in their values (each row enters each product once),
so its minimum over the box [-b, b]^{S x Z} is at a vertex: every corrupted value is -b or +b,
target by target. Within an item the minimum of r(h) * inner over r(h) in [-b - g, b - g] and
inner in [inner_lo, inner_hi] (linear in the corrupted tails) is at one of the four corners.
The gain of S is sum_z (v - min v) (the mean over targets is the objective), G_i(c) the best
gain of c rows of item i, found by enumerating its 2^(1+M) subsets. Items add up, so spending
``count`` rows is a multiple-choice knapsack, solved exactly by dynamic programming. G_i is
convex in c: corrupting a base *and* its rho0 copy gives about -(b + |g|) |a_1| (b + |g|), an
order b / |r| more than either alone, so the adversary corrupts whole groups where it can.

**quiet** (:func:`corrupt_quiet`, against the certificate's trimmed mean). A trimmed mean cuts
t = m* values at each end, so the size of a corrupted value buys nothing once it is past the
trim point, and extreme values inflate the observed SD that the trimming-bias term charges.
What lowers the trimmed mean is moving values from the top of the sample to its bottom: each
one shifts the band down by one order statistic. So the quiet adversary takes the ``count``
largest u_j (which also lowers the top-tail sum of the sandwich term and the SD), and moves
each, with the one row of its group that gets there with the smallest change (the
high-leverage row: du_j / dr is r(x'_l) a_l summed for a base, a_l r(x_j) for a copy), to the
honest u at rank ``rank``, so the spread stays low. The best rank is the trim t = m* (the
band's lower edge); measured on the planted task at |E| = 12,000, k = 1,200 (m* = 34), it
gives a 1-3 % lower certificate than rank 0 or n / 10. The spot-check count k is not in the
challenge, so the default is ``count`` (= t when the Prover guesses count = m*).
``aggregate="mean"`` shifts every target's u_j by the same amount (the certificate trims the
mean over targets), ``"max"`` moves each target to its own rank value.

**The best count** against k secret spot-checks: P(accept) = P(all k checks miss the count
rows) x P(the decision accepts | count). The certificate charges m* = max_undetected(|E|, k,
delta_spot) rows, and P(all pass | 2 (m* + 1)) <= P(all pass | m* + 1)^2 <= delta_spot^2
(the hypergeometric factors satisfy (A - 2m) A <= (A - m)^2), so no count beyond 2 m* + 2 is
worth trying: :func:`strategic_counts` is the grid up to there, :func:`best_count` picks the
count with the largest P(accept).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from protocol.certificate import max_undetected, pass_probability
from protocol.checks import as_finite_matrix, check_positive
from protocol.datamodel import Datamodel
from protocol.errors import InvalidParameterError, ShapeError
from protocol.residual import StabilityDesign, linear_weights

__all__ = [
    "best_count",
    "concentrated_error",
    "corrupt_extreme",
    "corrupt_neutral",
    "corrupt_quiet",
    "strategic_counts",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class _Items:
    """Heads (I,), tails (I, M) row indices, weights (I, M), and u index j (I,) of each item."""

    heads: IntArray
    tails: IntArray
    weights: FloatArray
    pair_sum: IntArray
    n: int

    @property
    def rows(self) -> IntArray:
        """All rows of each item, head first: (I, 1 + M)."""
        return np.asarray(np.concatenate([self.heads[:, None], self.tails], axis=1))


def _items(design: StabilityDesign, n_rows: int) -> _Items:
    """The items of either layout (module doc); the row layout is the certificate's."""
    rhos = np.asarray(design.rhos, dtype=np.float64)
    levels, n = len(rhos), int(design.pairs_per_level)
    a = linear_weights(rhos)
    if design.layout == "shared-base":
        group = 1 + levels
        if n_rows != group * n:
            raise ShapeError(f"the design has {group * n} subsets; got {n_rows} rows of values")
        heads = group * np.arange(n, dtype=np.int64)
        tails = heads[:, None] + 1 + np.arange(levels, dtype=np.int64)[None, :]
        return _Items(heads, tails, np.tile(a, (n, 1)), np.arange(n, dtype=np.int64), n)
    if n_rows != 2 * levels * n:
        raise ShapeError(f"the design has {2 * levels * n} subsets; got {n_rows} rows of values")
    heads = 2 * np.arange(levels * n, dtype=np.int64)
    weights = np.repeat(a, n)[:, None]
    pair_sum = np.tile(np.arange(n, dtype=np.int64), levels)
    return _Items(heads, heads[:, None] + 1, weights, pair_sum, n)


def _prepare(
    values: FloatArray, predictions: FloatArray, design: StabilityDesign, count: int, bound: float
) -> tuple[FloatArray, FloatArray, _Items, int, float]:
    f = as_finite_matrix("values", values, (None, None))
    g = as_finite_matrix("predictions", predictions, f.shape)
    b = check_positive("bound", bound)
    if not isinstance(count, int | np.integer) or not 0 <= count <= len(f):
        raise InvalidParameterError(f"count must be an integer in [0, |E|]; got {count!r}")
    return f, g, _items(design, len(f)), int(count), b


@dataclass(frozen=True)
class _Box:
    """Every item's rows gathered once: head r, its ends, tail r and the tail ends that
    minimise / maximise w r, all (I, Z) or (I, M, Z)."""

    rh: FloatArray
    head_ends: tuple[FloatArray, FloatArray]
    tail_r: FloatArray
    tail_low: FloatArray
    tail_high: FloatArray
    w: FloatArray

    @classmethod
    def gather(cls, items: _Items, r: FloatArray, lo: FloatArray, hi: FloatArray) -> _Box:
        w = items.weights[:, :, None]
        lo_t, hi_t = lo[items.tails], hi[items.tails]
        down = w * lo_t <= w * hi_t
        return cls(
            r[items.heads],
            (lo[items.heads], hi[items.heads]),
            r[items.tails],
            np.where(down, lo_t, hi_t),
            np.where(down, hi_t, lo_t),
            w,
        )


def _corner(box: _Box, mask: int) -> tuple[FloatArray, FloatArray]:
    """Min over the box of every item's v with the rows in ``mask`` free (bit 0 the head, bit
    1 + m tail m): (v_min (I, Z), the new r of every item row (I, 1 + M, Z))."""
    free = np.array([(mask >> (1 + m)) & 1 for m in range(box.w.shape[1])], dtype=bool)
    tail_lo = np.where(free[None, :, None], box.tail_low, box.tail_r)
    tail_hi = np.where(free[None, :, None], box.tail_high, box.tail_r)
    inner = ((box.w * tail_lo).sum(axis=1), (box.w * tail_hi).sum(axis=1))
    heads = box.head_ends if mask & 1 else (box.rh,)
    prods = np.stack([h * side for h in heads for side in inner])  # (corners, I, Z)
    best = np.argmin(prods, axis=0)
    head_new = np.choose(best // 2, heads) if len(heads) == 2 else heads[0]
    tails_new = np.where((best % 2 == 0)[:, None, :], tail_lo, tail_hi)
    v_min = np.take_along_axis(prods, best[None], axis=0)[0]
    return np.asarray(v_min), np.asarray(np.concatenate([head_new[:, None], tails_new], axis=1))


def _allocate(gain: FloatArray, count: int) -> IntArray:
    """Rows per item (I,) maximising sum_i gain[i, c_i] with sum_i c_i <= count; gain (I, K + 1)
    is the best gain of c rows of item i (gain[:, 0] = 0). Exact: a multiple-choice knapsack
    solved by dynamic programming over the candidate items, for each size c the ``count``
    items with the largest gain[:, c] (an optimum that uses an item at size c outside that set
    leaves one inside it unused, at least as good: swap them)."""
    n_items, k1 = gain.shape
    chosen = np.zeros(n_items, dtype=np.int64)
    if count == 0 or n_items == 0:
        return chosen
    tops = []
    for c in range(1, k1):
        col = -gain[:, c]
        tops.append(
            np.argpartition(col, count - 1)[:count] if count < n_items else np.arange(n_items)
        )
    cand = np.unique(np.concatenate(tops))
    dp = np.zeros(count + 1)  # best gain with at most s rows
    take = np.zeros((len(cand), count + 1), dtype=np.int8)
    for idx, i in enumerate(cand):
        best = dp.copy()
        for c in range(1, min(k1 - 1, count) + 1):
            if not gain[i, c] > 0:
                continue
            trial = dp[: count + 1 - c] + gain[i, c]
            better = trial > best[c:]
            best[c:][better] = trial[better]
            take[idx, c:][better] = c
        dp = best
    s = count
    for idx in range(len(cand) - 1, -1, -1):
        c = int(take[idx, s])
        chosen[cand[idx]] = c
        s -= c
    return chosen


def corrupt_extreme(
    values: FloatArray,
    predictions: FloatArray,
    design: StabilityDesign,
    count: int,
    *,
    bound: float,
) -> FloatArray:
    """Replace ``count`` values by +-b where the plain mean of u_j falls most (module doc).

    ``values``, ``predictions`` (|E|, Z) in design order (either layout); returns (|E|, Z).
    """
    f, g, items, count, b = _prepare(values, predictions, design, count, bound)
    r = f - g
    lo, hi = -b - g, b - g
    box = _Box.gather(items, r, lo, hi)
    honest = box.rh * (box.w * box.tail_r).sum(axis=1)
    width = 1 + items.tails.shape[1]
    gain = np.full((len(items.heads), width + 1), -np.inf)
    gain[:, 0] = 0.0
    best_mask = np.zeros((len(items.heads), width + 1), dtype=np.int64)
    for mask in range(1, 2**width):
        size = bin(mask).count("1")
        v_min, _ = _corner(box, mask)
        gm = (honest - v_min).sum(axis=1)
        better = gm > gain[:, size]
        gain[better, size] = gm[better]
        best_mask[better, size] = mask
    chosen = _allocate(gain, count)
    out = f.copy()
    rows = items.rows
    masks = best_mask[np.arange(len(chosen)), chosen]
    for mask in np.unique(masks[chosen > 0]):
        pick = np.flatnonzero((chosen > 0) & (masks == mask))
        _, new = _corner(box, int(mask))
        for m in range(width):
            if (int(mask) >> m) & 1:
                hit = rows[pick, m]
                out[hit] = np.where(new[pick, m] == hi[hit], b, -b)  # a vertex, exactly
    return out


def _pair_sums(items: _Items, r: FloatArray) -> tuple[FloatArray, FloatArray, IntArray]:
    """u (n, Z), and per pair index j its group's rows (n, R) and du_j / dr slopes (n, R, Z)."""
    n = items.n
    w = items.weights[:, :, None]
    rh, rt = r[items.heads], r[items.tails]
    u = np.zeros((n, r.shape[1]))
    np.add.at(u, items.pair_sum, rh * (w * rt).sum(axis=1))
    # du_j / dr of every row of j's group: head (w . r_tails), tail m (r_head w_m)
    slopes = np.concatenate([(w * rt).sum(axis=1)[:, None], rh[:, None] * w], axis=1)
    order = np.argsort(items.pair_sum, kind="stable")
    group_rows = items.rows[order].reshape(n, -1)
    return u, slopes[order].reshape(n, group_rows.shape[1], -1), group_rows


def _move_one_row(
    f: FloatArray,
    g: FloatArray,
    items: _Items,
    chosen: IntArray,
    move: FloatArray,
    b: float,
) -> FloatArray:
    """Move u_j by ``move[j]`` (n, Z) for each chosen pair index j with the one row of its group
    that gets closest (smallest miss, then smallest change), inside [-b, b]."""
    r = f - g
    lo, hi = -b - g, b - g
    _, group_slopes, group_rows = _pair_sums(items, r)
    out = f.copy()
    if len(chosen) == 0:
        return out
    want = move[chosen][:, None, :]  # (J, 1, Z)
    sl = group_slopes[chosen]  # (J, R, Z)
    rows = group_rows[chosen]  # (J, R)
    cur = r[rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(np.abs(sl) > 1e-12, want / sl, 0.0)
    new = np.clip(cur + step, lo[rows], hi[rows])
    got = sl * (new - cur)
    short = np.abs(want - got).sum(axis=2) + 1e-9 * np.abs(new - cur).sum(axis=2)
    pick = np.argmin(short, axis=1)
    j_idx = np.arange(len(chosen))
    hit = rows[j_idx, pick]
    out[hit] = np.clip(g[hit] + new[j_idx, pick], -b, b)
    return out


def _prepare_move(
    values: FloatArray, predictions: FloatArray, design: StabilityDesign, count: int,
    bound: float, aggregate: str,
) -> tuple[FloatArray, FloatArray, _Items, int, float, FloatArray]:  # fmt: skip
    """:func:`_prepare` for the one-row movers, the aggregate checked, and the pair-sums u."""
    f, g, items, count, b = _prepare(values, predictions, design, count, bound)
    if aggregate not in ("mean", "max"):
        raise InvalidParameterError(f"aggregate must be 'mean' or 'max'; got {aggregate!r}")
    return f, g, items, count, b, _pair_sums(items, f - g)[0]


def corrupt_quiet(
    values: FloatArray,
    predictions: FloatArray,
    design: StabilityDesign,
    count: int,
    *,
    bound: float,
    aggregate: Literal["mean", "max"] = "mean",
    rank: int | None = None,
) -> FloatArray:
    """Move the ``count`` largest u_j to the honest u at ``rank`` with one row each (module
    doc): no extreme value, a smaller spread. Inputs and output as :func:`corrupt_extreme`."""
    f, g, items, count, b, u = _prepare_move(values, predictions, design, count, bound, aggregate)
    n = items.n
    rank = min(count, n - 1) if rank is None else rank
    if not isinstance(rank, int) or not 0 <= rank < n:
        raise InvalidParameterError(f"rank must be an integer in [0, n); got {rank!r}")
    mean_u = u.mean(axis=1)
    if aggregate == "mean":
        goal = np.sort(mean_u)[rank]
        move = np.broadcast_to((goal - mean_u)[:, None], u.shape)
    else:
        move = np.minimum(np.sort(u, axis=0)[rank][None, :] - u, 0.0)
    top = np.argsort(-mean_u, kind="stable")[:count]
    top = top[np.any(move[top] < 0, axis=1)]
    return _move_one_row(f, g, items, top, np.asarray(move), b)


def corrupt_neutral(
    values: FloatArray,
    predictions: FloatArray,
    design: StabilityDesign,
    count: int,
    *,
    bound: float,
    aggregate: Literal["mean", "max"] = "mean",
) -> FloatArray:
    """Set the ``count`` pair-sums furthest from the median to the median, one row each.

    Against a bound that reads its spread from the observed values this is the strongest
    cheap move when a few values carry the variance (small p, nearly deterministic training):
    the honest tail is hidden, the observed SD, the trimming bias and the sandwich all shrink,
    and nothing looks extreme. ``mean`` moves every target of u_j by the same amount (to the
    median of the mean over targets, pair-sums ranked by that mean); ``max`` moves each target
    to its own median. Inputs and output as :func:`corrupt_extreme`."""
    f, g, items, count, b, u = _prepare_move(values, predictions, design, count, bound, aggregate)
    mean_u = u.mean(axis=1)
    if aggregate == "mean":
        mid = float(np.median(mean_u))
        move = np.broadcast_to((mid - mean_u)[:, None], u.shape)
        far = np.abs(mean_u - mid)
    else:
        move = np.median(u, axis=0)[None, :] - u
        far = np.abs(move).max(axis=1)
    chosen = np.argsort(-far, kind="stable")[:count]
    return _move_one_row(f, g, items, chosen, np.asarray(move), b)


def concentrated_error(optimal: Datamodel, index: int, err: float, p: float) -> Datamodel:
    """The rare-event datamodel: Phi plus c (x_i - p) on training example ``index``, every
    target, with c = sqrt(err / (p (1 - p))), so err(g) = E_p[(c (x_i - p))^2] = err exactly.

    All of g's error sits on one example: at small p the pair-sums that see it in x and in its
    partner are few (about n p (rho0 + (1 - rho0) p) at level rho0) and carry the mean."""
    if not isinstance(index, int | np.integer) or not 0 <= index < optimal.n_train:
        raise InvalidParameterError(f"index must be in [0, {optimal.n_train}); got {index!r}")
    e = check_positive("err", err) if err != 0 else 0.0
    if not 0.0 < p < 1.0:
        raise InvalidParameterError(f"p must be in (0, 1); got {p!r}")
    c = float(np.sqrt(e / (p * (1.0 - p))))
    w = np.array(optimal.weights, dtype=np.float64)
    w[:, index] += c
    return Datamodel(np.asarray(optimal.intercept - c * p), w)


def strategic_counts(n_subsets: int, spot_checks: int, delta_spot: float) -> tuple[int, ...]:
    """The counts worth trying against ``spot_checks`` secret checks out of ``n_subsets``:
    1, m*/4, m*/2, m*, m* + 1, 3 m*/2, 2 m* + 2 (module doc: beyond, P(pass) <= delta_spot^2).
    """
    m = max_undetected(n_subsets, spot_checks, delta_spot)
    grid = {1, m // 4, m // 2, m, m + 1, (3 * m) // 2, 2 * m + 2}
    return tuple(sorted(c for c in grid if 1 <= c <= n_subsets))


def best_count(
    p_accept: Mapping[int, float], n_subsets: int, spot_checks: int
) -> tuple[int, float]:
    """(count, P(accept)) maximising P(all checks miss count rows) x ``p_accept[count]``,
    where ``p_accept`` maps a count to the decision's acceptance rate at that count."""
    if not p_accept:
        raise InvalidParameterError("best_count needs at least one count")
    scored = {
        m: pass_probability(n_subsets, m, spot_checks) * float(p) for m, p in p_accept.items()
    }
    m = max(scored, key=lambda c: (scored[c], -c))
    return int(m), scored[m]
