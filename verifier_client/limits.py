"""Bounds on what one Prover reply may cost the Verifier: bytes, decompressed bytes and time.

A Prover controls its replies, so every reply is read as a stream against a cap known before
the first byte (:func:`read_capped`): the exact size of an array its signed reference
announces, or the protocol's JSON limit (``LIMITS["json_bytes"]``). The cap holds on the bytes
on the wire *and* on the bytes after ``Content-Encoding`` is undone, which is done here in
bounded steps (``zlib``'s ``max_length``), so a 1 MiB gzip of 1 GiB of zeros costs at most
the cap, never the gigabyte. Codings other than gzip, deflate and identity are refused (the
Verifier never asks for them).

Time: httpx's time-outs are per operation, so a Prover that sends one byte every few seconds
never trips a read time-out. Every request here runs under one total :func:`deadline`; the
transport of :func:`prover_http` gives each socket read and write only the time left (headers
included), and :func:`read_capped` checks it between chunks for any transport. Past it the
request fails as a time-out, an infrastructure failure (``TransportError``), never an abort.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

__all__ = ["DeadlineBackend", "ReplyTooLarge", "deadline", "prover_http", "read_capped"]

_DEADLINE: ContextVar[float | None] = ContextVar("vda_request_deadline", default=None)
_CHUNK = 64 * 1024


class ReplyTooLarge(Exception):
    """A reply (or its decompressed body) went past its cap; the caller says whose fault."""


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[float | None]:
    """Run the block under a total deadline of ``seconds`` (None: none); yields its
    ``time.monotonic()`` value. Nested deadlines keep the earlier one."""
    outer = _DEADLINE.get()
    until = None if seconds is None else time.monotonic() + seconds
    if outer is not None and (until is None or outer < until):
        until = outer
    token = _DEADLINE.set(until)
    try:
        yield until
    finally:
        _DEADLINE.reset(token)


def _left(timeout: float | None, error: type[Exception]) -> float | None:
    """The per-operation time-out clipped to the time left before the deadline."""
    until = _DEADLINE.get()
    if until is None:
        return timeout
    left = until - time.monotonic()
    if left <= 0:
        raise error("the request's total deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read and write ends at the request's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:  # fmt: skip
        inner = self._inner.start_tls(ssl_context, server_hostname,
                                      _left(timeout, httpcore.ConnectTimeout))  # fmt: skip
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's socket backend with the request deadline on every operation."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:  # fmt: skip
        stream = self._inner.connect_tcp(host, port, _left(timeout, httpcore.ConnectTimeout),
                                         local_address, socket_options)  # fmt: skip
        return _DeadlineStream(stream)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:  # fmt: skip
        stream = self._inner.connect_unix_socket(
            path, _left(timeout, httpcore.ConnectTimeout), socket_options
        )
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport over a pool whose sockets obey the request deadline."""

    def __init__(self) -> None:
        super().__init__()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=DeadlineBackend()
        )


def prover_http(
    base_url: str, timeout_s: float, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """The Verifier's HTTP client of a Prover: per-operation time-outs of ``timeout_s``, sockets
    bounded by the request deadline (``ProverClient`` sets it to ``timeout_s`` per request),
    only uncompressed or gzip/deflate replies asked for, redirects never followed."""
    return httpx.Client(
        base_url=base_url,
        timeout=timeout_s,
        transport=transport or _DeadlineTransport(),
        headers={"accept-encoding": "identity"},
        follow_redirects=False,
    )


class _Decoder:
    """Undo one Content-Encoding in bounded steps: never more than ``room + 1`` bytes out."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.z: Any = None
        if coding in ("gzip", "x-gzip"):
            self.z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self.z = zlib.decompressobj()
        elif coding not in ("", "identity"):
            raise ReplyTooLarge(f"a reply in the content-encoding {coding!r}, which was not asked")

    def feed(self, chunk: bytes, room: int) -> bytes:
        if self.z is None:
            return chunk
        try:
            return bytes(self.z.decompress(chunk, room + 1))
        except zlib.error as exc:
            raise ReplyTooLarge(f"a {self.coding} body that does not decompress: {exc}") from None


def read_capped(
    resp: httpx.Response, cap: int, what: str, truncate: bool = False
) -> bytes:  # fmt: skip
    """The body of a streamed ``resp``, decoded, read against ``cap`` bytes (module doc).

    Past the cap, on the wire or decoded, :class:`ReplyTooLarge` -- or, with ``truncate`` (an
    error reply, read only to show it), the first ``cap`` bytes. A reply still arriving at
    the deadline is an ``httpx.ReadTimeout``."""
    if resp.is_stream_consumed:  # a reply built in memory (a test's MockTransport): whole
        if len(resp.content) > cap and not truncate:
            raise ReplyTooLarge(f"{what}: a reply of more than {cap:,} bytes expected")
        return resp.content[:cap]
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap and not truncate:
        raise ReplyTooLarge(f"{what}: a reply of {int(declared):,} bytes, at most {cap:,} expected")
    codings = [c.strip().lower() for c in resp.headers.get("content-encoding", "").split(",")]
    codings = [c for c in codings if c not in ("", "identity")]
    if len(codings) > 1:
        raise ReplyTooLarge(f"{what}: a reply in several content-encodings {codings}")
    try:
        decoder = _Decoder(codings[0] if codings else "")
    except ReplyTooLarge:
        if truncate:  # an error reply in a coding not asked for: nothing to show
            return b""
        raise
    body = bytearray()
    wire = 0
    for chunk in resp.iter_raw(_CHUNK):
        wire += len(chunk)
        part = decoder.feed(chunk, cap - len(body))
        body += part
        if wire > cap + (cap // 64 + 1024 if codings else 0) or len(body) > cap:
            if truncate:
                return bytes(body[:cap])
            raise ReplyTooLarge(f"{what}: a reply of more than {cap:,} bytes (decoded) expected")
        _left(None, httpx.ReadTimeout)
    return bytes(body)
