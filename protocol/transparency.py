"""The transparency log's mathematics: an RFC 9162 Merkle tree, its proofs, its signed head.

Every signed message of the protocol is a leaf of one append-only Merkle tree kept by the
Prover. The hashing is RFC 9162 section 2.1 (identical to RFC 6962 section 2.1), with SHA-256::

    MTH({})       = SHA-256()
    MTH({d(0)})   = SHA-256(0x00 || d(0))                             leaf hash
    MTH(D[n])     = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))       node hash,
                    k the largest power of two smaller than n

An *inclusion proof* (``PATH``, 2.1.3.1) shows that a leaf is the ``index``-th of a tree of
``size`` leaves with a given root; a *consistency proof* (``PROOF``, 2.1.4.1) shows that the tree
of ``first`` leaves is a prefix of the tree of ``second`` leaves. Both are lists of 32-byte hashes,
at most ``ceil(log2 size)`` of them for inclusion and about as many for consistency. The
verifiers are RFC 9162's algorithms (2.1.3.2 and 2.1.4.2) word for word.

The proofs are computed from a :data:`SubtreeHash` (the hash of the leaves ``[lo, hi)``), so the
same code serves an in-memory list (:func:`subtree_from_leaves`, the reference) and the Prover's
database, which stores every perfect subtree and so answers each call in O(log n) lookups.

A log entry is the RFC 8785 JSON of the whole :class:`~protocol.signing.SignedMessage` (type,
payload, signer, signature): :func:`log_entry`. A :class:`TreeHead` (``treehead.v1``) is the
log's size and root, signed by the Prover with :func:`protocol.signing.sign_message`.

Tested against the RFC 6962 test vectors of transparency-dev/merkle (``tests/vectors/``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.codec import canonical_json
from protocol.errors import ProtocolError
from protocol.signing import SignedMessage

__all__ = [
    "EMPTY_ROOT",
    "LogProofError",
    "SubtreeHash",
    "TreeHead",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "log_entry",
    "node_hash",
    "root_hash",
    "subtree_from_leaves",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()
SubtreeHash = Callable[[int, int], bytes]  # MTH of the leaves [lo, hi), hi > lo


class LogProofError(ProtocolError):
    """An inclusion or consistency proof does not verify (or its sizes are impossible)."""


class TreeHead(BaseModel):
    """P -> anyone: the log holds ``size`` entries whose Merkle root is ``root_hash``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["treehead.v1"] = "treehead.v1"
    version: Literal[1] = 1
    size: int = Field(ge=0)
    root_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    timestamp: int = Field(ge=0)


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)``: the hash of one log entry (RFC 9162 2.1.1)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: an interior node (RFC 9162 2.1.1)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def log_entry(signed: SignedMessage) -> bytes:
    """The bytes a signed message is logged as: RFC 8785 JSON of all four of its fields."""
    return canonical_json(signed.model_dump(mode="json"))


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_hash(leaves: Sequence[bytes]) -> bytes:
    """MTH of a list of *leaf hashes* (not entries); :data:`EMPTY_ROOT` for none. O(n)."""
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    # pairing left to right and carrying an odd last node up unchanged is the same tree as
    # RFC 9162's recursive split at the largest power of two
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def subtree_from_leaves(leaves: Sequence[bytes]) -> SubtreeHash:
    """A :data:`SubtreeHash` over an in-memory list of leaf hashes (the reference)."""

    def subtree(lo: int, hi: int) -> bytes:
        return root_hash(leaves[lo:hi])

    return subtree


def _check_sizes(condition: bool, what: str) -> None:
    if not condition:
        raise LogProofError(what)


def inclusion_proof(index: int, size: int, subtree: SubtreeHash) -> list[bytes]:
    """``PATH(index, D[size])`` (RFC 9162 2.1.3.1): sibling hashes from the leaf up."""
    _check_sizes(0 <= index < size, f"leaf {index} is not in a tree of {size} entries")

    def path(m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _split(n)
        if m - lo < k:
            return path(m, lo, lo + k) + [subtree(lo + k, hi)]
        return path(m, lo + k, hi) + [subtree(lo, lo + k)]

    return path(index, 0, size)


def consistency_proof(first: int, second: int, subtree: SubtreeHash) -> list[bytes]:
    """``PROOF(first, D[second])`` (RFC 9162 2.1.4.1); empty when ``first`` is 0 or ``second``."""
    _check_sizes(0 <= first <= second, f"no consistency from {first} to {second} entries")
    if first in (0, second):
        return []

    def subproof(m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if whole else [subtree(lo, hi)]
        k = _split(n)
        if m <= k:
            return subproof(m, lo, lo + k, whole) + [subtree(lo + k, hi)]
        return subproof(m - k, lo + k, hi, False) + [subtree(lo, lo + k)]

    return subproof(first, 0, second, True)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 2.1.3.2; raises :class:`LogProofError` unless the proof leads to ``root``."""
    _check_sizes(0 <= index < size, f"leaf {index} is not in a tree of {size} entries")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise LogProofError("inclusion proof is longer than the tree is high")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise LogProofError("inclusion proof is shorter than the tree is high")
    if r != root:
        raise LogProofError(f"inclusion proof of leaf {index} does not lead to the root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 2.1.4.2: the tree of ``first`` entries is a prefix of that of ``second``.

    Raises :class:`LogProofError` otherwise (a shrunk log, a rewritten prefix, a bad proof).
    """
    _check_sizes(0 <= first <= second, f"the log shrank from {first} to {second} entries")
    if first == second:
        if proof or first_root != second_root:
            raise LogProofError(f"two different roots for the same size {first}")
        return
    if first == 0:
        if proof:
            raise LogProofError("a consistency proof from the empty tree must be empty")
        return
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two: the first root is a proof node
        path.insert(0, first_root)
    if not path:
        raise LogProofError("empty consistency proof")
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise LogProofError("consistency proof is longer than the tree is high")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise LogProofError("consistency proof is shorter than the tree is high")
    if fr != first_root:
        raise LogProofError(f"the first {first} entries were changed: the earlier root differs")
    if sr != second_root:
        raise LogProofError(f"consistency proof does not lead to the root of {second} entries")
