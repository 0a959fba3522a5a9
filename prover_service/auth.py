"""Who is asking, and may they: signed requests, the allow-list, and rate limits.

**Signed requests** (:func:`protocol.signing.signed_request_bytes`): the ``X-VDA-*`` headers sign
the method, the target (path and query), a time stamp, a nonce and the body's SHA-256. A request
is accepted once: the time stamp must lie within ``request_window_s`` of the Prover's clock, and
its nonce is recorded until well after the window has closed on it, so an older replay is stale
and a newer one is a repeat (401 either way).

**Admission**: with an allow-list only listed keys may start work (403); without one (open
registration) a key the Prover has not seen is admitted at most ``new_keys_per_hour`` times
per hour per client address (429), so one machine cannot mint keys to multiply the per-key
quotas; every key is held to
``rate_per_minute`` expensive requests, and every caller (its key when the request is signed,
else its address) to ``read_rate_per_minute`` reads: token buckets, 429 with ``Retry-After``.
Quotas that need the jobs (unfinished jobs, trainings per day, queue, disk) are in :mod:`jobs`.

**Where nonces and buckets live** (a :class:`RequestStore`): :class:`DatabaseRequestStore` keeps
them in the Prover's database (``request_nonces``, ``rate_buckets``), so every process on it
(uvicorn workers, replicas behind a load balancer) refuses a replay any of them accepted and draws
on one bucket per key. Each step is one atomic statement: a nonce is ``INSERT ... ON CONFLICT DO
NOTHING`` (:func:`~prover_service.tables.insert_once`), a token is taken by a conditional ``UPDATE``
whose ``WHERE`` holds only while a token is left; the row count says which, so a race gives 401/429,
never 500. Expired nonces and idle buckets are deleted at most every ``PRUNE_EVERY_S`` per process.
:class:`MemoryRequestStore` is the reference: the same rules in one process's memory, for a
:class:`Gate` that no app has bound to a database (``create_app`` binds every Gate to its service's
database)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import Table, case, delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from protocol.signing import BadSignatureError, signed_request_bytes, verify_bytes
from prover_service.errors import Forbidden, StoreError, TooManyRequests, Unauthorized
from prover_service.settings import Settings
from prover_service.tables import KnownKeyRow, RateBucketRow, RequestNonceRow, insert_once, now

__all__ = [
    "LOCAL",
    "DatabaseRequestStore",
    "Gate",
    "RequestStore",
    "MemoryRequestStore",
    "SignedHeaders",
    "load_allow_list",
]

#: The operator's own in-process calls: never a hex key, so never a request's.
LOCAL = "local"
PRUNE_EVERY_S = 10.0  # how often one process deletes expired nonces and idle buckets
_NONCES = cast(Table, RequestNonceRow.__table__)
_BUCKETS = cast(Table, RateBucketRow.__table__)
_KNOWN = cast(Table, KnownKeyRow.__table__)
NEW_KEYS = "new_keys"  # the bucket scope of new keys per address (per hour)

SignedHeaders = tuple[str | None, str | None, str | None, str | None]  # key, time, nonce, sig


def load_allow_list(settings: Settings) -> frozenset[str]:
    """The allow-listed Verifier keys (settings and file); empty means open registration."""
    keys = set(settings.verifier_keys)
    path: Path | None = settings.verifier_keys_file
    if path is not None:
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise StoreError(f"cannot read verifier keys {str(path)!r}: {exc.strerror}") from None
        for n, line in enumerate(lines, 1):
            word = line.split("#", 1)[0].strip().lower()
            if not word:
                continue
            if len(word) != 64 or any(c not in "0123456789abcdef" for c in word):
                raise StoreError(f"{path}:{n}: not a 64-hex-digit public key")
            keys.add(word)
    return frozenset(keys)


class RequestStore(Protocol):
    """Where a Gate records nonces and takes tokens (module doc)."""

    shared: bool  # whether other processes see the same nonces and buckets

    def spend(self, nonce: str, key: str, expires_at: float, t: float) -> bool:
        """Record ``nonce`` until ``expires_at``; False if it is recorded and not expired."""
        ...

    def take(self, scope: str, subject: str, rate: int, t: float, period_s: float = 60.0) -> float:
        """Take a token from the bucket (``rate`` tokens, refilled at ``rate`` per
        ``period_s``): 0.0 if taken, else the seconds until one will be there."""
        ...

    def known(self, key: str) -> bool:
        """Whether ``key`` has been admitted before (:meth:`remember`)."""
        ...

    def remember(self, key: str, address: str, t: float) -> None:
        """Record ``key`` as admitted, first from ``address`` (idempotent)."""
        ...


class MemoryRequestStore:
    """Nonces and buckets in this process's memory: the reference for one process. Thread-safe."""

    shared = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}  # request nonce -> when it may be forgotten
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # -> (tokens, when)
        self._known: dict[str, str] = {}  # admitted key -> the address it first came from

    def spend(self, nonce: str, key: str, expires_at: float, t: float) -> bool:
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {n: e for n, e in self._seen.items() if e > t}
            if self._seen.get(nonce, 0.0) > t:
                return False
            self._seen[nonce] = expires_at
            return True

    def take(self, scope: str, subject: str, rate: int, t: float, period_s: float = 60.0) -> float:
        with self._lock:
            tokens, last = self._buckets.get((scope, subject), (float(rate), t))
            tokens = min(float(rate), tokens + max(0.0, t - last) * rate / period_s)
            if tokens < 1.0:
                return (1.0 - tokens) * period_s / rate
            self._buckets[(scope, subject)] = (tokens - 1.0, max(t, last))
            return 0.0

    def known(self, key: str) -> bool:
        with self._lock:
            return key in self._known

    def remember(self, key: str, address: str, t: float) -> None:
        with self._lock:
            self._known.setdefault(key, address)


class DatabaseRequestStore:
    """Nonces and buckets in the Prover's database, shared by every process on it (module doc)."""

    shared = True

    def __init__(self, db: sessionmaker[Session]) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._next_prune = 0.0

    def spend(self, nonce: str, key: str, expires_at: float, t: float) -> bool:
        self._prune(t)
        n = _NONCES.c
        with self.db.begin() as s:
            row = {"nonce": nonce, "verifier_key": key, "expires_at": expires_at}
            if insert_once(s, _NONCES, row):
                return True
            # taken: by an expired row not yet pruned (the same nonce again, much later)?
            renew = update(_NONCES).where(n.nonce == nonce, n.expires_at <= t)
            result: Any = s.execute(renew.values(verifier_key=key, expires_at=expires_at))
            return bool(result.rowcount == 1)

    def take(self, scope: str, subject: str, rate: int, t: float, period_s: float = 60.0) -> float:
        self._prune(t)
        table = _BUCKETS
        b = table.c
        per_s = rate / period_s
        fresh = b.updated_at < t  # another process's clock may be a little ahead: no refill then
        level = b.tokens + case((fresh, (t - b.updated_at) * per_s), else_=0.0)
        level = case((level >= float(rate), float(rate)), else_=level)
        mine = (b.scope == scope, b.subject == subject)
        take = (
            update(table)
            .where(*mine, level >= 1.0)
            .values(tokens=level - 1.0, updated_at=case((fresh, t), else_=b.updated_at))
        )
        for _ in range(4):  # a race with another process's first token or prune: look again
            with self.db.begin() as s:
                result: Any = s.execute(take)
                if result.rowcount == 1:
                    return 0.0
                row = s.execute(select(b.tokens, b.updated_at).where(*mine)).first()
                if row is None:
                    first = {"scope": scope, "subject": subject, "tokens": rate - 1.0,
                             "updated_at": t}  # fmt: skip
                    if insert_once(s, table, first):
                        return 0.0
                    continue
                tokens = min(float(rate), float(row.tokens + max(0.0, t - row.updated_at) * per_s))
                if tokens < 1.0:
                    return (1.0 - tokens) / per_s
        return 1.0 / per_s

    def known(self, key: str) -> bool:
        with self.db() as s:
            return s.get(KnownKeyRow, key) is not None

    def remember(self, key: str, address: str, t: float) -> None:
        with self.db.begin() as s:
            insert_once(s, _KNOWN, {"key": key, "address": address[:80], "first_seen": t})

    def _prune(self, t: float) -> None:
        """Delete expired nonces and buckets idle for two minutes (full again, so the same as
        absent; a per-hour bucket after a day), at most every ``PRUNE_EVERY_S`` in this
        process; indexed DELETEs."""
        with self._lock:
            if t < self._next_prune:
                return
            self._next_prune = t + PRUNE_EVERY_S
        with self.db.begin() as s:
            s.execute(delete(_NONCES).where(_NONCES.c.expires_at < t))
            b = _BUCKETS.c
            s.execute(delete(_BUCKETS).where(b.scope != NEW_KEYS, b.updated_at < t - 120))
            s.execute(delete(_BUCKETS).where(b.scope == NEW_KEYS, b.updated_at < t - 86_400))


class Gate:
    """Authenticates signed requests and admits keys and readers (module doc). Thread-safe."""

    def __init__(self, settings: Settings, requests: RequestStore | None = None) -> None:
        self.settings = settings
        self.allow = load_allow_list(settings)
        self.started_at = now()
        self.requests: RequestStore = requests or MemoryRequestStore()

    def share(self, db: sessionmaker[Session]) -> None:
        """Keep nonces and buckets in the database ``db``, shared with every process on it."""
        self.requests = DatabaseRequestStore(db)

    def authenticate(
        self, headers: SignedHeaders, method: str, target: str, body: bytes,
        body_sha256: str | None = None,
    ) -> str | None:  # fmt: skip
        """The signer's key if the request's signature verifies; None if it is unsigned.
        ``body_sha256`` stands for ``body`` when the body was hashed as it streamed in."""
        key, timestamp, nonce, signature = headers
        if key is None and signature is None:
            return None
        if not (key and timestamp and nonce and signature):
            raise Unauthorized(
                "a signed request sends X-VDA-Key, X-VDA-Timestamp, X-VDA-Nonce and "
                "X-VDA-Signature together (protocol.signing.sign_request)"
            )
        if len(nonce) != 32 or any(c not in "0123456789abcdef" for c in nonce):
            raise Unauthorized("X-VDA-Nonce must be 32 hex digits")
        try:
            ts = int(timestamp)
            sha = body_sha256 or hashlib.sha256(body).hexdigest()
            data = signed_request_bytes(method, target, ts, nonce, sha)
            verify_bytes(key, signature, data)
        except (ValueError, BadSignatureError):
            raise Unauthorized("request signature does not verify") from None
        window = self.settings.request_window_s
        t = now()
        if abs(t - ts) > window:
            raise Unauthorized(f"stale request time stamp: outside +-{window} s of the Prover")
        if not self.requests.shared and ts < self.started_at - 1:
            # signed before this process started: its nonce may have been seen by the last one
            raise Unauthorized("request signed before the Prover restarted; sign it again")
        # kept a window past the last moment any process (clocks a window apart) accepts ts
        if not self.requests.spend(nonce, key.lower(), max(t, ts) + 2 * window + 1, t):
            raise Unauthorized("request nonce already used: a signed request counts once")
        return key.lower()

    def require(self, key: str | None, what: str) -> str:
        """The key, or 401 if the request was not signed."""
        if key is None:
            raise Unauthorized(f"{what} needs a signed request (X-VDA-* headers)")
        return key

    def admit(self, key: str, address: str = "local") -> None:
        """403 unless the key may start work; 429 if it is over its request rate, or if it is a
        new key (open registration) from an address that brought ``new_keys_per_hour`` new
        keys already. ``address`` "local" is the operator's own in-process call."""
        if self.allow and key not in self.allow:
            raise Forbidden("this Verifier key is not on the Prover's allow-list")
        if not self.allow and address != LOCAL and not self.requests.known(key):
            per_hour = self.settings.new_keys_per_hour
            t = now()
            wait = self.requests.take(NEW_KEYS, f"ip:{address}"[:80], per_hour, t, 3600.0)
            if wait > 0:
                raise TooManyRequests(
                    f"over {per_hour} new Verifier keys per hour from this address (open "
                    "registration); use a key this Prover knows", retry_after=int(wait) + 1
                )  # fmt: skip
            self.requests.remember(key, address, t)
        rate = self.settings.rate_per_minute
        wait = self.requests.take("expensive", key, rate, now())
        if wait > 0:
            raise TooManyRequests(
                f"over {rate} expensive requests per minute for this key", retry_after=int(wait) + 1
            )

    def admit_read(self, key: str | None, address: str) -> None:
        """429 if the reader (its key if the read is signed, else its address) is over
        ``read_rate_per_minute``."""
        rate = self.settings.read_rate_per_minute
        subject = f"key:{key}" if key else f"ip:{address}"
        wait = self.requests.take("read", subject[:80], rate, now())
        if wait > 0:
            who = "key" if key else "address"
            raise TooManyRequests(f"over {rate} reads per minute from this {who}", int(wait) + 1)
