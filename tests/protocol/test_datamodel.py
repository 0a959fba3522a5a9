"""Datamodels: binary form, content hash, predictions, MSE, LDS, Fourier view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import spearmanr

from protocol.datamodel import Datamodel
from protocol.errors import NonFiniteError, ShapeError

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "protocol_v1.json").read_text())
finite = st.floats(-1e6, 1e6, allow_nan=False)


def test_bytes_and_hash_match_vectors() -> None:
    v = VECTORS["datamodel"]
    dm = Datamodel(np.array(v["intercept"]), np.array(v["weights"]))
    assert dm.to_bytes().hex() == v["bytes_hex"]
    assert dm.content_hash == v["content_hash"]


@given(arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 9)), elements=finite))
def test_round_trip(weights: np.ndarray) -> None:
    dm = Datamodel(weights[:, 0] * 0.5, weights)
    back = Datamodel.from_bytes(dm.to_bytes())
    np.testing.assert_array_equal(back.weights, dm.weights)
    np.testing.assert_array_equal(back.intercept, dm.intercept)
    assert back.content_hash == dm.content_hash


def test_any_flipped_byte_changes_the_hash_or_is_refused() -> None:
    dm = Datamodel(np.array([1.0, 2.0]), np.arange(8.0).reshape(2, 4))
    raw = dm.to_bytes()
    for i in range(len(raw)):
        bad = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
        try:
            other = Datamodel.from_bytes(bad)
        except (ShapeError, NonFiniteError):
            continue
        assert other.content_hash != dm.content_hash


def test_malformed_bytes_are_refused() -> None:
    raw = Datamodel(np.zeros(1), np.zeros((1, 3))).to_bytes()
    with pytest.raises(ShapeError, match="magic"):
        Datamodel.from_bytes(b"X" + raw[1:])
    with pytest.raises(ShapeError, match="needs"):
        Datamodel.from_bytes(raw + b"\x00")
    with pytest.raises(ShapeError, match="shorter"):
        Datamodel.from_bytes(raw[:5])


def test_predict_mse_and_lds() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 6))
    dm = Datamodel(np.array([0.5, -0.5]), w)
    x = rng.random((300, 6)) < 0.5
    np.testing.assert_allclose(dm.predict(x), x @ w.T + dm.intercept)
    f = dm.predict(x) + rng.normal(scale=0.3, size=(300, 2))
    np.testing.assert_allclose(dm.mse(x, f), np.mean((f - dm.predict(x)) ** 2, axis=0))
    for z in range(2):
        want = spearmanr(dm.predict(x)[:, z], f[:, z]).statistic
        assert dm.lds(x, f)[z] == pytest.approx(want, abs=1e-12)
    assert np.isnan(dm.lds(x, np.ones((300, 2)))).all()


def test_bad_inputs() -> None:
    with pytest.raises(NonFiniteError):
        Datamodel(np.zeros(1), np.array([[np.nan]]))
    with pytest.raises(ShapeError, match="shape"):
        Datamodel(np.zeros(2), np.zeros((1, 3)))
    dm = Datamodel(np.zeros(1), np.zeros((1, 3)))
    with pytest.raises(ShapeError, match="N = 3"):
        dm.predict(np.zeros((2, 4), dtype=bool))
    with pytest.raises(ShapeError, match="0 and 1"):
        dm.predict(np.full((2, 3), 2))
    with pytest.raises(ShapeError):
        dm.mse(np.zeros((2, 3), dtype=bool), np.zeros((3, 1)))
    with pytest.raises(NonFiniteError):
        dm.mse(np.zeros((1, 3), dtype=bool), np.array([[np.inf]]))
    assert not dm.weights.flags.writeable
