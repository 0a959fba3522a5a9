"""Typed dependencies of the routes: the service and the authenticated requester."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from prover_service.service import ProverService

__all__ = ["RequesterDep", "ServiceDep", "SignerDep"]


def get_service(request: Request) -> ProverService:
    service: ProverService = request.app.state.service
    return service


ServiceDep = Annotated[ProverService, Depends(get_service)]


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
    """The key that signed this request (method, target, time, nonce, body); None if unsigned."""
    body = await request.body()
    headers = (x_vda_key, x_vda_timestamp, x_vda_nonce, x_vda_signature)
    return service.gate.authenticate(headers, request.method, request_target(request), body)


RequesterDep = Annotated[str | None, Depends(get_requester)]


def get_signer(requester: RequesterDep, service: ServiceDep) -> str:
    """The signer of a request that must be signed (401 otherwise)."""
    return service.gate.require(requester, "this request")


SignerDep = Annotated[str, Depends(get_signer)]
