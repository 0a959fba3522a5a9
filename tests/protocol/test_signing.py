"""Signing and messages: round trips, tampering, tags, keys, arrays, commitments, vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ShapeError
from protocol.messages import (
    AttributionManifest,
    Challenge,
    Verdict,
    array_from_npy,
    array_to_npy,
    commit_spot_checks,
)
from protocol.signing import (
    BadSignatureError,
    KeyFileError,
    SignedMessage,
    generate_key,
    load_private_key,
    open_signed,
    public_key_hex,
    save_private_key,
    sign_bytes,
    sign_message,
    signed_bytes,
    verify_bytes,
)

VECTORS = Path(__file__).parents[1] / "vectors"
FIXED_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # test vector key only


def _challenge(**over: object) -> Challenge:
    fields: dict[str, object] = dict(
        task_hash="a" * 64, attribution_hash="b" * 64, p=0.5, rho0=0.2, pairs_per_level=100,
        challenge_seed="c" * 64, spot_check_commitment="d" * 64, epsilon=0.5, delta=0.05,
        bound=4.0, tau=0.0, estimator="gap", nonce="e" * 32, timestamp=1_700_000_000,
        verifier_key=public_key_hex(FIXED_KEY),
    )  # fmt: skip
    fields.update(over)
    return Challenge.model_validate(fields)


def test_signed_challenge_matches_the_checked_in_vector() -> None:
    signed = sign_message(FIXED_KEY, _challenge())
    vector = json.loads((VECTORS / "signed_challenge_v1.json").read_text())
    assert signed.model_dump() == vector
    assert open_signed(SignedMessage.model_validate(vector), Challenge) == _challenge()


def test_round_trip_and_signer_pinning() -> None:
    key = generate_key()
    signed = sign_message(key, _challenge(verifier_key=public_key_hex(key)))
    assert open_signed(signed, Challenge, signer=public_key_hex(key)).p == 0.5
    with pytest.raises(BadSignatureError, match="unexpected key"):
        open_signed(signed, Challenge, signer=public_key_hex(generate_key()))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_flipping_any_byte_of_the_signed_bytes_breaks_the_signature(data: st.DataObject) -> None:
    signed = sign_message(FIXED_KEY, _challenge())
    raw = bytearray(signed_bytes(signed.type, signed.payload))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(BadSignatureError):
        verify_bytes(signed.signer, signed.signature, bytes(raw))


def test_tampered_payload_and_wrong_type_are_refused() -> None:
    signed = sign_message(FIXED_KEY, _challenge())
    tampered = signed.model_copy(update={"payload": {**signed.payload, "epsilon": 5.0}})
    with pytest.raises(BadSignatureError, match="does not verify"):
        open_signed(tampered, Challenge)
    with pytest.raises(BadSignatureError, match="expected a verdict.v1"):
        open_signed(signed, Verdict)
    # The tag binds the type: the same payload bytes under another type do not verify.
    relabelled = signed.model_copy(update={"type": "attribution.v1"})
    with pytest.raises(BadSignatureError):
        open_signed(relabelled, AttributionManifest)


def test_malformed_payload_is_refused_after_the_signature_checks() -> None:
    bad = _challenge().model_dump(mode="json") | {"p": 1.5}
    signature = sign_bytes(FIXED_KEY, signed_bytes("challenge.v1", bad))
    signed = SignedMessage(
        type="challenge.v1", payload=bad, signer=public_key_hex(FIXED_KEY), signature=signature
    )
    with pytest.raises(BadSignatureError, match="malformed"):
        open_signed(signed, Challenge)


def test_key_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key()
    path = tmp_path / "k.pem"
    save_private_key(key, path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert public_key_hex(load_private_key(path)) == public_key_hex(key)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        save_private_key(key, path)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_private_key(tmp_path / "none.pem")
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(KeyFileError, match="not a PEM"):
        load_private_key(tmp_path / "junk.pem")
    monkeypatch.setenv("VDA_TEST_KEY", path.read_text())
    assert public_key_hex(load_private_key(env="VDA_TEST_KEY")) == public_key_hex(key)
    with pytest.raises(KeyFileError, match="not set"):
        load_private_key(env="VDA_UNSET_KEY")


def test_arrays_are_bound_by_hash_dtype_and_shape() -> None:
    ref, data = array_to_npy("values", np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(array_from_npy(ref, data), np.arange(6.0).reshape(2, 3))
    with pytest.raises(ShapeError, match="SHA-256"):
        array_from_npy(ref, data[:-1] + b"\x01")
    wrong = ref.model_copy(update={"shape": (3, 2)})
    with pytest.raises(ShapeError, match=r"signed|expected \(3, 2\)"):
        array_from_npy(wrong.model_copy(update={"sha256": ref.sha256}), data)
    with pytest.raises(ShapeError, match="dtype"):
        array_to_npy("x", np.zeros(2, dtype=np.int16))


def test_commitment_hides_order_and_binds_salt() -> None:
    salt = bytes(32)
    assert commit_spot_checks([3, 1, 2], salt) == commit_spot_checks([1, 2, 3, 3], salt)
    assert commit_spot_checks([1, 2, 3], salt) != commit_spot_checks([1, 2, 4], salt)
    assert commit_spot_checks([1, 2, 3], salt) != commit_spot_checks([1, 2, 3], b"\x01" * 32)
    with pytest.raises(ShapeError):
        commit_spot_checks([1], b"short")


def test_messages_refuse_unknown_fields_and_out_of_range_values() -> None:
    with pytest.raises(ValueError):
        _challenge(extra_field=1)
    with pytest.raises(ValueError):
        _challenge(rho0=0.9)
    with pytest.raises(ValueError):
        _challenge(nonce="xyz")
