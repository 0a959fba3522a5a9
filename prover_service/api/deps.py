"""Typed dependencies of the routes: the service, the authenticated requester, and the read
limit that ``create_app`` puts on every route (:func:`limit_reads`).

A request's signature is checked once (its nonce counts once), whichever dependency asks first:
the result is kept on ``request.state``. The Gate's checks touch the database (nonces, token
buckets), so they run in the thread pool, never on the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from prover_service.errors import Busy
from prover_service.limits import LaneTimeout, WriteLane
from prover_service.service import ProverService

__all__ = ["AddressDep", "RequesterDep", "ServiceDep", "SignerDep", "limit_reads", "write_lane"]

_READS = ("GET", "HEAD")
_UNCHECKED = object()


def get_service(request: Request) -> ProverService:
    service: ProverService = request.app.state.service
    return service


ServiceDep = Annotated[ProverService, Depends(get_service)]


def client_address(request: Request) -> str:
    """The client's address (uvicorn takes it from ``X-Forwarded-For`` behind a trusted proxy)."""
    return request.client.host if request.client else "unknown"


AddressDep = Annotated[str, Depends(client_address)]


def request_target(request: Request) -> str:
    """The raw path and query string as sent: what a signed request's ``target`` covers."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string") or b""
    return raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")


async def get_requester(
    request: Request,
    service: ServiceDep,
    x_vda_key: Annotated[str | None, Header(description="Signer's public key (hex)")] = None,
    x_vda_timestamp: Annotated[str | None, Header(description="Unix time of signing")] = None,
    x_vda_nonce: Annotated[str | None, Header(description="16 random bytes (hex)")] = None,
    x_vda_signature: Annotated[
        str | None, Header(description="Ed25519 over protocol.signing.signed_request_bytes")
    ] = None,
) -> str | None:
    """The key that signed this request (method, target, time, nonce, body); None if unsigned.
    (The headers are declared here for OpenAPI; the check reads them from the request.)"""
    return await _authenticated(request, service)


async def _authenticated(request: Request, service: ProverService) -> str | None:
    """The signer's key (checked once per request, then kept on ``request.state``)."""
    if getattr(request.state, "vda_requester", _UNCHECKED) is _UNCHECKED:
        h = request.headers
        headers = (h.get("x-vda-key"), h.get("x-vda-timestamp"), h.get("x-vda-nonce"),
                   h.get("x-vda-signature"))  # fmt: skip
        body = await request.body()
        request.state.vda_requester = await run_in_threadpool(
            service.gate.authenticate, headers, request.method, request_target(request), body
        )
    key: str | None = request.state.vda_requester
    return key


async def limit_reads(request: Request, service: ServiceDep) -> None:
    """429 with ``Retry-After`` when a GET's caller is over ``read_rate_per_minute``: counted
    per key when the request is signed (a bad signature is 401 first), else per address."""
    if request.method not in _READS:
        return
    key = await _authenticated(request, service)
    address = request.client.host if request.client else "unknown"
    await run_in_threadpool(service.gate.admit_read, key, address)


RequesterDep = Annotated[str | None, Depends(get_requester)]


def get_signer(requester: RequesterDep, service: ServiceDep) -> str:
    """The signer of a request that must be signed (401 otherwise)."""
    return service.gate.require(requester, "this request")


SignerDep = Annotated[str, Depends(get_signer)]


async def write_lane(request: Request) -> AsyncIterator[None]:
    """Writes (every method but GET and HEAD) run their route through the app's
    :class:`~prover_service.limits.WriteLane`: at most ``max_concurrent_writes`` at once in the
    thread pool, the others waiting on the event loop; 503 ``busy`` after ``write_wait_s``."""
    if request.method in _READS:
        yield
        return
    lane: WriteLane = request.app.state.write_lane
    try:
        async with lane.slot():
            yield
    except LaneTimeout as exc:
        raise Busy(str(exc), retry_after=2) from None
