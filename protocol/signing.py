"""Ed25519 signatures over tagged canonical bytes: the only module that touches the keys.

**What is signed.** For a message of type T (e.g. ``"challenge.v1"``) with JSON payload P ::

    signed_bytes = b"VDA-v1" || 0x00 || ascii(T) || 0x00 || RFC 8785 canonical JSON of P

The tag binds the signature to the protocol version and the message type, so a signature on a
challenge can never be replayed as a verdict. A :class:`SignedMessage` carries the payload as
JSON, the type, the signer's raw public key (hex) and the signature (hex); :func:`open_signed`
checks the signature *before* parsing the payload into its model.

**Signed requests** (HTTP headers ``X-VDA-Key``, ``X-VDA-Timestamp``, ``X-VDA-Nonce``,
``X-VDA-Signature``) sign :func:`signed_request_bytes`: the method, the target (path *and* query
string, as sent), a time stamp, a fresh nonce and the SHA-256 of the body, under the tag
``request.v2``, so a captured header cannot be replayed to another path, query or body, nor twice
(the receiver keeps the nonces it saw within its time window). :func:`request_bytes` (tag
``request``, v1) covers only method, path and time; it is kept for reading old records.

**Keys.** :func:`generate_key` / :func:`save_private_key` write PKCS#8 PEM files with mode 0600;
:func:`load_private_key` reads them (or a PEM from an environment variable) with clear errors, and
refuses a key file that its group or others may read.
A key's fingerprint is the first 16 bytes (hex) of the SHA-256 of its raw public key.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.codec import canonical_json
from protocol.errors import BadSignatureError, ProtocolError

__all__ = [
    "BadSignatureError",
    "KeyFileError",
    "SignedMessage",
    "create_key_file",
    "fingerprint",
    "generate_key",
    "load_private_key",
    "open_signed",
    "public_key_hex",
    "request_bytes",
    "save_private_key",
    "sign_bytes",
    "sign_message",
    "sign_request",
    "signed_bytes",
    "signed_request_bytes",
    "verify_bytes",
]

M = TypeVar("M", bound=BaseModel)


class KeyFileError(ProtocolError):
    """A key file is missing, unreadable or not an Ed25519 private key."""


class SignedMessage(BaseModel):
    """A message on the wire: its type, JSON payload, signer and signature."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = Field(pattern=r"^[a-z]+(\.[a-z]+)*\.v[0-9]+$", max_length=64)
    payload: dict[str, Any]
    signer: str = Field(pattern=r"^[0-9a-f]{64}$")
    signature: str = Field(pattern=r"^[0-9a-f]{128}$")

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the signed bytes: how other messages refer to this one."""
        return hashlib.sha256(signed_bytes(self.type, self.payload)).hexdigest()


def signed_bytes(message_type: str, payload: dict[str, Any]) -> bytes:
    """The exact bytes a signature covers (module doc)."""
    return b"VDA-v1\x00" + message_type.encode("ascii") + b"\x00" + canonical_json(payload)


def request_bytes(method: str, path: str, timestamp: int) -> bytes:
    """Version 1 of a signed request (no query, no nonce: replayable; superseded by
    :func:`signed_request_bytes`): ``b"VDA-v1" || 0x00 || b"request" || 0x00 ||
    "METHOD PATH UNIX-TIME"``."""
    return b"VDA-v1\x00request\x00" + f"{method} {path} {timestamp}".encode()


def signed_request_bytes(
    method: str, target: str, timestamp: int, nonce: str, body_sha256: str
) -> bytes:
    """What a signed HTTP request signs (module doc): ``b"VDA-v1" || 0x00 || b"request.v2" ||
    0x00 || RFC 8785 JSON {method, target, timestamp, nonce, body_sha256}``, where ``target`` is
    the raw path with its query string (``/v1/sessions?task=ab``) and ``body_sha256`` the hex
    SHA-256 of the body bytes (of ``b""`` for a GET)."""
    fields = {"method": method.upper(), "target": target, "timestamp": int(timestamp),
              "nonce": nonce, "body_sha256": body_sha256}  # fmt: skip
    return signed_bytes("request.v2", fields)


def sign_request(
    key: Ed25519PrivateKey, method: str, target: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The four ``X-VDA-*`` headers of a signed request (a fresh 16-byte nonce each call)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    nonce = os.urandom(16).hex()
    data = signed_request_bytes(method, target, ts, nonce, hashlib.sha256(body).hexdigest())
    return {"X-VDA-Key": public_key_hex(key), "X-VDA-Timestamp": str(ts), "X-VDA-Nonce": nonce,
            "X-VDA-Signature": key.sign(data).hex()}  # fmt: skip


def generate_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key, hex."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def fingerprint(public_hex: str) -> str:
    """First 16 bytes (hex) of SHA-256 of the raw public key."""
    return hashlib.sha256(bytes.fromhex(public_hex)).hexdigest()[:32]


def save_private_key(key: Ed25519PrivateKey, path: Path, overwrite: bool = False) -> None:
    """Write a PKCS#8 PEM file readable by its owner only; refuses to overwrite by default."""
    if path.exists() and not overwrite:
        raise KeyFileError(f"{str(path)!r} exists; refusing to overwrite a key")
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an overwritten file keeps its old mode otherwise
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def create_key_file(path: Path) -> dict[str, str]:
    """``keygen`` of both CLIs: write a new key (refusing to overwrite); public key, fingerprint."""
    key = generate_key()
    save_private_key(key, path)
    pub = public_key_hex(key)
    return {"public_key": pub, "fingerprint": fingerprint(pub), "file": str(path)}


def load_private_key(path: Path | None = None, env: str | None = None) -> Ed25519PrivateKey:
    """Load a private key from a PEM file, or from the PEM text in environment variable ``env``."""
    if path is None and env is None:
        raise KeyFileError("no key given: pass a key file or set the key's environment variable")
    if path is not None:
        if not path.is_file():
            raise KeyFileError(f"key file {str(path)!r} does not exist (create it with keygen)")
        data = path.read_bytes()
        where = repr(str(path))
    else:
        text = os.environ.get(env or "")
        if not text:
            raise KeyFileError(f"environment variable {env} is not set")
        data = text.encode()
        where = f"${env}"
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{where} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{where} is not an Ed25519 key")
    if path is not None and os.name == "posix" and path.stat().st_mode & 0o077:
        mode = oct(path.stat().st_mode & 0o777)[2:]
        raise KeyFileError(
            f"key file {where} is readable by group or others (mode {mode}); run: chmod 600 {path}"
        )
    return key


def sign_bytes(key: Ed25519PrivateKey, data: bytes) -> str:
    """Signature (hex) over raw bytes (for request authentication headers)."""
    return key.sign(data).hex()


def verify_bytes(public_hex: str, signature_hex: str, data: bytes) -> None:
    """Raise :class:`BadSignatureError` unless ``signature_hex`` signs ``data`` for the key."""
    try:
        pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        pub.verify(bytes.fromhex(signature_hex), data)
    except (InvalidSignature, ValueError):
        raise BadSignatureError("signature does not verify") from None


def sign_message(key: Ed25519PrivateKey, message: BaseModel) -> SignedMessage:
    """Sign a message model; its ``type`` field is the tag."""
    payload = message.model_dump(mode="json")
    message_type = payload["type"]
    return SignedMessage(
        type=message_type,
        payload=payload,
        signer=public_key_hex(key),
        signature=key.sign(signed_bytes(message_type, payload)).hex(),
    )


def open_signed(signed: SignedMessage, model: type[M], signer: str | None = None) -> M:
    """Verify, *then* parse: the payload as ``model``, signed by ``signer`` if given."""
    want_type = model.model_fields["type"].default
    if signed.type != want_type or signed.payload.get("type") != want_type:
        raise BadSignatureError(f"expected a {want_type} message; got {signed.type}")
    if signer is not None and signed.signer != signer:
        raise BadSignatureError("message is signed by an unexpected key")
    verify_bytes(signed.signer, signed.signature, signed_bytes(signed.type, signed.payload))
    try:
        return model.model_validate(signed.payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise BadSignatureError(
            f"signed {want_type} payload is malformed: {where}: {first['msg']}"
        ) from None
