"""Who is asking, and may they: signed requests, the allow-list, and per-key rate limits.

**Signed requests** (:func:`protocol.signing.signed_request_bytes`): the ``X-VDA-*`` headers sign
the method, the target (path and query), a time stamp, a nonce and the body's SHA-256. A request
is accepted once: its nonce is remembered for ``request_window_s`` (the time stamp must lie
within that window, so an older replay is stale and a newer one is a repeat). The nonce cache is
in memory; after a restart a replay is refused by the same window only if the request is older
than the restart, which :meth:`Gate.authenticate` also checks.

**Admission**: with an allow-list only listed keys may start work (403); every key is held to
``rate_per_minute`` expensive requests (a token bucket, 429 with ``Retry-After``). Quotas that
need the database (unfinished jobs, trainings per day, queue, disk) are in :mod:`jobs`.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from protocol.signing import BadSignatureError, signed_request_bytes, verify_bytes
from prover_service.errors import Forbidden, StoreError, TooManyRequests, Unauthorized
from prover_service.settings import Settings
from prover_service.store import now

__all__ = ["Gate", "SignedHeaders", "load_allow_list"]

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


class Gate:
    """Authenticates signed requests and admits keys (module doc). Thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.allow = load_allow_list(settings)
        self.started_at = now()
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}  # request nonce -> when it may be forgotten
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    def authenticate(
        self, headers: SignedHeaders, method: str, target: str, body: bytes
    ) -> str | None:
        """The signer's key if the request's signature verifies; None if it is unsigned."""
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
            data = signed_request_bytes(method, target, ts, nonce, hashlib.sha256(body).hexdigest())
            verify_bytes(key, signature, data)
        except (ValueError, BadSignatureError):
            raise Unauthorized("request signature does not verify") from None
        window = self.settings.request_window_s
        t = now()
        if abs(t - ts) > window:
            raise Unauthorized(f"stale request time stamp: outside +-{window} s of the Prover")
        if ts < self.started_at - 1:
            # signed before this process started: its nonce may have been seen by the last one
            raise Unauthorized("request signed before the Prover restarted; sign it again")
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {n: e for n, e in self._seen.items() if e > t}
            if self._seen.get(nonce, 0.0) > t:
                raise Unauthorized("request nonce already used: a signed request counts once")
            self._seen[nonce] = t + 2 * window + 1
        return key.lower()

    def require(self, key: str | None, what: str) -> str:
        """The key, or 401 if the request was not signed."""
        if key is None:
            raise Unauthorized(f"{what} needs a signed request (X-VDA-* headers)")
        return key

    def admit(self, key: str) -> None:
        """403 unless the key may start work; 429 if it is over its request rate."""
        if self.allow and key not in self.allow:
            raise Forbidden("this Verifier key is not on the Prover's allow-list")
        rate = self.settings.rate_per_minute
        t = now()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(rate), t))
            tokens = min(float(rate), tokens + (t - last) * rate / 60.0)
            if tokens < 1.0:
                wait = (1.0 - tokens) * 60.0 / rate
                self._buckets[key] = (tokens, t)
                raise TooManyRequests(
                    f"over {rate} expensive requests per minute for this key", retry_after=wait + 1
                )
            self._buckets[key] = (tokens - 1.0, t)
