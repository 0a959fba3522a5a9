"""The witness check (protocol.witness) against ground truth.

* The gradient-norm bound against the true optimum: on random subsets of a small bundled
  problem (wine, 128 pool rows, 13 features, 3 classes), theta* solved to machine precision by
  dense Newton; every perturbed theta (random directions at 1e-8 .. 1e-1, and the flattest
  direction) satisfies ||theta - theta*|| <= gamma / mu and |f_z(theta) - f_z(theta*)| <= tau_z.
* The Verifier's rounding allowance covers the float64 gradient's error, measured against the
  same gradient in extended precision (np.longdouble).
* Every attack of protocol.witness_adversaries is rejected on every subset it touches, on
  digits-logreg:certifiable=1 at the limit a challenge at epsilon = 0.05 states.
* witness_limit's charge in the certificate is at most its share of epsilon.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_wine

from protocol.certificate import certify
from protocol.errors import InvalidParameterError, ShapeError, WitnessRejectedError
from protocol.residual import linear_weights
from protocol.sampling import SharedBaseDesign, sample_masks
from protocol.tasks.multinomial import MultinomialProblem
from protocol.witness import check_witnesses, witness_limit
from protocol.witness_adversaries import WITNESS_ATTACKS, flattest_direction, tamper_witnesses

RHOS = (0.0, 0.2, 0.4)


@pytest.fixture(scope="module")
def wine() -> MultinomialProblem:
    x, y = load_wine(return_X_y=True)
    perm = np.random.default_rng(7).permutation(len(x))
    x = (x - x.mean(0)) / x.std(0)
    x = np.hstack([x, np.ones((len(x), 1))])
    pool, tgt = perm[:128], perm[128:]
    return MultinomialProblem(x[pool], y[pool], x[tgt], y[tgt], l2=0.5, bound=16.0)


def exact_optimum(problem: MultinomialProblem, mask: np.ndarray) -> np.ndarray:
    """Dense Newton to machine precision (50 steps, quadratic convergence)."""
    w = mask.astype(np.float64)
    theta = problem.full_pool_start().copy()
    for _ in range(50):
        g = problem.gradients(theta[None], mask[None])[0]
        theta = theta - np.linalg.solve(problem.hessian(theta, w), g)
    return theta


def test_gradient_bound_covers_the_true_optimum(wine: MultinomialProblem) -> None:
    masks = sample_masks(b"\x01" * 32, wine.n, 0.5, range(12))
    rng = np.random.default_rng(0)
    lips = wine.output_lipschitz()
    for mask in masks:
        star = exact_optimum(wine, mask)
        assert np.linalg.norm(wine.gradients(star[None], mask[None])) < 1e-12
        f_star = wine.outputs(star[None])[0]
        dirs = [rng.normal(size=wine.n_params) for _ in range(4)]
        dirs.append(flattest_direction(wine, star, mask))
        for v in dirs:
            for size in (1e-8, 1e-5, 1e-3, 1e-1):
                theta = star + size * v / np.linalg.norm(v)
                check = check_witnesses(wine, theta[None], mask[None],
                                        wine.outputs(theta[None]), 1e3)  # fmt: skip
                assert np.linalg.norm(theta - star) <= check.distance[0]
                move = np.abs(wine.outputs(theta[None])[0] - f_star)
                assert np.all(move <= check.tau[0])
                assert np.all(check.tau[0] >= lips * np.linalg.norm(theta - star))


def _longdouble_gradient(problem: MultinomialProblem, theta: np.ndarray, mask: np.ndarray) -> float:
    ld = np.longdouble
    x = problem.x.astype(ld)
    w = theta.astype(ld).reshape(problem.d, problem.n_classes)
    z = x @ w
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    r = (p - np.eye(problem.n_classes, dtype=ld)[problem.y]) * mask[:, None].astype(ld)
    g = x.T @ r + ld(problem.l2) * w
    return float(np.sqrt((g * g).sum()))


def test_rounding_allowance_covers_the_float64_error(wine: MultinomialProblem) -> None:
    if np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps:
        pytest.skip("np.longdouble is float64 on this platform")
    masks = sample_masks(b"\x02" * 32, wine.n, 0.5, range(6))
    for mask in masks:
        star = exact_optimum(wine, mask)
        bound = wine.gradient_norm_bounds(star[None], mask[None])[0]
        plain = np.linalg.norm(wine.gradients(star[None], mask[None])[0])
        truth = _longdouble_gradient(wine, star, mask)
        assert truth <= bound and bound - plain < 1e-9  # covers it, and stays small


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    from protocol.tasks.digits import DigitsLogReg

    problem = DigitsLogReg(certifiable=1).certifiable()
    masks = sample_masks(b"\x03" * 32, 1497, 0.5, range(3))
    limit = witness_limit(0.05, 16.0, RHOS)
    theta = problem.witnesses(masks, np.zeros(3, np.uint64), limit / 4)
    return problem, masks, limit, theta


def test_honest_witnesses_pass_at_a_tight_limit(digits) -> None:  # type: ignore[no-untyped-def]
    problem, masks, limit, theta = digits
    check = check_witnesses(problem, theta, masks, problem.outputs(theta), limit)
    assert check.rejected == () and check.tau.max() <= limit / 4 + 1e-9 * limit
    assert check.gradient_passes == 3
    check.raise_for_rejection()  # nothing to raise


@pytest.mark.parametrize("kind", WITNESS_ATTACKS)
def test_every_attack_is_rejected_on_every_subset(digits, kind: str) -> None:  # type: ignore[no-untyped-def]
    problem, masks, limit, theta = digits
    honest = problem.outputs(theta)
    rng = np.random.default_rng(1)
    bad_theta, bad_values = tamper_witnesses(
        kind, problem, theta, masks, honest, shift=10 * limit, rng=rng
    )
    assert np.abs(bad_values - honest).max() > limit  # a lie beyond what the limit allows
    check = check_witnesses(problem, bad_theta, masks, bad_values, limit)
    assert [r.subset for r in check.rejected] == [0, 1, 2]
    assert all(r.why == ("values" if kind == "values" else "limit") for r in check.rejected)
    with pytest.raises(WitnessRejectedError, match=r"subset 0: .*gradient norm"):
        check.raise_for_rejection()


def test_nan_witness_and_bad_shapes_are_refused(digits) -> None:  # type: ignore[no-untyped-def]
    problem, masks, limit, theta = digits
    bad = theta.copy()
    bad[1, 5] = np.nan
    check = check_witnesses(problem, bad, masks, problem.outputs(theta), limit)
    assert [r.subset for r in check.rejected] == [1] and check.rejected[0].bound == np.inf
    with pytest.raises(ShapeError):
        check_witnesses(problem, theta[:, :10], masks, problem.outputs(theta), limit)
    with pytest.raises(ShapeError):
        check_witnesses(problem, theta.astype(np.float32), masks, problem.outputs(theta), limit)
    with pytest.raises(InvalidParameterError):
        check_witnesses(problem, theta, masks, problem.outputs(theta), float("nan"))


def test_the_limit_charges_at_most_its_share_of_epsilon() -> None:
    eps, b = 0.05, 16.0
    tau = witness_limit(eps, b, RHOS)
    a = np.abs(linear_weights(np.array(RHOS))).sum()
    assert a * (4 * b * tau + 3 * tau * tau) == pytest.approx(0.01 * eps, rel=1e-9)
    design = SharedBaseDesign.saunshi(b"\x04" * 32, 30, 0.5, 0.2, 200)
    rng = np.random.default_rng(3)
    values = np.clip(rng.normal(scale=4.0, size=(len(design), 5)), -b, b)
    predictions = np.clip(rng.normal(scale=4.0, size=values.shape), -b, b)
    cert = certify(values, predictions, design, delta=0.05, tau=np.full(values.shape, tau),
                   validity="finite", bound=b)  # fmt: skip
    assert 0 < cert.tau_slack <= 0.01 * eps
