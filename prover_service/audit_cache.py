"""The ``/audit`` page's audits of decided sessions: computed once per process, then kept.

Auditing a decided session re-trains its opened spot-checks and recomputes its certificate
(:func:`prover_service.audit_page.audit_session`): seconds of work and the session's arrays in
memory. With public transcripts any unsigned GET asks for it, so :class:`AuditCache`:

- keeps the result of each decided session, keyed by its id and the SHA-256 of what the audit
  reads from its row (challenge, response, verdict, status), so an altered row is audited again;
  at most ``size`` results, least recently used first out;
- computes one audit at a time in the process: a GET for a session whose audit is being
  computed, or while another is, gets 503 ``busy`` with ``Retry-After`` at once instead of
  waiting (no thread is held, no second copy of the arrays is made).

An undecided session's audit stops before any training (its transcript is incomplete), so it is
computed on every GET and not kept.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from prover_service.errors import Busy
from prover_service.tables import SessionRow

__all__ = ["AuditCache"]


def _key(row: SessionRow) -> tuple[str, str]:
    digest = hashlib.sha256()
    for part in (row.challenge_json, row.response_json, row.verdict_json, row.verdict, row.status):
        digest.update((part or "").encode() + b"\0")
    return row.id, digest.hexdigest()


S = TypeVar("S")  # where the audit reads from (the service, typed by the caller)
R = TypeVar("R")  # the audit


class AuditCache(Generic[S, R]):
    """Audits of decided sessions, each computed once (module doc). Thread-safe."""

    def __init__(self, compute: Callable[[S, SessionRow], R], size: int = 256) -> None:
        self.compute, self.size = compute, size
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[str, str], R] = OrderedDict()
        self._computing: tuple[str, str] | None = None
        self.computed = 0  # audits computed (for tests and the benchmark)

    def audit(self, service: S, row: SessionRow) -> R:
        """The session's audit: kept, computed now, or 503 ``busy`` while another is."""
        if row.verdict_json is None:
            return self.compute(service, row)
        key = _key(row)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
            if self._computing is not None:
                which = "this session's" if self._computing == key else "another session's"
                raise Busy(f"{which} audit is being computed; reload in a few seconds", 3)
            self._computing = key
        try:
            result = self.compute(service, row)
            self.computed += 1
            with self._lock:
                self._kept[key] = result
                while len(self._kept) > self.size:
                    self._kept.popitem(last=False)
            return result
        finally:
            with self._lock:
                self._computing = None
