"""ASGI guards in front of the app: bodies bounded in size and time, unsigned POSTs per address.

:class:`BodyLimit` reads every request body before the app sees it:

- **size**: ``limit`` bytes (``max_body_bytes``, 8 MiB), smaller for the signed messages whose
  size the protocol bounds (``message_limits``: a challenge 16 KiB, a verdict 1 MiB), refused
  (413) from ``Content-Length`` before any byte is read, else at the first chunk past it;
- **time**: the whole body within ``deadline_s`` of its first read, else 408 (a body dripped a
  byte at a time holds a connection only that long);
- **uploads** (``uploads``: outside scores and datamodels) may reach ``upload_limit`` (64 MiB)
  for a request whose ``X-VDA-Key`` names a key ``may_upload`` accepts. Such a body is streamed
  to a temporary file (at most ``SPOOL_BYTES`` of it in memory) while it is hashed, and its
  request signature is verified (``authenticate``, on the hash) *before* the body is loaded: an
  unsigned or badly signed upload costs disk for a moment, never memory, and is 401. At most
  ``max_uploads`` such bodies are in flight (503 ``busy`` with ``Retry-After`` beyond). The
  signer found is left on the request (``scope["state"]["vda_requester"]``) so that its nonce
  counts once.

:class:`UnsignedPostLimit` holds POSTs without a request signature (a challenge or a verdict:
their signature is inside the body) to ``rate`` per minute per client address (429 with
``Retry-After``), before their bodies are read.

:class:`WriteLane`: every write's work in the thread pool (the unsigned-POST token above, and
the route itself, through :func:`prover_service.api.deps.write_lane`) takes one of
``max_concurrent_writes`` slots; the others wait on the event loop, holding no thread, and
after ``write_wait_s`` get 503 ``busy``. A body is read outside the lane, so a dripped body
holds a connection, never a slot. Why: 64 challenges at once (a database write each, for the
token and for the admission) had taken every thread of the pool, and a small GET, whose read
limit is a database write too, waited behind them (issue 21: 0.7-1.2 s at the 99th
percentile).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prover_service.errors import ServiceError

__all__ = ["SPOOL_BYTES", "BodyLimit", "UnsignedPostLimit", "error_response"]

SPOOL_BYTES = 2**20  # of an upload held in memory before the rest goes to a temporary file
#: authenticate(headers (key, time, nonce, signature), method, target, body SHA-256) -> key
Authenticate = Callable[
    [tuple[str | None, str | None, str | None, str | None], str, str, str], str | None
]


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """``ErrorResponse{code, detail}`` with ``status``."""
    return JSONResponse({"code": code, "detail": detail}, status_code=status, headers=headers)


def _from(exc: ServiceError) -> JSONResponse:
    retry = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry)} if retry is not None else None
    return error_response(exc.status, exc.code, exc.detail, headers)


def _target(scope: Scope) -> str:
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string") or b""
    return raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")


class BodyLimit:
    """ASGI middleware: every body bounded in size and time before the app sees it (module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        uploads: tuple[str, ...] = (),
        upload_limit: int | None = None,
        may_upload: Callable[[str], bool] | None = None,
        *,
        message_limits: dict[str, int] | None = None,
        deadline_s: float | None = None,
        authenticate: Authenticate | None = None,
        max_uploads: int = 2,
    ) -> None:
        self.app, self.limit = app, limit
        self.uploads, self.upload_limit, self.may_upload = uploads, upload_limit, may_upload
        self.messages = [(re.compile(p), n) for p, n in (message_limits or {}).items()]
        self.deadline_s, self.authenticate = deadline_s, authenticate
        self.max_uploads, self._uploading = max_uploads, 0

    def _limit(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[int, bool]:
        """The byte limit of this request, and whether it is an upload that may pass ``limit``."""
        path = scope.get("path", "")
        for pattern, n in self.messages:
            if pattern.fullmatch(path):
                return min(n, self.limit), False
        if self.upload_limit is None or path not in self.uploads:
            return self.limit, False
        key = headers.get(b"x-vda-key", b"").decode("latin-1")
        if key and (self.may_upload is None or self.may_upload(key.lower())):
            return max(self.limit, self.upload_limit), self.upload_limit > self.limit
        return self.limit, False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        limit, upload = self._limit(scope, headers)
        close = {"Connection": "close"}  # a refused body is left unread: stop the sender
        too_large = error_response(413, "too_large", f"request body over {limit} bytes", close)
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await too_large(scope, receive, send)
            return
        large = upload and (length is None or int(length) > self.limit)
        if large and self._uploading >= self.max_uploads:
            busy = f"{self.max_uploads} large uploads are in progress; try again shortly"
            await error_response(503, "busy", busy, {"Retry-After": "5", **close})(
                scope, receive, send
            )
            return
        if large:
            self._uploading += 1
        try:
            await self._read(scope, receive, send, headers, limit, large)
        finally:
            if large:
                self._uploading -= 1

    async def _read(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes],
        limit: int, large: bool,
    ) -> None:  # fmt: skip
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) if large else None  # noqa: SIM115
        chunks: list[bytes] = []
        digest = hashlib.sha256()
        size = 0
        start = time.monotonic()
        try:
            while True:
                try:
                    message = await self._next(receive, start)
                except TimeoutError:
                    late = f"the request body did not arrive within {self.deadline_s:g} s"
                    await error_response(408, "timeout", late, {"Connection": "close"})(
                        scope, receive, send
                    )
                    return
                if message["type"] != "http.request":  # the client went away
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    over = f"request body over {limit} bytes"
                    await error_response(413, "too_large", over, {"Connection": "close"})(
                        scope, receive, send
                    )
                    return
                if spool is not None:
                    spool.write(chunk)
                    digest.update(chunk)
                else:
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            if spool is not None:
                if size > self.limit and not await self._signed(scope, headers, digest):
                    return await self._unauthorized(scope, receive, send)
                spool.seek(0)
                body = spool.read()
            else:
                body = b"".join(chunks)
        finally:
            if spool is not None:
                spool.close()
        del chunks
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _next(self, receive: Receive, start: float) -> Message:
        if self.deadline_s is None:
            return await receive()
        left = self.deadline_s - (time.monotonic() - start)
        if left <= 0:
            raise TimeoutError
        return await asyncio.wait_for(receive(), left)

    async def _signed(self, scope: Scope, headers: dict[bytes, bytes], digest: Any) -> bool:
        """Verify an upload's request signature on its hash; keep the signer on the request."""
        if self.authenticate is None:
            return True

        def text(name: bytes) -> str | None:
            return headers[name].decode("latin-1") if name in headers else None

        signed = (text(b"x-vda-key"), text(b"x-vda-timestamp"), text(b"x-vda-nonce"),
                  text(b"x-vda-signature"))  # fmt: skip
        try:
            key = await run_in_threadpool(
                self.authenticate, signed, scope["method"], _target(scope), digest.hexdigest()
            )
        except ServiceError as exc:
            scope.setdefault("state", {})["vda_refusal"] = exc
            return False
        if key is None:
            return False
        scope.setdefault("state", {})["vda_requester"] = key
        return True

    async def _unauthorized(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = scope.get("state", {}).get("vda_refusal")
        if isinstance(exc, ServiceError):
            await _from(exc)(scope, receive, send)
            return
        detail = f"an upload over {self.limit} bytes needs a valid request signature"
        await error_response(401, "unauthorized", detail)(scope, receive, send)


class LaneTimeout(Exception):
    """A write waited longer than its lane allows (503 ``busy``)."""


class WriteLane:
    """At most ``width`` writes in the thread pool at once; the others wait on the event loop,
    holding no thread (module doc). Its semaphore is made on the loop, at the first write."""

    def __init__(self, width: int, wait_s: float) -> None:
        self.width, self.wait_s = width, wait_s
        self._slots: asyncio.Semaphore | None = None

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot; :class:`LaneTimeout` after ``wait_s`` without one."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.width)
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self.wait_s)
        except TimeoutError:
            raise LaneTimeout(
                f"more than {self.width} writes at once have waited {self.wait_s:g} s here; "
                "try again shortly"
            ) from None
        try:
            yield
        finally:
            self._slots.release()


class UnsignedPostLimit:
    """ASGI middleware: ``rate`` unsigned POSTs per minute per client address (module doc).

    ``take(subject) -> seconds to wait`` draws a token (the Gate's shared ledger); it runs in
    the thread pool, through ``lane`` (a database write each), before the body is read.
    """

    def __init__(
        self, app: ASGIApp, take: Callable[[str], float], rate: int, lane: WriteLane | None = None
    ) -> None:
        self.app, self.take, self.rate = app, take, rate
        self.lane = lane or WriteLane(1_000_000, 3600.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            signed = any(name == b"x-vda-signature" for name, _ in scope["headers"])
            if not signed:
                client = scope.get("client")
                address = client[0] if client else "unknown"
                try:
                    async with self.lane.slot():
                        wait = await run_in_threadpool(self.take, f"ip:{address}"[:80])
                except LaneTimeout as exc:
                    await error_response(503, "busy", str(exc), {"Retry-After": "2"})(
                        scope, receive, send
                    )
                    return
                if wait > 0:
                    detail = f"over {self.rate} unsigned POSTs per minute from this address"
                    response = error_response(429, "too_many_requests", detail,
                                              {"Retry-After": str(int(wait) + 1)})  # fmt: skip
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
