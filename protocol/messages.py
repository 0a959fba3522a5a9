"""The protocol's messages (docs/protocol.md#two-message-protocol), as frozen pydantic models.

Flow: the Prover publishes an :class:`AttributionManifest` (commit); the Verifier sends a
:class:`Challenge` naming it; the Prover answers with a :class:`ResponseManifest`; the Verifier
posts its :class:`Verdict`, which opens the spot-check commitment. Every message is signed with
:func:`protocol.signing.sign_message`; binary arrays travel beside the JSON as ``.npy`` bytes and
are bound to it by :class:`ArrayRef` (SHA-256 of the exact bytes, dtype, shape).

**Spot-check commitment**: ``SHA-256(b"VDA/v1/spot-check\\x00" || salt (32 bytes) ||
u32le(k) || u32le(i_1) || ... || u32le(i_k))`` over the sorted distinct indices.

Limits (``LIMITS``) bound every size so a peer cannot make the other side allocate without end.
"""

from __future__ import annotations

import hashlib
import io
import struct
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from protocol.errors import ShapeError
from protocol.npy import check_npy_header
from protocol.sampling import ChallengeDesign, SharedBaseDesign

__all__ = [
    "ArrayRef",
    "AttributionManifest",
    "Challenge",
    "LIMITS",
    "PROTOCOL_VERSION",
    "Provenance",
    "ResponseManifest",
    "Verdict",
    "array_from_npy",
    "array_to_npy",
    "commit_spot_checks",
]

PROTOCOL_VERSION = 1
LIMITS = {
    "n_train": 10**6,
    "n_targets": 10**4,
    "n_subsets": 2 * 10**6,
    "spot_checks": 10**5,
    "array_bytes": 2 * 10**9,
    "json_bytes": 8 * 2**20,
}
Hex32 = Field(pattern=r"^[0-9a-f]{64}$")
_DTYPES = ("<f8", "<f4", "|u1", "<u8")


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    version: Literal[1] = 1


class ArrayRef(BaseModel):
    """A binary array bound into a signed message: name, SHA-256 of the .npy bytes, dtype, shape."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=r"^[a-z_]{1,32}$")
    sha256: str = Hex32
    dtype: Literal["<f8", "<f4", "|u1", "<u8"]
    shape: tuple[int, ...] = Field(max_length=3)


SettingValue = str | int | float | bool


class Provenance(BaseModel):
    """Where an imported attribution came from: the outside tool, its version and settings, the
    trainings it spent outside this Prover (its checkpoints), and the calibration done here.

    ``scores_sha256`` is the SHA-256 of the ``.npy`` bytes of the (Z, N) float64 scores that were
    calibrated (absent for a complete datamodel); ``calibration`` holds the figures of
    ``prover_service.attribution.calibration.CalibrationQuality`` (median R^2, negative scales).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    tool: str = Field(min_length=1, max_length=64)
    tool_version: str = Field(default="", max_length=64)
    settings: dict[str, SettingValue] = Field(default_factory=dict, max_length=64)
    outside_trainings: int = Field(default=0, ge=0)
    calibration_trainings: int = Field(default=0, ge=0)
    orientation: Literal["target-by-train", "train-by-target", ""] = ""
    scores_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    calibration: dict[str, float] = Field(default_factory=dict, max_length=16)
    uploader: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class AttributionManifest(_Message):
    """P publishes g before any challenge: the challenge names ``content_hash``.

    ``trainings`` counts every training the attribution cost, an outside tool's included
    (``provenance.outside_trainings``). ``provenance`` (imported attributions) is left out of the
    payload when absent, so earlier manifests keep their signed bytes.
    """

    type: Literal["attribution.v1"] = "attribution.v1"
    task_hash: str = Hex32
    method: str = Field(max_length=32)
    trainings: int = Field(ge=0)
    n_train: int = Field(ge=1, le=LIMITS["n_train"])
    n_targets: int = Field(ge=1, le=LIMITS["n_targets"])
    content_hash: str = Hex32  # SHA-256 of Datamodel.to_bytes()
    created_at: int = Field(ge=0)
    provenance: Provenance | None = None

    @model_serializer(mode="wrap")
    def _leave_out_provenance(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("provenance", 0) is None:
            data.pop("provenance")
        return data


class Challenge(_Message):
    """V -> P: what to train, and a commitment to the secret spot-checks."""

    type: Literal["challenge.v1"] = "challenge.v1"
    task_hash: str = Hex32
    attribution_hash: str = Hex32
    p: float = Field(gt=0, lt=1)
    rho0: float = Field(gt=0, le=0.5)
    pairs_per_level: int = Field(ge=1, le=LIMITS["n_subsets"] // 6)
    challenge_seed: str = Hex32
    spot_check_commitment: str = Hex32
    epsilon: float = Field(gt=0)
    delta: float = Field(gt=0, lt=1)
    bound: float = Field(gt=0)
    tau: float = Field(ge=0)
    estimator: Literal["residual", "gap"]
    nonce: str = Field(pattern=r"^[0-9a-f]{32}$")
    timestamp: int = Field(ge=0)
    verifier_key: str = Hex32
    # The Prover this challenge is for (its public key), so that a captured challenge cannot be
    # replayed to another Prover. Optional for wire compatibility: when absent it is left out of
    # the payload (and of the signed bytes), exactly as before the field existed.
    prover_key: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    # How E is laid out and how the Verifier decides (the certificate, protocol.certificate).
    # Left out of the payload at their defaults, so earlier challenges keep their bytes.
    layout: Literal["pairs", "shared-base"] = "pairs"
    aggregate: Literal["mean", "max"] = "mean"
    validity: Literal["clt", "finite", "betting"] = "clt"
    # The witness route (protocol.witness): when set, the Prover returns theta(S) for every
    # subset, each certifying its values within this per-value bound (f's units). Left out of
    # the payload when absent.
    witness_limit: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    # What the Verifier asked, as typed, for the reader of a transcript (the audit page): the
    # share of Var f when epsilon was given as one (epsilon is then this share of a lower
    # confidence bound on Var f from the Verifier's pilot), and the total failure probability
    # when it was split (delta is the certificate's part). Informational: no check reads them.
    # Left out of the payload when None, so earlier challenges keep their bytes.
    epsilon_share: float | None = Field(default=None, gt=0, lt=1)
    delta_total: float | None = Field(default=None, gt=0, lt=1)

    @model_serializer(mode="wrap")
    def _leave_out_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key, default in _OPTIONAL_DEFAULTS.items():
            if key in data and data[key] == default:
                data.pop(key)
        return data

    @property
    def n_subsets(self) -> int:
        """|E|, the trainings this challenge asks for: 2 L n pairs' subsets, or (1 + L) n on the
        shared-base layout (the size does not depend on N)."""
        return len(self.design(1))

    def design(self, n_train: int) -> ChallengeDesign | SharedBaseDesign:
        """The subsets E this challenge asks for, on a pool of ``n_train`` examples:
        ``pairs_per_level`` pairs per level, or as many shared bases."""
        seed = bytes.fromhex(self.challenge_seed)
        if self.layout == "shared-base":
            return SharedBaseDesign.saunshi(seed, n_train, self.p, self.rho0, self.pairs_per_level)
        return ChallengeDesign.saunshi(seed, n_train, self.p, self.rho0, self.pairs_per_level)


_OPTIONAL_DEFAULTS: dict[str, Any] = {
    "prover_key": None,
    "layout": "pairs",
    "aggregate": "mean",
    "validity": "clt",
    "witness_limit": None,
    "epsilon_share": None,
    "delta_total": None,
}


class ResponseManifest(_Message):
    """P -> V: f on every challenge subset and the CHECKEQUIV probes, as bound arrays.

    ``witness`` (the witness route, when the challenge names a ``witness_limit``): theta(S) of
    every subset, (|E|, P) float64, and ``witness_bytes`` its .npy size. Both are left out of
    the payload when absent, so earlier responses keep their signed bytes.
    """

    type: Literal["response.v1"] = "response.v1"
    session_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    challenge_digest: str = Hex32
    values: ArrayRef
    probes: ArrayRef
    device_class: str = Field(max_length=128)
    timestamp: int = Field(ge=0)
    witness: ArrayRef | None = None
    witness_bytes: int | None = Field(default=None, ge=0, le=LIMITS["array_bytes"])

    @model_serializer(mode="wrap")
    def _leave_out_witness(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in ("witness", "witness_bytes"):
            if key in data and data[key] is None:
                data.pop(key)
        return data


class Verdict(_Message):
    """V -> P after deciding: the verdict, its figures, and the opened commitment."""

    type: Literal["verdict.v1"] = "verdict.v1"
    session_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    challenge_digest: str = Hex32
    response_digest: str = Hex32
    verdict: Literal["accept", "abort"]
    reason: str = Field(max_length=64)
    figures: dict[str, float]
    spot_check_indices: tuple[int, ...] = Field(max_length=LIMITS["spot_checks"])
    salt: str = Hex32
    local_values: ArrayRef | None = None
    timestamp: int = Field(ge=0)


def commit_spot_checks(indices: list[int] | tuple[int, ...], salt: bytes) -> str:
    """The commitment to a spot-check set (module doc)."""
    if len(salt) != 32:
        raise ShapeError("the commitment salt must be 32 bytes")
    idx = sorted(set(int(i) for i in indices))
    if any(i < 0 or i >= 2**32 for i in idx):
        raise ShapeError("spot-check indices must fit in uint32")
    body = struct.pack(f"<I{len(idx)}I", len(idx), *idx)
    return hashlib.sha256(b"VDA/v1/spot-check\x00" + salt + body).hexdigest()


def array_to_npy(name: str, array: NDArray[np.generic]) -> tuple[ArrayRef, bytes]:
    """``.npy`` bytes of an array (little-endian) and the reference that binds them."""
    arr = np.ascontiguousarray(array)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    arr = arr.astype(dtype, copy=False)
    if arr.dtype.str not in _DTYPES:
        raise ShapeError(f"array {name!r}: dtype {arr.dtype.str} is not one of {_DTYPES}")
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    ref = ArrayRef.model_validate(
        {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "dtype": arr.dtype.str,
         "shape": tuple(arr.shape)}
    )  # fmt: skip
    return ref, data


def array_from_npy(ref: ArrayRef, data: bytes) -> NDArray[np.generic]:
    """Parse ``.npy`` bytes after checking them against their reference (hash, then the header's
    dtype, shape and length: :func:`protocol.npy.check_npy_header`), so nothing is allocated
    beyond what the signed reference announces."""
    if len(data) > LIMITS["array_bytes"]:
        raise ShapeError(f"array {ref.name!r} is larger than {LIMITS['array_bytes']} bytes")
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ShapeError(f"array {ref.name!r} does not match its signed SHA-256")
    # the header against the signed dtype and shape before np.load allocates what it announces
    check_npy_header(data, shape=ref.shape, dtypes=(ref.dtype,), max_bytes=LIMITS["array_bytes"],
                     name=f"array {ref.name!r}")  # fmt: skip
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ShapeError(f"array {ref.name!r} is not a valid .npy: {exc}") from None
    if arr.dtype.str != ref.dtype or tuple(arr.shape) != tuple(ref.shape):
        raise ShapeError(
            f"array {ref.name!r}: got {arr.dtype.str} {arr.shape}, signed {ref.dtype} {ref.shape}"
        )
    return np.asarray(arr)
