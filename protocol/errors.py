"""Exceptions of the protocol core, and the reasons a verification aborts.

Two kinds of failure are kept apart (STYLE.md): a *peer that misbehaved* raises a
:class:`VerificationError`, whose ``reason`` (an :class:`AbortReason`) the Verifier signs into an
**abort** verdict; the *infrastructure failing* (network, disk, timeout) is not a protocol error
at all -- the services raise their own transport errors
(``verifier_client.client.TransportError``), which are retried or reported, **never** turned
into an abort.

The tree::

    ProtocolError                   root of everything this package raises on purpose
    ├── InvalidParameterError       a caller passed a parameter outside its domain
    │                               (p not in (0, 1), rho not in [0, 1], epsilon <= 0, ...)
    ├── ShapeError                  an array has the wrong shape or dtype
    ├── NonFiniteError              an array holds NaN or +-Inf where finite values are required
    ├── TaskError                   a task cannot be found, loaded, or broke its contract
    ├── BudgetError                 a plan is impossible (e.g. a tolerance eats the whole margin)
    └── VerificationError           the peer misbehaved: abort, with ``reason``
        ├── BadSignatureError       bad_signature: a signature does not verify, or a signed
        │                           message has the wrong type or signer (protocol.signing)
        ├── MalformedResponseError  malformed_response: a reply is not its wire model
        │                           (not JSON, wrong content type, wrong types, missing or
        │                           extra fields: protocol.wire)
        ├── BadResponseError        bad_response: the response's values or arrays are wrong
        │                           (shape, NaN or infinite, outside [-b, b], bytes that do not
        │                           hash to their signed SHA-256, another challenge's answer)
        ├── SpotCheckMismatchError  spot_check_mismatch: a re-trained spot-check differs beyond
        │                           CHECKEQUIV's tolerance
        └── WitnessRejectedError    witness_rejected: a witness's gradient does not certify its
                                    subset within the challenge's limit, or its outputs are not
                                    the reported values (protocol.witness)

All of them are also ``ValueError`` subclasses, so callers that only know the standard library
still catch them; command-line front ends turn them into one clear line and exit code 2 (or,
for a :class:`VerificationError` during a recorded session, an abort verdict and exit code 1).
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

__all__ = [
    "AbortReason",
    "BadResponseError",
    "BadSignatureError",
    "BudgetError",
    "InvalidParameterError",
    "MalformedResponseError",
    "NonFiniteError",
    "ProtocolError",
    "ShapeError",
    "SpotCheckMismatchError",
    "TaskError",
    "VerificationError",
    "WitnessRejectedError",
]


class AbortReason(StrEnum):
    """Why a verification aborted: the ``reason`` signed into an abort verdict.

    The first five are the peer's misbehaviour (each the ``reason`` of a
    :class:`VerificationError` subclass); the last two are the decision rules' own aborts
    (:mod:`protocol.decision`): the Prover answered well-formed values that do not pass.
    """

    BAD_SIGNATURE = "bad_signature"
    MALFORMED_RESPONSE = "malformed_response"
    BAD_RESPONSE = "bad_response"
    SPOT_CHECK_MISMATCH = "spot_check_mismatch"
    WITNESS_REJECTED = "witness_rejected"
    NOT_CERTIFIED = "not_certified"
    ESTIMATE_ABOVE_THRESHOLD = "estimate_above_threshold"


class ProtocolError(ValueError):
    """Root of the exceptions raised on purpose by :mod:`protocol`."""


class InvalidParameterError(ProtocolError):
    """A scalar parameter lies outside its domain."""


class ShapeError(ProtocolError):
    """An array has the wrong shape or dtype."""


class NonFiniteError(ProtocolError):
    """An array holds NaN or infinite values."""


class TaskError(ProtocolError):
    """A training task is unknown, cannot be loaded, or returned something off-contract."""


class BudgetError(ProtocolError):
    """The requested guarantees cannot be met (e.g. the CHECKEQUIV slack exceeds the margin)."""


class VerificationError(ProtocolError):
    """The peer misbehaved; ``reason`` is what an abort verdict records (module doc).

    Never raised for a network, disk or time-out failure: those are not the peer's fault and
    must not produce an abort verdict.
    """

    reason: ClassVar[AbortReason] = AbortReason.BAD_RESPONSE


class BadSignatureError(VerificationError):
    """A signature does not verify, or a signed message has the wrong type, signer or payload."""

    reason = AbortReason.BAD_SIGNATURE


class MalformedResponseError(VerificationError):
    """A reply does not parse into its wire model (not JSON, wrong types or fields)."""

    reason = AbortReason.MALFORMED_RESPONSE


class BadResponseError(VerificationError):
    """The response's values or arrays break the challenge (shape, finiteness, range, hash)."""

    reason = AbortReason.BAD_RESPONSE


class SpotCheckMismatchError(VerificationError):
    """A spot-check the Verifier re-trained differs from the Prover's beyond the tolerance."""

    reason = AbortReason.SPOT_CHECK_MISMATCH


class WitnessRejectedError(VerificationError):
    """A witness does not certify its subset (:mod:`protocol.witness`): its gradient is too
    large for the challenge's limit, or the reported values are not the witness's outputs."""

    reason = AbortReason.WITNESS_REJECTED
