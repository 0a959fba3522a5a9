"""The certificate where a few values carry the variance (issue 18), and the checked-groups
combination (whole-base spot-checks): against exact planted truth, with fixed seeds.

Each statistical test states the rate it checks; every count below was measured with the seed
given and is asserted with its binomial slack.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocol.adversaries import concentrated_error, corrupt_neutral, corrupt_quiet
from protocol.betting import betting_lower, betting_upper
from protocol.certificate import (
    CLT_MIN_EVENTS,
    certify,
    checked_groups,
    clt_refusal,
    default_validity,
    group_subsets,
    max_undetected,
    pass_probability,
    pilot_point,
)
from protocol.datamodel import Datamodel
from protocol.errors import InvalidParameterError
from protocol.sampling import ChallengeDesign, SharedBaseDesign
from protocol.tasks import PlantedTask
from tests.simulate import simulate_shared_design

RHOS = (0.0, 0.2, 0.4)
DELTA = 0.05


def _binomial_ok(failures: int, reps: int, rate: float) -> bool:
    """failures is within 3 binomial SD above reps * rate (one-sided)."""
    return failures <= reps * rate + 3.0 * math.sqrt(reps * rate * (1.0 - rate))


# -- the betting bound on its own -------------------------------------------------------------


def test_betting_covers_a_rare_event_the_clt_misses() -> None:
    # Bernoulli(q = 0.003) in [0, 1], n = 1,000: the expected count is 3, so P(count = 0) =
    # 0.05 and the CLT's bound (mean + z SD / sqrt n) is then 0 < q. 400 runs at delta = 0.05.
    # Measured (seed 3): CLT misses 22 of 400 (5.5 %, above delta), betting 0.
    rng = np.random.default_rng(3)
    q, n, reps = 0.003, 1000, 400
    clt_miss = bet_miss = 0
    for _ in range(reps):
        z = (rng.random((n, 1)) < q).astype(float)
        clt = z.mean() + 1.645 * z.std(ddof=1) / math.sqrt(n)
        clt_miss += clt < q
        bet_miss += betting_upper(z, upper=np.ones(1), delta=DELTA)[0] < q
    assert clt_miss > reps * DELTA  # the failure this validity exists for
    assert _binomial_ok(bet_miss, reps, DELTA)


def test_betting_lower_and_upper_bracket_the_mean() -> None:
    rng = np.random.default_rng(4)
    miss = 0
    for _ in range(200):
        z = rng.beta(0.5, 3.0, (500, 2)) * 4.0 - 1.0  # skewed, in [-1, 3]; mean 4/7 - 1
        mu = 4.0 * 0.5 / 3.5 - 1.0
        lo = betting_lower(z, lower=np.full(2, -1.0), delta=DELTA / 2)
        hi = betting_upper(z, upper=np.full(2, 3.0), delta=DELTA / 2)
        assert np.all(lo <= z.mean(axis=0)) and np.all(z.mean(axis=0) <= hi)
        miss += int(np.any((lo > mu) | (hi < mu)))
    assert _binomial_ok(miss, 200, 2 * DELTA)


def test_betting_survives_hidden_tail_values() -> None:
    # The adversary replaces the m largest honest values by the median (hides the tail that
    # carries the mean); the bound charged for m corrupted rows must still cover mu.
    rng = np.random.default_rng(5)
    q, n, m = 0.02, 2000, 40  # 40 events expected: hiding all of them drives the mean to ~0
    miss = 0
    for _ in range(200):
        z = (rng.random((n, 1)) < q).astype(float) * 10.0
        y = z.copy()
        y[np.argsort(-z[:, 0])[:m]] = np.median(z)
        u = betting_upper(y, upper=np.full(1, 10.0), delta=DELTA, corrupted=m)
        miss += u[0] < q * 10.0
    assert miss == 0  # nominal delta = 0.05; the worst-case charge makes it far smaller


def test_betting_refuses_bad_input() -> None:
    with pytest.raises(InvalidParameterError):
        betting_upper(np.zeros((5, 1)), upper=np.array([np.inf]), delta=0.1)
    with pytest.raises(InvalidParameterError):
        betting_upper(np.zeros((5, 1)), upper=np.ones(1), delta=1.5)
    assert betting_upper(np.zeros((5, 1)), upper=np.ones(1), delta=0.1, corrupted=5)[0] == 1.0


# -- validity: clt only where its condition holds ---------------------------------------------


def test_clt_is_refused_where_rare_events_carry_the_variance() -> None:
    assert clt_refusal(0.5, 200) is None and default_validity(0.5, 200) == "clt"
    why = clt_refusal(0.05, 1000)
    assert why is not None and "betting" in why and "20,000" in why
    assert default_validity(0.05, 1000) == "betting"
    assert clt_refusal(0.05, math.ceil(CLT_MIN_EVENTS / 0.05**2)) is None
    design = SharedBaseDesign.saunshi(bytes(32), 20, 0.05, 0.2, 40)
    f = np.zeros((len(design), 2))
    with pytest.raises(InvalidParameterError, match="betting"):
        certify(f, f, design, delta=DELTA, validity="clt", bound=1.0)
    with pytest.raises(InvalidParameterError, match="bound"):
        certify(f, f, design, delta=DELTA)  # betting, the default, needs b


def _rare_event_challenges(
    p: float, noise: float, n: int, reps: int, seed: int
) -> tuple[PlantedTask, float, list[tuple[object, np.ndarray, np.ndarray]]]:
    task = PlantedTask(n_train=20, n_targets=4, b0=0.2, b1=2.0, b2=0.3, b3=0.1, noise=noise,
                       seed=1)  # fmt: skip
    eps = 0.25 * float(task.spectrum(p).variance.mean())
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(reps):
        design, masks, seeds = simulate_shared_design(rng, task.n_train, p, RHOS, n)
        runs.append((design, masks, task.evaluate(masks, seeds)))
    return task, eps, runs


def test_neutral_adversary_at_p_005_is_rejected() -> None:
    # Issue 18's attack: p = 0.05, seed noise 0.02, n = 1,000 bases, a tenth of the bases
    # checked (m* = 34), the rare-event datamodel with err = epsilon exactly, the neutral
    # adversary at every count 1 .. 2 m* + 2. Before: clt accepted at 0.21. Now the default
    # (betting here: clt is refused) must keep P(accept) <= delta; measured (seed 18): 0 of
    # 60 challenges at every count.
    p, n = 0.05, 1000
    task, eps, runs = _rare_event_challenges(p, 0.02, n, 60, 18)
    g = concentrated_error(task.optimal_datamodel(p), 0, eps, p)
    assert task.err(g, p).mean() == pytest.approx(eps)
    k = n // 10
    m_star = max_undetected(n, k, DELTA / 2)
    rng = np.random.default_rng(0)
    for m in (1, m_star // 2, m_star, 2 * m_star + 2):
        accepted = 0.0
        for design, masks, f in runs:
            preds = g.predict(masks)
            bad = corrupt_neutral(f, preds, design, m, bound=task.bound)
            touched = np.unique(np.flatnonzero(np.any(bad != f, axis=1)) // 4)
            clean = np.setdiff1d(np.arange(n), touched)
            checked = rng.choice(clean, k, replace=False)
            cert = certify(bad, preds, design, delta=DELTA, checked=checked, bound=task.bound,
                           prediction_range=g.output_range(), detail=False)  # fmt: skip
            assert cert.validity == "betting"
            accepted += pass_probability(n, len(touched), k) * cert.accepts(eps)
        assert accepted / len(runs) <= DELTA


def test_honest_coverage_at_p_002() -> None:
    # Values trusted (m* = 0), the rare-event datamodel at err = epsilon / 2 and epsilon, p =
    # 0.02, n = 1,000: the CLT missed 92 and 96 of 1,000 here. Betting, 200 challenges:
    # coverage >= 1 - delta (measured, seed 2: 200 of 200 at both).
    p = 0.02
    task, eps, runs = _rare_event_challenges(p, 0.02, 1000, 200, 2)
    for c in (0.5, 1.0):
        g = concentrated_error(task.optimal_datamodel(p), 0, c * eps, p)
        truth = float(task.err(g, p).mean())
        misses = 0
        for design, masks, f in runs:
            cert = certify(f, g.predict(masks), design, delta=DELTA, bound=task.bound,
                           prediction_range=g.output_range(), detail=False)  # fmt: skip
            misses += cert.certified_epsilon < truth
        assert _binomial_ok(misses, len(runs), DELTA)


# -- checked groups (whole-base spot-checks) --------------------------------------------------


@pytest.mark.parametrize("layout", [ChallengeDesign, SharedBaseDesign])
def test_checked_groups_are_recognised_from_the_opened_set(layout: type) -> None:
    design = layout.saunshi(bytes(32), 10, 0.5, 0.2, 12)
    groups = np.array([0, 3, 11])
    spots = group_subsets(design, groups)
    assert len(spots) == 3 * len(design) // 12
    assert np.array_equal(checked_groups(design, spots.tolist()), groups)
    assert checked_groups(design, spots[:-1].tolist()) is None  # not whole groups
    assert checked_groups(design, []) is None


def test_whole_base_sampling_bounds_the_corrupted_bases_exactly() -> None:
    # k whole bases of n drawn uniformly without replacement: m corrupted bases all missed with
    # probability C(n - m, k) / C(n, k) (pass_probability with groups for subsets); m* from it.
    # Monte Carlo, 20,000 draws: within 4 SD of the exact value.
    n, k, m = 300, 30, 9
    rng = np.random.default_rng(9)
    hits = [not np.any(rng.choice(n, k, replace=False) < m) for _ in range(20000)]
    exact = math.comb(n - m, k) / math.comb(n, k)
    assert pass_probability(n, m, k) == pytest.approx(exact, rel=1e-9)
    assert abs(np.mean(hits) - exact) <= 4 * math.sqrt(exact * (1 - exact) / 20000)
    m_star = max_undetected(n, k, 0.025)
    assert pass_probability(n, m_star + 1, k) <= 0.025 < pass_probability(n, m_star, k)


def _half_task_with_err(err: float) -> tuple[PlantedTask, Datamodel]:
    """The certificate tests' planted task (B1 = 1, p = 1/2) and Phi with its slopes scaled so
    that err(g) = err exactly on every target."""
    task = PlantedTask(n_train=20, n_targets=4, b0=0.2, b1=1.0, b2=0.3, b3=0.1, noise=0.2,
                       seed=1)  # fmt: skip
    opt = task.optimal_datamodel()
    w = opt.weights * (1.0 - math.sqrt(err / float(task.spectrum().b1.mean())))
    return task, Datamodel(opt.intercept + 0.5 * opt.weights.sum(axis=1) - 0.5 * w.sum(1), w)


@pytest.mark.parametrize(("n", "k", "k_validity"), [(1000, 100, "betting"), (2000, 250, "clt")])
def test_combined_bound_covers_planted_truth(n: int, k: int, k_validity: str) -> None:
    # p = 1/2 (clt allowed at n), k checked bases: U = min(checked bases' bound, robust bound)
    # at delta = 0.05 over 200 seeds, err = 0.3 exactly. The checked bases' bound runs clt only
    # where clt_refusal allows it at k (k >= 200 at p = 1/2), else betting, and clt reads its
    # SD caps from them only then. Coverage >= 1 - delta (measured, seed 21: 200 and 199
    # of 200); at k = 250 the checked bases' clt bound is the smaller in all 200, at k = 100 the
    # betting one in none.
    task, g = _half_task_with_err(0.3)
    truth = float(task.err(g).mean())
    assert truth == pytest.approx(0.3)
    rng = np.random.default_rng(21)
    misses, trusted_wins = 0, 0
    for _ in range(200):
        design, masks, seeds = simulate_shared_design(rng, task.n_train, 0.5, RHOS, n)
        f = task.evaluate(masks, seeds)
        checked = rng.choice(n, k, replace=False)
        cert = certify(f, g.predict(masks), design, delta=DELTA, validity="clt",
                       checked=checked, bound=task.bound, detail=False)  # fmt: skip
        assert cert.certified_epsilon == min(cert.trusted_bound, cert.robust_bound)
        assert cert.trusted_validity == k_validity
        misses += cert.certified_epsilon < truth
        trusted_wins += cert.source == "trusted"
    assert _binomial_ok(misses, 200, DELTA)
    assert trusted_wins <= 200 and (k_validity == "betting" or trusted_wins > 0)


def test_too_few_checked_bases_for_clt_need_the_bound() -> None:
    task, g = _half_task_with_err(0.3)
    rng = np.random.default_rng(3)
    design, masks, seeds = simulate_shared_design(rng, task.n_train, 0.5, RHOS, 400)
    f = task.evaluate(masks, seeds)
    with pytest.raises(InvalidParameterError, match="too few for validity 'clt'"):
        certify(f, g.predict(masks), design, delta=DELTA, validity="clt", checked=list(range(40)),
                max_corrupted=0)  # fmt: skip


def test_quiet_adversary_against_the_combined_clt_bound() -> None:
    # p = 1/2, clt, 100 of 1,000 bases checked (m* = 34): the quiet adversary at m* with err = 1
    # (epsilon = 0.6) never gets U below err when the checks pass (measured, seed 7: 0 of 40).
    task, g = _half_task_with_err(1.0)
    rng = np.random.default_rng(7)
    m_star = max_undetected(1000, 100, DELTA / 2)
    below = 0
    for _ in range(40):
        design, masks, seeds = simulate_shared_design(rng, task.n_train, 0.5, RHOS, 1000)
        f = task.evaluate(masks, seeds)
        preds = g.predict(masks)
        bad = corrupt_quiet(f, preds, design, m_star, bound=task.bound, rank=m_star)
        touched = np.unique(np.flatnonzero(np.any(bad != f, axis=1)) // 4)
        clean = np.setdiff1d(np.arange(1000), touched)
        cert = certify(bad, preds, design, delta=DELTA, validity="clt",
                       checked=rng.choice(clean, 100, replace=False), bound=task.bound)  # fmt: skip
        below += cert.certified_epsilon < 1.0
    assert _binomial_ok(below, 40, DELTA)


def test_decide_at_gives_the_same_verdict() -> None:
    # The benchmarks' shortcut: a betting bound known to exceed epsilon is reported as inf.
    # The verdict at epsilon must be the same as the full bound's, on both sides of U.
    task, _, runs = _rare_event_challenges(0.5, 0.2, 300, 4, 30)
    g = concentrated_error(task.optimal_datamodel(0.5), 0, 0.2, 0.5)
    rng = np.random.default_rng(1)
    for design, masks, f in runs:
        preds = g.predict(masks)
        kw = {"delta": DELTA, "bound": task.bound, "prediction_range": g.output_range(),
              "detail": False, "checked": rng.choice(300, 30, replace=False)}  # fmt: skip
        full = certify(f, preds, design, **kw).certified_epsilon  # type: ignore[arg-type]
        for eps in (0.99 * full, 1.01 * full, 0.5 * full, 3.0 * full):
            quick = certify(f, preds, design, decide_at=eps, **kw)  # type: ignore[arg-type]
            assert quick.accepts(eps) == (full <= eps)
            if quick.accepts(eps):
                assert quick.certified_epsilon == pytest.approx(full, rel=1e-5)


def test_the_pilots_max_point_is_shrunk_toward_the_truth() -> None:
    # 24 targets, err = 0.3 exactly on each (so the true max is 0.3), 32-base pilots as the
    # session trains them. The raw largest of 24 noisy per-target means is biased up by about
    # SE sqrt(2 ln 24); pilot_point's empirical-Bayes max is not, and its SE covers the truth.
    # Measured (seed 4, 60 pilots): mean error 0.28 shrunk (the grand mean's own noise, SE ~0.2
    # at 32 bases) against 1.60 raw; the truth within 2 SE in 55 of 60 (57 expected).
    task = PlantedTask(n_train=20, n_targets=24, b0=0.2, b1=1.0, b2=0.3, b3=0.1, noise=0.2,
                       seed=1)  # fmt: skip
    opt = task.optimal_datamodel()
    w = opt.weights * (1.0 - np.sqrt(0.3 / task.spectrum().b1))[:, None]
    g = Datamodel(opt.intercept + 0.5 * opt.weights.sum(axis=1) - 0.5 * w.sum(1), w)
    assert np.allclose(task.err(g), 0.3)
    rng = np.random.default_rng(4)
    raw_err, shrunk_err, covered = [], [], 0
    for _ in range(60):
        design, masks, seeds = simulate_shared_design(rng, task.n_train, 0.5, RHOS, 32)
        f, preds = task.evaluate(masks, seeds), g.predict(masks)
        point, se = pilot_point(f, preds, design, "max")
        mean_point, mean_se = pilot_point(f, preds, design, "mean")
        assert se > 0 and mean_se > 0 and math.isfinite(mean_point)
        # the raw max: the largest target's own mean pair-sum (one target: no shrinking)
        raw = max(pilot_point(f[:, [z]], preds[:, [z]], design, "max")[0] for z in range(24))
        raw_err.append(abs(raw - 0.3))
        shrunk_err.append(abs(point - 0.3))
        covered += abs(point - 0.3) <= 2 * se
    assert np.mean(shrunk_err) < 0.5 * np.mean(raw_err)
    assert covered >= 52
