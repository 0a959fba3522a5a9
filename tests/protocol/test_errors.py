"""The error tree: every peer misbehaviour is a VerificationError whose reason an abort records;
the wire models refuse anything but their exact shape."""

from __future__ import annotations

import json
import math

import pytest

import protocol.errors as errors
from protocol.decision import AbortReason, abort_decision
from protocol.errors import (
    BadResponseError,
    BadSignatureError,
    MalformedResponseError,
    ProtocolError,
    SpotCheckMismatchError,
    VerificationError,
    WitnessRejectedError,
)
from protocol.messages import Verdict
from protocol.signing import SignedMessage, generate_key, open_signed, sign_message
from protocol.wire import ErrorResponse, JobOut, SessionOut, parse_reply

MISBEHAVIOUR = [
    (BadSignatureError, AbortReason.BAD_SIGNATURE),
    (MalformedResponseError, AbortReason.MALFORMED_RESPONSE),
    (BadResponseError, AbortReason.BAD_RESPONSE),
    (SpotCheckMismatchError, AbortReason.SPOT_CHECK_MISMATCH),
    (WitnessRejectedError, AbortReason.WITNESS_REJECTED),
]


@pytest.mark.parametrize(("cls", "reason"), MISBEHAVIOUR)
def test_each_misbehaviour_is_an_abort_with_its_reason(
    cls: type[VerificationError], reason: AbortReason
) -> None:
    assert issubclass(cls, VerificationError) and issubclass(cls, ProtocolError)
    decision = abort_decision(cls("what the peer did"), epsilon=0.1, delta=0.05,
                              extra={"statistic": math.nan, "n": 3.0})  # fmt: skip
    assert (decision.verdict, decision.reason) == ("abort", reason.value)
    assert decision.detail == "what the peer did"
    assert decision.figures == {"epsilon": 0.1, "delta": 0.05, "n": 3.0}  # no NaN: signable


def test_every_misbehaviour_reason_has_one_class() -> None:
    """The tree in the module doc is the tree in the code: one class per peer reason."""
    classes = [
        obj for name in errors.__all__ if isinstance(obj := getattr(errors, name), type)
        and issubclass(obj, VerificationError) and obj is not VerificationError
    ]  # fmt: skip
    assert sorted(c.__name__ for c in classes) == sorted(c.__name__ for c, _ in MISBEHAVIOUR)
    assert len({c.reason for c in classes}) == len(classes)
    decision_rules = {AbortReason.NOT_CERTIFIED, AbortReason.ESTIMATE_ABOVE_THRESHOLD}
    assert {c.reason for c in classes} | decision_rules == set(AbortReason)
    for name in errors.__all__:  # and every exception there is a ProtocolError
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, ProtocolError), name


def test_a_tampered_signed_message_is_a_bad_signature() -> None:
    key = generate_key()
    verdict = Verdict(session_id="3" * 32, challenge_digest="0" * 64, response_digest="1" * 64,
                      verdict="accept", reason="certified", figures={}, spot_check_indices=(),
                      salt="2" * 64, timestamp=1)  # fmt: skip
    signed = sign_message(key, verdict)
    forged = SignedMessage.model_validate(signed.model_dump() | {
        "payload": signed.payload | {"verdict": "abort"}})  # fmt: skip
    with pytest.raises(BadSignatureError) as caught:
        open_signed(forged, Verdict)
    assert caught.value.reason is AbortReason.BAD_SIGNATURE


JOB = {"id": "a" * 32, "kind": "challenge", "status": "running", "done": 1, "total": 4,
       "result": None, "error": None}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"<html>busy</html>", "body"),  # not JSON
        (b"[]", "body"),  # JSON, not an object
        (json.dumps(JOB | {"done": "1"}).encode(), "done"),  # "1" is not 1: no coercion
        (json.dumps(JOB | {"total": -4}).encode(), "total"),  # out of range
        (json.dumps({k: v for k, v in JOB.items() if k != "status"}).encode(), "status"),
        (json.dumps(JOB | {"owner": "me"}).encode(), "owner"),  # an extra field
    ],
)
def test_a_reply_that_is_not_its_model_is_malformed(body: bytes, where: str) -> None:
    assert parse_reply(JobOut, json.dumps(JOB).encode(), "GET /v1/jobs/a") == JobOut(**JOB)
    with pytest.raises(MalformedResponseError, match=f"GET /v1/jobs/a: malformed reply: {where}"):
        parse_reply(JobOut, body, "GET /v1/jobs/a")


def test_lists_and_nested_models_parse_strictly() -> None:
    session = {"session_id": "s", "task_hash": "0" * 64, "attribution_hash": "1" * 64,
               "challenge_digest": "2" * 64, "status": "training", "verdict": None,
               "job": JOB, "created_at": 1}  # fmt: skip
    (out,) = parse_reply(list[SessionOut], json.dumps([session]).encode(), "GET /v1/sessions")
    assert out.job.total == 4 and out.created_at == 1.0
    bad = [session | {"job": JOB | {"extra": 1}}]
    with pytest.raises(MalformedResponseError, match=r"0\.job\.extra"):
        parse_reply(list[SessionOut], json.dumps(bad).encode(), "GET /v1/sessions")
    with pytest.raises(MalformedResponseError):
        parse_reply(ErrorResponse, b'{"code": "x"}', "error reply")
