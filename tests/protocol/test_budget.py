"""The planner: its inequalities at their stated rates, its monotonicity, and its refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocol.budget import (
    Pilot,
    bernstein_deviation,
    hoeffding_deviation,
    plan,
    spot_checks,
)
from protocol.errors import BudgetError, InvalidParameterError
from protocol.residual import estimate_gap, estimate_residual
from protocol.sampling import ChallengeDesign
from protocol.tasks import PlantedTask
from tests.simulate import simulate_design

SMALL = PlantedTask(n_train=6, n_targets=1, b0=0.0, b1=0.3, b2=0.1, noise=0.1, n_pairs=2)


def test_hoeffding_and_bernstein_fail_at_most_at_their_rate() -> None:
    # 4,000 means of n = 50 skewed variables in [0, 1]; each bound at delta = 0.2 must fail
    # in <= 20 % of them (+ 3 binomial sd); both are conservative, so far fewer fail.
    rng = np.random.default_rng(0)
    x = rng.beta(0.5, 3.0, size=(4000, 50))
    mu, var = 0.5 / 3.5, (0.5 * 3.0) / (3.5**2 * 4.5)
    dev = np.abs(x.mean(1) - mu)
    assert np.mean(dev >= hoeffding_deviation(1.0, 50, 0.2)) <= 0.2 + 3 * math.sqrt(0.16 / 4000)
    assert np.mean(dev >= bernstein_deviation(var, 1.0, 50, 0.2)) <= 0.2 + 3 * math.sqrt(
        0.16 / 4000
    )
    assert bernstein_deviation(var, 1.0, 50, 0.2) < hoeffding_deviation(1.0, 50, 0.2)


def test_spot_checks_catch_corruption_beyond_the_allowance() -> None:
    n_subsets, allowed, delta = 600, 40, 0.1
    k = spot_checks(n_subsets, allowed, delta)
    rng = np.random.default_rng(1)
    bad = np.zeros(n_subsets, dtype=bool)
    bad[: allowed + 1] = True
    caught = [bad[rng.choice(n_subsets, size=k, replace=False)].any() for _ in range(3000)]
    assert np.mean(caught) >= 1 - delta
    # and k is not wasteful: k - 5 draws would miss more often than delta allows in theory
    assert (1 - (allowed + 1) / n_subsets) ** (k - 5) > delta


def test_sample_sizes_grow_as_guarantees_tighten() -> None:
    base = plan(0.5, 0.05, 1.0, n_targets=10)
    tighter = plan(0.25, 0.05, 1.0, n_targets=10)
    surer = plan(0.5, 0.001, 1.0, n_targets=10)
    wider = plan(0.5, 0.05, 1.0, n_targets=1000)
    for other in (tighter, surer, wider):
        assert other.pairs_per_level > base.pairs_per_level
        assert other.fresh_samples > base.fresh_samples
    assert tighter.spot_checks > base.spot_checks
    # Z enters only through log Z: 100x the targets costs far less than 100x the samples.
    assert wider.pairs_per_level < 2 * base.pairs_per_level
    assert base.n_subsets == 6 * base.pairs_per_level
    assert base.threshold == pytest.approx(0.25) and base.tolerance == pytest.approx(0.125)
    assert set(base.sources) >= {"pairs_per_level", "spot_checks", "fresh_samples", "rho0"}
    assert base.verifier_trainings["interactive"] == base.spot_checks + base.fresh_samples


def test_gap_estimator_plans_no_fresh_samples_and_wider_tolerance() -> None:
    gap = plan(0.5, 0.05, 1.0, estimator="gap")
    res = plan(0.5, 0.05, 1.0)
    assert gap.fresh_samples == 0 and gap.tolerance == pytest.approx(2 * res.tolerance)


def test_honest_margin_costs_samples() -> None:
    strict = plan(0.5, 0.05, 1.0, honest_err=0.25)
    assert strict.threshold == pytest.approx(0.375)
    assert strict.pairs_per_level > plan(0.5, 0.05, 1.0).pairs_per_level


def test_checkequiv_tolerance_enters_the_margin_and_is_refused_when_too_large() -> None:
    loose = plan(0.5, 0.05, 1.0, tau=1e-4)
    assert loose.error_budget["tau_slack"] > 0
    assert loose.pairs_per_level > plan(0.5, 0.05, 1.0).pairs_per_level
    with pytest.raises(BudgetError, match="tau"):
        plan(0.5, 0.05, 1.0, tau=0.01)


def test_bias_bound_refusal_names_its_cause_and_a_b3_bound_lifts_it() -> None:
    with pytest.raises(BudgetError, match="degree>=3 bias"):
        plan(0.5, 0.05, 16.0)
    assert plan(0.5, 0.05, 16.0, b3_bound=0.5).rho0 > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"epsilon": float("inf")}, "epsilon"),
        ({"delta": 1.0}, "delta"),
        ({"bound": float("nan")}, "bound"),
        ({"p": 0.0}, "p"),
        ({"n_targets": 0}, "Z"),
        ({"estimator": "magic"}, "estimator"),
        ({"honest_err": 0.5}, "honest_err"),
        ({"tau": -1.0}, "tau"),
    ],
)
def test_bad_inputs(kwargs: dict, match: str) -> None:
    args = {"epsilon": 0.5, "delta": 0.05, "bound": 1.0} | kwargs
    with pytest.raises(InvalidParameterError, match=match):
        plan(**args)


@pytest.fixture(scope="module")
def pilot() -> Pilot:
    design = ChallengeDesign.saunshi(bytes(32), SMALL.n_train, 0.5, 0.2, 2000)
    return Pilot.from_values(SMALL.evaluate(design.masks(), design.seeds()), design)


def test_pilot_bounds_cover_the_truth(pilot: Pilot) -> None:
    s = SMALL.spectrum()
    assert pilot.b3 >= s.b3[0] and pilot.b3 >= s.residual[0]  # B3 <= B_{>=2} <= bound
    assert pilot.square_variance > 0 and pilot.product_variance > 0


@pytest.mark.slow
@pytest.mark.parametrize(("estimator", "epsilon", "reps"), [("gap", 1.0, 12), ("residual", 2.0, 6)])
def test_realised_errors_stay_inside_the_planned_bound(
    pilot: Pilot, estimator: str, epsilon: float, reps: int
) -> None:
    # Plan with the pilot's Bernstein bounds, then run the estimator at exactly that size on
    # fresh challenges: |estimate - truth| must stay within statistics + bias of the plan in
    # >= 1 - delta of runs. delta = 0.5 keeps the plan small enough to repeat here.
    pl = plan(epsilon, 0.5, SMALL.bound, estimator=estimator, pilot=pilot)  # type: ignore[arg-type]
    allowed = pl.error_budget["statistics"] + pl.error_budget["bias"]
    rng = np.random.default_rng(7)
    g = SMALL.optimal_datamodel().scaled(0.5)
    truth = SMALL.err(g)[0] if estimator == "gap" else SMALL.spectrum().residual[0]
    rhos = (0.0, pl.rho0, 2 * pl.rho0)
    errors = []
    for _ in range(reps):
        design, masks, seeds = simulate_design(rng, SMALL.n_train, 0.5, rhos, pl.pairs_per_level)
        f = SMALL.evaluate(masks, seeds)
        if estimator == "gap":
            est = estimate_gap(f, g.predict(masks), design).gap[0]
        else:
            est = estimate_residual(f, design).residual[0]
        errors.append(abs(est - truth))
    assert np.mean(np.array(errors) <= allowed) >= 1 - pl.delta
    # The bound is conservative but not vacuous: it is within 1,000x of the realised errors.
    assert max(errors) * 1000 > allowed
