"""The witness route's wire fields: optional, left out when absent (earlier signed bytes
unchanged), bound by the signature when present."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from protocol.messages import Challenge, ResponseManifest, array_to_npy
from protocol.signing import generate_key, open_signed, public_key_hex, sign_message

HEX = "ab" * 32


def challenge(**extra: object) -> Challenge:
    return Challenge(task_hash=HEX, attribution_hash=HEX, p=0.5, rho0=0.2, pairs_per_level=4,
                     challenge_seed=HEX, spot_check_commitment=HEX, epsilon=0.1, delta=0.05,
                     bound=16.0, tau=0.0, estimator="gap", nonce="cd" * 16, timestamp=1,
                     verifier_key=HEX, **extra)  # type: ignore[arg-type]  # fmt: skip


def response(**extra: object) -> ResponseManifest:
    vref, _ = array_to_npy("values", np.zeros((16, 3)))
    pref, _ = array_to_npy("probes", np.zeros((16, 0), dtype=np.float32))
    return ResponseManifest(session_id="ef" * 16, challenge_digest=HEX, values=vref,
                            probes=pref, device_class="cpu", timestamp=2, **extra)  # type: ignore[arg-type]  # fmt: skip


def test_absent_fields_leave_the_payload_as_before() -> None:
    assert "witness_limit" not in challenge().model_dump()
    dumped = response().model_dump()
    assert "witness" not in dumped and "witness_bytes" not in dumped


def test_present_fields_are_signed_and_round_trip() -> None:
    key = generate_key()
    wref, wdata = array_to_npy("witness", np.ones((16, 650)))
    signed = sign_message(key, response(witness=wref, witness_bytes=len(wdata)))
    back = open_signed(signed, ResponseManifest, signer=public_key_hex(key))
    assert back.witness == wref and back.witness_bytes == len(wdata) > 16 * 650 * 8
    signed_c = sign_message(key, challenge(witness_limit=4e-7))
    assert open_signed(signed_c, Challenge).witness_limit == 4e-7
    assert signed_c.digest != sign_message(key, challenge()).digest


@pytest.mark.parametrize("limit", [0.0, -1.0, float("inf"), float("nan")])
def test_a_limit_must_be_a_positive_number(limit: float) -> None:
    with pytest.raises(ValidationError):
        challenge(witness_limit=limit)
