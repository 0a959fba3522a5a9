"""A from-scratch ChaCha20 (RFC 8439 section 2.3) and the stream key derivation of
``docs/wire-format.md``, written only from those documents, to prove the derivation is what the
documents say and can be re-implemented anywhere."""

from __future__ import annotations

import hashlib
import struct

_MASK = 0xFFFFFFFF


def _rotl(v: int, c: int) -> int:
    return ((v << c) & _MASK) | (v >> (32 - c))


def _quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & _MASK
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & _MASK
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & _MASK
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & _MASK
    s[b] = _rotl(s[b] ^ s[c], 7)


def chacha20_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    state += list(struct.unpack("<8I", key)) + [counter] + list(struct.unpack("<3I", nonce))
    w = state[:]
    for _ in range(10):
        _quarter(w, 0, 4, 8, 12)
        _quarter(w, 1, 5, 9, 13)
        _quarter(w, 2, 6, 10, 14)
        _quarter(w, 3, 7, 11, 15)
        _quarter(w, 0, 5, 10, 15)
        _quarter(w, 1, 6, 11, 12)
        _quarter(w, 2, 7, 8, 13)
        _quarter(w, 3, 4, 9, 14)
    return struct.pack("<16I", *(((x + y) & _MASK) for x, y in zip(w, state, strict=True)))


def reference_stream(seed: bytes, domain: str, index: int, nbytes: int) -> bytes:
    key = hashlib.sha256(
        b"VDA/v1/stream\x00" + domain.encode("ascii") + b"\x00" + seed + struct.pack("<Q", index)
    ).digest()
    out = b"".join(chacha20_block(key, i, bytes(12)) for i in range((nbytes + 63) // 64))
    return out[:nbytes]
