"""The certificate against exact planted truth: coverage, soundness against the strategic
adversaries, the robustness inequality, and refusals.

Statistical tests use fixed seeds; each states the rate it checks and the slack it allows.
"""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.adversaries import corrupt_extreme, corrupt_quiet
from protocol.certificate import (
    _bound_clt,
    max_undetected,
    pass_probability,
    plan_certificate,
    upper_bias_coefficient,
    variance_lower_bound,
)
from protocol.certificate import certify as _certify
from protocol.datamodel import Datamodel
from protocol.errors import InvalidParameterError, NonFiniteError, ShapeError
from protocol.residual import estimate_gap
from protocol.sampling import ChallengeDesign
from protocol.tasks import PlantedTask
from tests.simulate import simulate_design

# These tests check the clt validity's parts (trimmed mean, Tukey-McLaughlin SE, sandwich);
# tests/protocol/test_validity.py checks the betting default and the refusals.
certify = partial(_certify, validity="clt")

TASK = PlantedTask(n_train=20, n_targets=4, b0=0.2, b1=1.0, b2=0.3, b3=0.1, noise=0.2, seed=1)
RHOS = (0.0, 0.2, 0.4)
REPS, PAIRS = 100, 1000


def with_err(err: float) -> Datamodel:
    """Phi with its slopes scaled so that err(g) = err exactly on every target (B1 = 1)."""
    opt = TASK.optimal_datamodel()
    lam = 1.0 - np.sqrt(err / TASK.spectrum().b1)
    w = opt.weights * lam[:, None]
    const = opt.intercept + 0.5 * opt.weights.sum(axis=1)
    return Datamodel(const - 0.5 * w.sum(axis=1), w)


@pytest.fixture(scope="module")
def runs() -> dict[str, np.ndarray]:
    """REPS challenges; bounds at delta = 0.1 for err = 0 and err = 0.3 (stacked over reps)."""
    rng = np.random.default_rng(7)
    models = {"opt": with_err(0.0), "bad": with_err(0.3)}
    out: dict[str, list[object]] = {}
    for _ in range(REPS):
        design, masks, seeds = simulate_design(rng, TASK.n_train, 0.5, RHOS, PAIRS)
        f = TASK.evaluate(masks, seeds)
        for name, g in models.items():
            pred = g.predict(masks)
            for agg in ("mean", "max"):
                c = certify(f, pred, design, delta=0.1, aggregate=agg)  # type: ignore[arg-type]
                out.setdefault(f"{name}_{agg}", []).append(c.certified_epsilon)
                out.setdefault(f"{name}_{agg}_point", []).append(c.point)
            c = certify(f, pred, design, delta=0.1)
            out.setdefault(f"{name}_per_target", []).append(c.per_target)
    return {k: np.array(v) for k, v in out.items()}


# Nominal coverage 0.9 for each bound; 100 repetitions: binomial sd 0.03, so 0.84 is 2 sd below.
# Measured (seed 7): mean 0.98 (err 0) and 0.97 (err 0.3); max 1.00 and 1.00; all targets at
# once 0.96 and 0.98. The bias term and the delta splits make the bounds conservative.
@pytest.mark.parametrize("name,err", [("opt", 0.0), ("bad", 0.3)])
def test_bounds_cover_exact_err_at_nominal_level(
    runs: dict[str, np.ndarray], name: str, err: float
) -> None:
    assert np.mean(runs[f"{name}_mean"] >= err) >= 0.84
    assert np.mean(runs[f"{name}_max"] >= err) >= 0.84
    # per-target bounds hold for all targets at once (delta split over Z)
    assert np.mean(np.all(runs[f"{name}_per_target"] >= err, axis=1)) >= 0.84


def test_point_estimate_is_unbiased_up_to_degree_three(runs: dict[str, np.ndarray]) -> None:
    # E point = err - beta with 0 <= -beta <= kappa_+ B3 (B3 = 0.1 here): 4 SE of the mean.
    kappa = upper_bias_coefficient(np.array(RHOS))
    for name, err in (("opt", 0.0), ("bad", 0.3)):
        est = runs[f"{name}_mean_point"]
        se = est.std() / np.sqrt(REPS)
        assert err - kappa * 0.1 - 4 * se <= est.mean() <= err + 4 * se


def test_mean_aggregate_is_tighter_than_max(runs: dict[str, np.ndarray]) -> None:
    assert np.median(runs["opt_mean"]) < 0.6 * np.median(runs["opt_max"])
    # and it separates the two datamodels in most runs already at 1,000 pairs per level
    assert np.mean(runs["opt_mean"] < 0.3) >= 0.9


def test_upper_bias_coefficient_of_the_papers_levels() -> None:
    assert upper_bias_coefficient(np.array([0.0, 0.2, 0.4])) == pytest.approx(2 * 0.2**2)
    assert upper_bias_coefficient(np.array([0.0, 0.1, 0.2])) == pytest.approx(2 * 0.1**2)


def test_max_undetected_is_the_hypergeometric_threshold() -> None:
    for n_sub, k, d in ((12000, 32, 0.025), (12000, 2000, 0.025), (600, 100, 0.01)):
        m = max_undetected(n_sub, k, d)
        assert pass_probability(n_sub, m + 1, k) <= d < pass_probability(n_sub, m, k)
        # with replacement, m ~ |E| ln(1/d) / k; drawing without replacement only lowers it
        approx = n_sub * np.log(1 / d) / k
        assert 0.8 * approx <= m <= approx + 1
    assert max_undetected(100, 100, 0.05) == 0
    # Monte Carlo check of pass_probability (exact hypergeometric): 20,000 draws, 4 sd slack.
    rng = np.random.default_rng(3)
    hits = [not np.any(rng.choice(500, 40, replace=False) < 12) for _ in range(20000)]
    p = pass_probability(500, 12, 40)
    assert abs(np.mean(hits) - p) <= 4 * np.sqrt(p * (1 - p) / 20000)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 12),
    st.sampled_from(["top", "bottom", "extreme", "middle"]),
)
def test_sandwich_bounds_the_honest_trimmed_mean(seed: int, m: int, where: str) -> None:
    # With t = m* >= m values replaced anyhow, the honest sample's trimmed mean is at most the
    # observed point + corruption (the order-statistics sandwich; trimming bias is extra).
    rng = np.random.default_rng(seed)
    n, t = 200, 12
    z = rng.standard_exponential((n, 2)) * rng.choice([-1.0, 1.0], size=2)
    y = z.copy()
    idx = np.argsort(z[:, 0])
    rows = {"top": idx[-m:], "bottom": idx[:m], "extreme": idx[-m:], "middle": idx[n // 2 :][:m]}
    new = {"top": -50.0, "bottom": 50.0, "extreme": -1e6, "middle": rng.normal() * 3}[where]
    y[rows[where]] = new
    honest = _bound_clt(z, t, 0.1, np.zeros_like(z), np.zeros_like(z)).point
    seen = _bound_clt(y, t, 0.1, np.zeros_like(y), np.zeros_like(y))
    assert np.all(honest <= seen.point + seen.corruption + 1e-12)
    # the sandwich part scales with the spread, not with the size of the planted values (the
    # trimming-bias part uses the observed SD, which planted extremes only inflate)
    frac = t / n
    sandwich = seen.corruption - y.std(axis=0, ddof=1) * np.sqrt(frac / (1 - frac))
    assert np.all(sandwich < 10 * z.std(axis=0) + 1)


def _challenge(seed: int, pairs: int = 2000) -> tuple[object, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    design, masks, seeds = simulate_design(rng, TASK.n_train, 0.5, RHOS, pairs)
    return design, masks, TASK.evaluate(masks, seeds)


@pytest.mark.parametrize("adversary", [corrupt_extreme, corrupt_quiet])
def test_adversaries_fool_the_plain_estimate_but_not_the_certificate(adversary: object) -> None:
    # g with err = 1 (twice epsilon = 0.5). k = 1,200 of 12,000 spot-checks: m* = 34.
    # Measured over seeds 0-5: the plain gap estimate falls below epsilon / 2 with m = m*
    # for the extreme adversary in every run (quiet: 0.61-1.01, not fooled); the certificate
    # stays >= 4.0 against extreme (it inflates the SD) and >= 2.2 against quiet (honest: 2.8).
    g = with_err(1.0)
    m_star = max_undetected(12000, 1200, 0.025)
    fooled = 0
    for seed in range(6):
        design, masks, f = _challenge(seed)
        pred = g.predict(masks)
        bad = adversary(f, pred, design, m_star, bound=TASK.bound)  # type: ignore[operator]
        assert np.max(np.abs(bad)) <= TASK.bound
        fooled += bool(estimate_gap(bad, pred, design).gap.max() <= 0.25)
        for agg in ("mean", "max"):
            cert = certify(bad, pred, design, delta=0.05, aggregate=agg, spot_checks=1200,  # type: ignore[arg-type]
                           bound=TASK.bound)  # fmt: skip
            assert cert.max_corrupted == m_star
            assert cert.certified_epsilon >= 1.0
    if adversary is corrupt_extreme:
        assert fooled == 6


def test_extreme_adversary_concentrates_on_the_high_leverage_level() -> None:
    design, masks, f = _challenge(11, 500)
    pred = with_err(1.0).predict(masks)
    bad = corrupt_extreme(f, pred, design, 20, bound=TASK.bound)
    rows = np.flatnonzero(np.any(bad != f, axis=1))
    assert len(rows) == 20
    assert np.all(np.abs(bad[rows]) == TASK.bound)
    levels = rows // (2 * 500)
    assert np.mean(levels == 1) >= 0.9  # rho0: |a_1| = 10 > |a_0| = 6.5 > |a_2| = 2.5


def test_tau_slack_covers_values_moved_within_tau() -> None:
    design, masks, f = _challenge(5, 1000)
    pred = with_err(0.2).predict(masks)
    tau = 0.05
    honest = certify(f, pred, design, delta=0.1)
    # every value moved by tau in the direction that lowers a_l psi the most
    r = f - pred
    partner = np.arange(len(f)) ^ 1
    a = np.array([1 - 3 / 0.4, 2 / 0.2, -1 / 0.8])[np.arange(len(f)) // 2000]
    moved = f - tau * np.sign(a[:, None] * r[partner])
    seen = certify(moved, pred, design, delta=0.1, tau=tau)
    assert seen.point < honest.point  # the move works
    assert honest.point <= seen.point + seen.tau_slack
    assert seen.tau_slack > 0 and seen.tau == tau


def test_finite_is_valid_and_wider_than_clt() -> None:
    design, masks, f = _challenge(8, 1000)
    pred = with_err(0.3).predict(masks)
    clt = certify(f, pred, design, delta=0.1)
    fin = certify(f, pred, design, delta=0.1, validity="finite", bound=TASK.bound)
    assert fin.certified_epsilon >= 0.3
    assert fin.statistical > clt.statistical
    assert fin.validity == "finite" and clt.validity == "clt"


def test_certificate_parts_add_up_and_serialise() -> None:
    design, masks, f = _challenge(9, 500)
    pred = with_err(0.1).predict(masks)
    c = certify(f, pred, design, delta=0.05, spot_checks=600, tau=0.01, bound=TASK.bound)
    total = c.point + c.statistical + c.corruption + c.tau_slack + c.bias
    assert total == pytest.approx(c.certified_epsilon)
    assert c.accepts(c.certified_epsilon) and not c.accepts(c.certified_epsilon - 1e-9)
    d = json.loads(json.dumps(c.as_dict()))
    assert d["aggregate"] == "mean" and len(d["per_target"]) == TASK.n_targets
    assert c.trim == c.max_corrupted > 0 and c.delta_spot == pytest.approx(0.025)


def test_too_few_spot_checks_certify_nothing() -> None:
    design, masks, f = _challenge(4, 500)
    c = certify(f, with_err(0.0).predict(masks), design, delta=0.05, spot_checks=5,
                bound=TASK.bound)  # fmt: skip
    assert c.certified_epsilon == np.inf and not c.accepts(1e9)


def test_planner_sizes_are_monotone() -> None:
    kw = {"sd_pair_sum": 4.0, "mse": 0.6}
    small, large = plan_certificate(1.0, 0.05, **kw), plan_certificate(0.5, 0.05, **kw)
    assert large.pairs_per_level > 3 * small.pairs_per_level
    assert small.predicted_width <= 0.5 + 1e-9
    assert small.spot_checks == int(np.ceil(0.1 * small.n_subsets))


def test_bad_inputs_are_refused() -> None:
    design = ChallengeDesign.saunshi(bytes(32), 5, 0.5, 0.2, 4)
    f = np.zeros((len(design), 2))
    with pytest.raises(ShapeError, match="24 subsets"):
        certify(f[:-2], f[:-2], design, delta=0.1)
    with pytest.raises(ShapeError):
        certify(f, f[:, :1], design, delta=0.1)
    bad = f.copy()
    bad[3, 1] = np.nan
    with pytest.raises(NonFiniteError):
        certify(bad, f, design, delta=0.1)
    with pytest.raises(InvalidParameterError, match="delta"):
        certify(f, f, design, delta=1.5)
    with pytest.raises(InvalidParameterError, match="aggregate"):
        certify(f, f, design, delta=0.1, aggregate="median")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="bound"):
        certify(f, f, design, delta=0.1, validity="finite")
    with pytest.raises(InvalidParameterError, match="range"):
        certify(f + 3.0, f, design, delta=0.1, bound=2.0)
    with pytest.raises(InvalidParameterError, match="tau"):
        certify(f, f, design, delta=0.1, tau=-1.0)
    with pytest.raises(InvalidParameterError, match="spot-checks"):
        certify(f, f, design, delta=0.1, spot_checks=len(design) + 1)
    with pytest.raises(InvalidParameterError, match="count"):
        corrupt_extreme(f, f, design, len(design) + 1, bound=1.0)


@pytest.mark.parametrize("module", ["protocol.certificate", "protocol.adversaries"])
def test_public_api_is_sorted_and_real(module: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    assert list(mod.__all__) == sorted(mod.__all__)
    assert all(hasattr(mod, name) for name in mod.__all__)


def test_variance_lower_bound_covers_exact_var_f() -> None:
    # Exact Var f = B1 + B_{>=2} from the planted spectrum; 200 trusted values per run, 100
    # runs at delta = 0.1: nominal coverage 0.9 per target (measured, seed 12: clt 0.91; finite
    # 1.00 but vacuous here, 0: the range 2b = 16 against sigma = 1.2 at k = 200).
    truth = TASK.spectrum().variance
    rng = np.random.default_rng(12)
    hits = {"clt": [], "finite": []}
    for _ in range(100):
        masks = rng.random((200, TASK.n_train)) < 0.5
        seeds = rng.integers(0, 2**63, size=200, dtype=np.int64).astype(np.uint64)
        f = TASK.evaluate(masks, seeds)
        hits["clt"].append(variance_lower_bound(f, 0.1) <= truth)
        hits["finite"].append(
            variance_lower_bound(f, 0.1, validity="finite", bound=TASK.bound) <= truth
        )
    assert np.mean(hits["clt"]) >= 0.84
    assert np.all(hits["finite"])
    assert np.all(variance_lower_bound(f, 0.1) > 0.5 * truth)  # and it is not vacuous
    with pytest.raises(InvalidParameterError, match="bound"):
        variance_lower_bound(f, 0.1, validity="finite")
