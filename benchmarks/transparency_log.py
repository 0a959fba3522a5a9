"""Transparency log costs, printed as JSON: proof sizes at 10^3 and 10^6 entries (from a
perfect-subtree store, as the database keeps it) and, on a SQLite file, the time and bytes of
one append (each in its own transaction) and the time of one inclusion proof.

Run: ``python -m benchmarks.transparency_log``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from sqlalchemy import text

from protocol.signing import generate_key, sign_message
from protocol.transparency import (
    TreeHead,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    log_entry,
    node_hash,
    verify_inclusion,
)
from prover_service.log import TransparencyLog
from prover_service.tables import make_engine


def proof_sizes(n: int) -> dict[str, object]:
    leaves = [leaf_hash(i.to_bytes(8, "big")) for i in range(n)]
    levels = [leaves]
    while len(levels[-1]) > 1:
        prev = levels[-1]
        levels.append([node_hash(prev[i], prev[i + 1]) for i in range(0, len(prev) - 1, 2)])

    def sub(lo: int, hi: int) -> bytes:
        m = hi - lo
        if m & (m - 1) == 0 and lo % m == 0:
            return levels[m.bit_length() - 1][lo // m]
        k = 1 << ((m - 1).bit_length() - 1)
        return node_hash(sub(lo, lo + k), sub(lo + k, hi))

    inc = [len(inclusion_proof(i, n, sub)) for i in (0, n // 3, n - 1)]
    con = [len(consistency_proof(m, n, sub)) for m in (1, n // 3, n - 1)]
    t = time.perf_counter()
    verify_inclusion(leaves[n // 3], n // 3, n, inclusion_proof(n // 3, n, sub), sub(0, n))
    return {"inclusion_hashes": inc, "consistency_hashes": con,
            "max_bytes": 32 * max(inc + con),
            "prove_and_verify_ms": round((time.perf_counter() - t) * 1e3, 3)}  # fmt: skip


def sqlite_costs(count: int = 2000) -> dict[str, float]:
    folder = tempfile.mkdtemp()
    engine, db = make_engine(f"sqlite:///{folder}/p.db")
    log = TransparencyLog(db, generate_key())
    key = generate_key()
    msgs = [sign_message(key, TreeHead(size=i, root_hash="0" * 64, timestamp=i))
            for i in range(count)]  # fmt: skip
    before = os.path.getsize(f"{folder}/p.db")
    t = time.perf_counter()
    for m in msgs:
        with db.begin() as s:
            log.append(s, m, "x" * 32)
    append_s = (time.perf_counter() - t) / count
    with engine.connect() as conn:
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    grown = os.path.getsize(f"{folder}/p.db") - before
    t = time.perf_counter()
    for m in msgs[:200]:
        log.inclusion(leaf_hash(log_entry(m)).hex())
    proof_ms = (time.perf_counter() - t) / 200 * 1e3
    return {"append_ms": round(append_s * 1e3, 3), "bytes_per_message": round(grown / count),
            f"inclusion_ms_at_{count}": round(proof_ms, 3)}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps({"proofs": {n: proof_sizes(n) for n in (10**3, 10**6)},  # noqa: T201
                      "sqlite": sqlite_costs()}))  # fmt: skip
