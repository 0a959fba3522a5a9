"""Canonical bytes: the encoding that hashes and signatures are computed over.

``canonical_json`` is RFC 8785 (JSON Canonicalization Scheme: sorted keys, no whitespace,
ECMAScript number formatting, UTF-8), via the ``rfc8785`` package. NaN and infinities are
refused. Task identities (``spec_hash``) and, later, signed manifests use it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from protocol.errors import InvalidParameterError

__all__ = ["canonical_json", "sha256_hex"]


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 canonical JSON bytes of a JSON-compatible object."""
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise InvalidParameterError(f"value cannot be canonicalised as JSON: {exc}") from None


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
