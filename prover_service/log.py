"""The Prover's transparency log: every signed message it holds, as a leaf of one Merkle tree.

Challenges, responses, verdicts and published attributions are appended by :meth:`append`
*inside the transaction that stores them*, so a message is stored if and only if it is logged.
The hashing and proofs are :mod:`protocol.transparency` (RFC 9162); this module keeps the tree
in the database (:mod:`prover_service.tables`):

- ``log_leaves``: index, message type, what it belongs to (session id or content hash), leaf hash;
- ``log_nodes``: the hash of every *perfect* subtree (level ``l``, index ``i`` covers the leaves
  ``[i * 2**l, (i + 1) * 2**l)``), about two rows per leaf, so the hash of any range a proof
  needs is at most ``log2 n`` lookups;
- ``log_state``: one row, the size and the compact range (the roots of the perfect subtrees
  that make up the tree, left to right). Appending first *updates* this row, which takes its
  row lock (PostgreSQL) or the write lock (SQLite), so concurrent appends from threads or from
  several Prover processes are serialised and leaf indices never collide.

An append costs one ``UPDATE``, one ``SELECT``, one leaf row and on average two node rows; the
root of the current tree comes from the compact range without reading any node.
"""

from __future__ import annotations

import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from protocol.signing import SignedMessage, sign_message
from protocol.transparency import (
    EMPTY_ROOT,
    LogProofError,
    TreeHead,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    log_entry,
    node_hash,
)
from prover_service.errors import Invalid, NotFound
from prover_service.tables import LogLeafRow, LogNodeRow, LogStateRow

__all__ = ["TransparencyLog", "fold_frontier"]


def fold_frontier(frontier: list[bytes]) -> bytes:
    """The root of a tree from its compact range (perfect subtree roots, left to right)."""
    if not frontier:
        return EMPTY_ROOT
    root = frontier[-1]
    for left in reversed(frontier[:-1]):
        root = node_hash(left, root)
    return root


def _frontier(text: str) -> list[bytes]:
    return [bytes.fromhex(text[i : i + 64]) for i in range(0, len(text), 64)]


class TransparencyLog:
    """Append signed messages; serve signed tree heads and proofs (module doc)."""

    def __init__(self, db: sessionmaker[Session], key: Ed25519PrivateKey) -> None:
        self.db, self.key = db, key

    # -- writing ----------------------------------------------------------------------------
    def append(self, s: Session, signed: SignedMessage, ref: str) -> int:
        """Log ``signed`` in the caller's open transaction ``s``; its leaf index."""
        s.flush()  # the caller's rows first: a conflict there must not consume a leaf
        s.execute(update(LogStateRow).where(LogStateRow.id == 1).values(size=LogStateRow.size + 1))
        size, text = s.execute(
            select(LogStateRow.size, LogStateRow.frontier).where(LogStateRow.id == 1)
        ).one()
        index = int(size) - 1
        leaf = leaf_hash(log_entry(signed))
        frontier = _frontier(text)
        nodes = [LogNodeRow(level=0, idx=index, hash=leaf.hex())]
        cur, level, i = leaf, 0, index
        while i & 1:  # the new leaf completes perfect subtrees: merge them up
            cur = node_hash(frontier.pop(), cur)
            level, i = level + 1, i >> 1
            nodes.append(LogNodeRow(level=level, idx=i, hash=cur.hex()))
        frontier.append(cur)
        s.add(LogLeafRow(idx=index, kind=signed.type, ref=ref, leaf_hash=leaf.hex()))
        s.add_all(nodes)
        s.execute(
            update(LogStateRow)
            .where(LogStateRow.id == 1)
            .values(frontier="".join(h.hex() for h in frontier))
        )
        return index

    # -- reading ----------------------------------------------------------------------------
    def size_and_root(self) -> tuple[int, bytes]:
        """The current size and root (from the compact range: no node is read)."""
        with self.db() as s:
            size, text = s.execute(
                select(LogStateRow.size, LogStateRow.frontier).where(LogStateRow.id == 1)
            ).one()
        return int(size), fold_frontier(_frontier(text))

    def head(self) -> SignedMessage:
        """A :class:`~protocol.transparency.TreeHead` of the current log, signed now."""
        size, root = self.size_and_root()
        return sign_message(self.key, TreeHead(size=size, root_hash=root.hex(),
                                               timestamp=int(time.time())))  # fmt: skip

    def _subtree(self, s: Session) -> Any:
        cache: dict[tuple[int, int], bytes] = {}

        def node(level: int, idx: int) -> bytes:
            if (level, idx) not in cache:
                h = s.get(LogNodeRow, (level, idx))
                if h is None:
                    raise NotFound(f"log node {level}/{idx} is missing: the log is damaged")
                cache[(level, idx)] = bytes.fromhex(h.hash)
            return cache[(level, idx)]

        def subtree(lo: int, hi: int) -> bytes:
            n = hi - lo
            if n & (n - 1) == 0 and lo % n == 0:
                return node(n.bit_length() - 1, lo // n)
            k = 1 << ((n - 1).bit_length() - 1)
            return node_hash(subtree(lo, lo + k), subtree(lo + k, hi))

        return subtree

    def _size(self, size: int | None) -> int:
        current, _ = self.size_and_root()
        if size is None:
            return current
        if not 0 <= size <= current:
            raise Invalid(f"tree size {size} is not between 0 and the log's {current}")
        return size

    def root(self, size: int) -> bytes:
        """The root of the first ``size`` entries (an earlier tree head's root)."""
        size = self._size(size)
        if size == 0:
            return EMPTY_ROOT
        with self.db() as s:
            return bytes(self._subtree(s)(0, size))

    def leaf(self, leaf_hex: str) -> LogLeafRow:
        """The (first) leaf with this hash; 404 if the log does not hold it."""
        with self.db() as s:
            row = s.scalars(
                select(LogLeafRow).where(LogLeafRow.leaf_hash == leaf_hex).order_by(LogLeafRow.idx)
            ).first()
        if row is None:
            raise NotFound(f"the log holds no leaf {leaf_hex[:16]}...")
        return row

    def leaves_of(self, ref: str) -> list[LogLeafRow]:
        """The leaves logged for a session id or attribution hash, in log order."""
        with self.db() as s:
            q = select(LogLeafRow).where(LogLeafRow.ref == ref).order_by(LogLeafRow.idx)
            return list(s.scalars(q))

    def inclusion(self, leaf_hex: str, size: int | None = None) -> dict[str, Any]:
        """``{index, size, leaf_hash, root_hash, proof}`` for a leaf in the tree of ``size``."""
        row = self.leaf(leaf_hex)
        size = self._size(size)
        if row.idx >= size:
            raise Invalid(f"leaf {row.idx} was appended after the tree of {size} entries")
        with self.db() as s:
            sub = self._subtree(s)
            proof = inclusion_proof(row.idx, size, sub)
            root = sub(0, size)
        return {"index": row.idx, "size": size, "leaf_hash": leaf_hex, "root_hash": root.hex(),
                "proof": [p.hex() for p in proof]}  # fmt: skip

    def consistency(self, first: int, second: int | None = None) -> dict[str, Any]:
        """``{first, second, first_root, second_root, proof}``: the first tree is a prefix."""
        second = self._size(second)
        if not 0 <= first <= second:
            raise Invalid(f"first size {first} is not between 0 and {second}")
        with self.db() as s:
            sub = self._subtree(s)
            try:
                proof = consistency_proof(first, second, sub)
            except LogProofError as exc:  # pragma: no cover - sizes checked above
                raise Invalid(str(exc)) from None
            roots = [sub(0, n).hex() if n else EMPTY_ROOT.hex() for n in (first, second)]
        return {"first": first, "second": second, "first_root": roots[0],
                "second_root": roots[1], "proof": [p.hex() for p in proof]}  # fmt: skip

    def entries(self, start: int = 0, limit: int = 100) -> list[LogLeafRow]:
        """Leaves ``start..start+limit-1`` in order (for the audit page)."""
        with self.db() as s:
            q = select(LogLeafRow).where(LogLeafRow.idx >= start).order_by(LogLeafRow.idx)
            return list(s.scalars(q.limit(limit)))
