"""The server ``serve`` ships: uvicorn (h11) with header time-outs and connection caps.

uvicorn by itself waits for a request's headers for ever and accepts connections until the
process runs out of file descriptors, so 1,100 sockets that each send half a header line hold
a Prover whose open-file limit is 1,024 (issue 21, item 5). :class:`GuardedH11Protocol` adds,
per connection:

- **a header deadline** (``header_timeout_s``, 10 s): from the connection's first byte (or the
  end of the last response) to the end of the request's headers; past it the connection is
  closed;
- **connection caps**: at most ``max_connections_per_address`` (64) connections from one client
  address and ``max_connections`` (1,000, and never closer than ``FD_RESERVE`` to the
  open-file limit) in all; a connection beyond a cap is closed as soon as it is accepted.

The body's deadline (``body_timeout_s``) and size are the app's
(:class:`~prover_service.limits.BodyLimit`); an idle keep-alive connection is closed after
``keep_alive_s`` (uvicorn's ``timeout_keep_alive``), and uvicorn's ``limit_concurrency``
answers 503 once the connection cap is reached. :func:`raise_open_file_limit` lifts the soft
open-file limit to the hard one at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from prover_service.settings import Settings

__all__ = ["FD_RESERVE", "GuardedH11Protocol", "raise_open_file_limit", "server_config"]

FD_RESERVE = 100  # descriptors kept free for the database, arrays and the thread pool
log = logging.getLogger("prover_service")


def raise_open_file_limit() -> int:
    """Lift the soft open-file limit to the hard one; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65_536 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and connection caps (module doc).

    The limits are class attributes, set by :func:`server_config` on a subclass.
    """

    header_timeout_s: float = 10.0
    max_connections: int = 1000
    max_per_address: int = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._address: str | None = None

    def _per_address(self) -> Counter[str]:
        state: Any = self.server_state
        if not hasattr(state, "vda_per_address"):
            state.vda_per_address = Counter()
        counter: Counter[str] = state.vda_per_address
        return counter

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's H11Protocol: asyncio's is a BaseTransport
        super().connection_made(transport)
        address = self.client[0] if self.client else "unknown"
        counts = self._per_address()
        if len(self.connections) > self.max_connections or counts[address] >= self.max_per_address:
            log.warning("refused a connection from %s: over the connection cap", address)
            transport.close()
            return
        self._address = address
        counts[address] += 1
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._address is not None:
            counts = self._per_address()
            counts[self._address] -= 1
            if counts[self._address] <= 0:
                del counts[self._address]
            self._address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first bytes of a request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()  # its headers are complete

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # idle now: uvicorn's keep-alive time-out applies until the next byte

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def server_config(app: Any, settings: Settings, host: str, port: int) -> uvicorn.Config:
    """uvicorn's configuration for ``serve``: the guarded protocol and the settings' limits."""
    soft = raise_open_file_limit()
    cap = max(1, min(settings.max_connections, soft - FD_RESERVE))
    protocol = type("Guarded", (GuardedH11Protocol,), {
        "header_timeout_s": settings.header_timeout_s, "max_connections": cap,
        "max_per_address": settings.max_connections_per_address,
    })  # fmt: skip
    return uvicorn.Config(
        app, host=host, port=port, log_level="info", http=protocol,
        timeout_keep_alive=max(1, round(settings.keep_alive_s)), limit_concurrency=cap + 1,
        h11_max_incomplete_event_size=64 * 2**10,
    )  # fmt: skip
