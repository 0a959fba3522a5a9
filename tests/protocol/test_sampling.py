"""Portable subsets and seeds: checked-in vectors, an independent ChaCha20, the laws of B_p."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import InvalidParameterError, ShapeError
from protocol.sampling import (
    ChallengeDesign,
    bernoulli_threshold,
    correlated_pair,
    keystream,
    pack_masks,
    sample_masks,
    training_seeds,
    unpack_masks,
)
from tests.protocol.chacha_reference import chacha20_block, reference_stream

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "protocol_v1.json").read_text())
SEED = bytes.fromhex(VECTORS["seed_hex"])


def _unpack_hex(hex_rows: list[str], n: int) -> np.ndarray:
    packed = np.array([list(bytes.fromhex(h)) for h in hex_rows], dtype=np.uint8)
    return unpack_masks(packed, n)


def test_reference_chacha_matches_rfc8439_block_vector() -> None:
    # RFC 8439 section 2.3.2: key 00..1f, counter 1, nonce 000000090000004a00000000.
    block = chacha20_block(bytes(range(32)), 1, bytes.fromhex("000000090000004a00000000"))
    assert block[:16].hex() == "10f1e7e4d13b5915500fdd1fa32071c4"


@pytest.mark.parametrize("item", VECTORS["keystream"], ids=lambda v: f"{v['domain']}-{v['index']}")
def test_keystream_matches_vectors_and_independent_implementation(item: dict) -> None:
    got = keystream(SEED, item["domain"], item["index"], 48)
    assert got.hex() == item["hex"]
    assert got == reference_stream(SEED, item["domain"], item["index"], 48)


def test_long_keystream_crosses_blocks_like_the_reference() -> None:
    assert keystream(SEED, "pair", 3, 200) == reference_stream(SEED, "pair", 3, 200)


def test_masks_pairs_seeds_and_design_match_vectors() -> None:
    sm = VECTORS["sample_masks"]
    got = sample_masks(SEED, sm["n_train"], sm["p"], sm["rows"], domain=sm["domain"])
    np.testing.assert_array_equal(got, _unpack_hex(sm["packed_hex"], sm["n_train"]))
    for pv in VECTORS["pairs"]:
        x, xp = correlated_pair(SEED, pv["pair_index"], pv["n_train"], pv["p"], pv["rho"])
        np.testing.assert_array_equal(x, _unpack_hex([pv["x_packed_hex"]], pv["n_train"])[0])
        np.testing.assert_array_equal(xp, _unpack_hex([pv["x_prime_packed_hex"]], pv["n_train"])[0])
    ts = VECTORS["training_seeds"]
    assert [str(s) for s in training_seeds(SEED, ts["indices"])] == ts["values"]
    dv = VECTORS["design"]
    d = ChallengeDesign.saunshi(SEED, dv["n_train"], dv["p"], dv["rho0"], dv["pairs_per_level"])
    np.testing.assert_array_equal(d.masks(), _unpack_hex(dv["packed_hex"], dv["n_train"]))
    assert [str(s) for s in d.seeds()] == dv["seeds"]


def test_bits_follow_the_documented_rule() -> None:
    words = np.frombuffer(reference_stream(SEED, "mask", 5, 4 * 40), "<u4")
    expected = words.astype(np.uint64) < np.uint64(bernoulli_threshold(0.3))
    np.testing.assert_array_equal(sample_masks(SEED, 40, 0.3, [5])[0], expected)
    assert bernoulli_threshold(0.5) == 2**31 and bernoulli_threshold(1.0) == 2**32


def test_design_rows_are_independent_of_chunking() -> None:
    d = ChallengeDesign.saunshi(SEED, 50, 0.4, 0.2, 7)
    whole = d.masks()
    parts = np.concatenate([d.masks(s, e) for s, e in [(0, 5), (5, 6), (6, 30), (30, 42)]])
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_array_equal(d.seeds(), np.concatenate([d.seeds(0, 13), d.seeds(13, 42)]))
    assert len(d) == 42 and d.n_pairs == 21


def test_inclusion_rate_is_p() -> None:
    # 200 x 500 Bernoulli(0.3) bits: the mean's sd is 0.0014; 5 sd fails with prob < 1e-6.
    m = sample_masks(SEED, 500, 0.3, range(200))
    assert abs(m.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / m.size)


@pytest.mark.parametrize("rho", [0.0, 0.2, 0.7, 1.0])
def test_pairs_have_the_rho_correlated_law(rho: float) -> None:
    p, n = 0.3, 2000
    xs, xps = zip(*(correlated_pair(SEED, g, n, p, rho) for g in range(20)), strict=True)
    x, xp = np.array(xs), np.array(xps)
    # Marginal of x' is B_p; P(x'_i = x_i) = rho + (1 - rho)(p^2 + (1 - p)^2).
    agree = rho + (1 - rho) * (p * p + (1 - p) ** 2)
    sd = np.sqrt(0.25 / x.size)
    assert abs(xp.mean() - p) < 5 * sd
    assert abs((x == xp).mean() - agree) < 5 * sd
    # Correlation of the +-1 characters is exactly rho.
    phi = (x - p) / np.sqrt(p * (1 - p))
    phip = (xp - p) / np.sqrt(p * (1 - p))
    assert abs((phi * phip).mean() - rho) < 5 * np.sqrt(1.0 / x.size) * 3


@given(st.integers(1, 70), st.integers(0, 9), st.data())
def test_pack_round_trip(n: int, k: int, data: st.DataObject) -> None:
    bits = data.draw(st.lists(st.booleans(), min_size=n * k, max_size=n * k))
    masks = np.array(bits, dtype=bool).reshape(k, n)
    packed = pack_masks(masks)
    assert packed.shape == (k, (n + 7) // 8)
    np.testing.assert_array_equal(unpack_masks(packed, n), masks)


def test_large_challenge_packs_to_bits() -> None:
    # 10^5 x 10^4 would be 125 MB packed; check the arithmetic on a slice of rows.
    d = ChallengeDesign.saunshi(SEED, 10_000, 0.5, 0.1, 50_000 // 3 + 1)
    rows = d.masks(0, 64)
    assert pack_masks(rows).nbytes == 64 * 1250
    assert len(d) * 1250 < 126 * 10**6


def test_bad_inputs_are_refused_clearly() -> None:
    with pytest.raises(InvalidParameterError, match="open interval"):
        sample_masks(SEED, 10, 1.0, range(2))
    with pytest.raises(InvalidParameterError, match=r"\[0, 1\]"):
        correlated_pair(SEED, 0, 10, 0.5, 1.5)
    with pytest.raises(InvalidParameterError, match="finite"):
        correlated_pair(SEED, 0, 10, 0.5, float("nan"))
    with pytest.raises(InvalidParameterError, match="32 bytes"):
        keystream(b"short", "mask", 0, 8)
    with pytest.raises(InvalidParameterError, match="rho0"):
        ChallengeDesign.saunshi(SEED, 10, 0.5, 0.6, 3)
    with pytest.raises(InvalidParameterError, match="pairs per level"):
        ChallengeDesign.saunshi(SEED, 10, 0.5, 0.1, 0)
    with pytest.raises(InvalidParameterError, match="positive integer"):
        ChallengeDesign.saunshi(SEED, 0, 0.5, 0.1, 3)
    with pytest.raises(ShapeError, match="pad bits"):
        unpack_masks(np.array([[0xFF]], dtype=np.uint8), 3)
    with pytest.raises(ShapeError, match="bytes per row"):
        unpack_masks(np.zeros((2, 3), dtype=np.uint8), 30)
    with pytest.raises(ShapeError, match="only 0 and 1"):
        pack_masks(np.array([[0, 2]]))
