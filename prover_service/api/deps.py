"""Typed dependencies of the routes: the service and the (optional) authenticated requester."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from prover_service.service import ProverService

__all__ = ["RequesterDep", "ServiceDep"]


def get_service(request: Request) -> ProverService:
    service: ProverService = request.app.state.service
    return service


ServiceDep = Annotated[ProverService, Depends(get_service)]


def get_requester(
    request: Request,
    service: ServiceDep,
    x_vda_key: Annotated[str | None, Header()] = None,
    x_vda_timestamp: Annotated[str | None, Header()] = None,
    x_vda_signature: Annotated[str | None, Header()] = None,
) -> str | None:
    return service.authorise(
        x_vda_key, x_vda_timestamp, x_vda_signature, request.method, request.url.path
    )


RequesterDep = Annotated[str | None, Depends(get_requester)]
