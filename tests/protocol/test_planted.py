"""The planted task: its exact spectrum, Phi and err against Monte Carlo and against each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from protocol.errors import InvalidParameterError, TaskError
from protocol.sampling import sample_masks
from protocol.tasks import PlantedTask, spec_hash

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "protocol_v1.json").read_text())


def test_spectrum_has_the_planted_weights_at_half() -> None:
    t = PlantedTask(n_train=40, n_targets=3, b0=0.3, b1=0.8, b2=0.25, b3=0.1, noise=0.3)
    s = t.spectrum(0.5)
    np.testing.assert_allclose(s.b0, 0.3)
    np.testing.assert_allclose(s.b1, 0.8)
    np.testing.assert_allclose(s.b2, 0.25)
    np.testing.assert_allclose(s.b3, 0.1)
    np.testing.assert_allclose(s.residual, 0.25 + 0.1 + 0.09)


@pytest.mark.parametrize("p", [0.5, 0.3, 0.8])
def test_spectrum_matches_monte_carlo(p: float) -> None:
    t = PlantedTask(n_train=30, n_targets=2, b0=0.2, b1=0.7, b2=0.3, b3=0.2, noise=0.25, seed=3)
    s = t.spectrum(p)
    rng = np.random.default_rng(11)
    k = 200_000
    x = rng.random((k, 30)) < p
    f = t.evaluate(x, rng.integers(0, 2**63, k).astype(np.uint64))
    # Mean, variance and each degree-1 coefficient E[f phi_i] against the exact spectrum;
    # tolerances are 6 standard errors (failure rate < 1e-8 per check at this fixed seed).
    se = np.sqrt(f.var(0) / k)
    assert np.all(np.abs(f.mean(0) - s.constant) < 6 * se)
    assert np.all(np.abs(f.var(0) - s.variance) < 6 * np.sqrt(np.var((f - f.mean(0)) ** 2, 0) / k))
    phi = (2 * x - 1 - (2 * p - 1)) / (2 * np.sqrt(p * (1 - p)))
    lin = f.T @ phi / k
    lin_se = np.sqrt(np.mean((f[:, :, None] * phi[:, None, :]) ** 2, 0) / k)
    assert np.all(np.abs(lin - s.linear) < 6 * lin_se + 1e-12)


def test_optimal_datamodel_has_zero_err_and_the_residual_mse() -> None:
    t = PlantedTask(n_train=25, n_targets=2, b3=0.05, seed=9)
    for p in (0.5, 0.35):
        phi = t.optimal_datamodel(p)
        np.testing.assert_allclose(t.err(phi, p), 0.0, atol=1e-20)
        rng = np.random.default_rng(2)
        x = rng.random((100_000, 25)) < p
        f = t.evaluate(x, rng.integers(0, 2**63, 100_000).astype(np.uint64))
        mse = phi.mse(x, f)
        assert np.all(np.abs(mse - t.spectrum(p).residual) < 0.02)


def test_err_of_half_scaled_datamodel_is_exact() -> None:
    # g = Phi / 2: err = (c/2)^2 + B1 / 4 in Fourier terms (c the constant of Phi).
    t = PlantedTask(n_train=20, n_targets=2, seed=4)
    phi = t.optimal_datamodel()
    s = t.spectrum()
    np.testing.assert_allclose(t.err(phi.scaled(0.5)), s.constant**2 / 4 + s.b1 / 4)


def test_same_mask_and_seed_give_the_same_value() -> None:
    t = PlantedTask(n_train=15, n_targets=2, noise=0.5)
    x = sample_masks(bytes(32), 15, 0.5, range(8))
    seeds = np.arange(8, dtype=np.uint64)
    a = t.evaluate(x, seeds)
    np.testing.assert_array_equal(a, t.evaluate(x, seeds))
    np.testing.assert_array_equal(a[3:5], t.evaluate(x[3:5], seeds[3:5]))
    assert not np.array_equal(a, t.evaluate(x, seeds + 100))  # the seed matters


def test_values_and_hash_match_vectors() -> None:
    v = VECTORS["planted"]
    t = PlantedTask(**v["params"])
    assert spec_hash(t) == v["spec_hash"]
    x = sample_masks(bytes.fromhex(VECTORS["seed_hex"]), 12, 0.5, range(4))
    got = t.evaluate(x, np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64))
    np.testing.assert_allclose(got, np.array(v["values"]), rtol=1e-12, atol=1e-12)


def test_bound_is_the_supremum_and_clipping_refuses_exact_truth() -> None:
    t = PlantedTask(n_train=10, b3=0.2)
    assert t.bound == t.supremum
    clipped = PlantedTask(n_train=10, b3=0.2, bound=1.0)
    x = np.ones((3, 10), dtype=bool)
    assert np.all(np.abs(clipped.evaluate(x, np.arange(3, dtype=np.uint64))) <= 1.0)
    with pytest.raises(TaskError, match="clips"):
        clipped.spectrum()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_train": 2}, "n_train"),
        ({"n_targets": 0}, "n_targets"),
        ({"b1": -1.0}, "b1"),
        ({"noise": float("nan")}, "noise"),
        ({"n_train": 4, "n_pairs": 7}, "n_pairs"),
        ({"bound": 0.0}, "bound"),
    ],
)
def test_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        PlantedTask(**kwargs)
