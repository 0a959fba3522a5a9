"""The FastAPI application: ``create_app(settings)`` builds everything; nothing at import time.

Every error reply, FastAPI's and Starlette's own included (unknown route, wrong method, a body
that does not parse), is ``ErrorResponse{code, detail}``: the domain's
:class:`~prover_service.errors.ServiceError` tree is mapped here, once. Request bodies are
limited in size and time while they stream in, whatever the transfer encoding, and unsigned
POSTs per address (:mod:`prover_service.limits`). Every route
reads under ``read_rate_per_minute`` (:func:`~prover_service.api.deps.limit_reads`), and the
service's Gate keeps its nonces and rate buckets in the database, shared by every process on it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from protocol.errors import ProtocolError
from prover_service.api.deps import limit_reads, write_lane
from prover_service.api.routes import attributions, audit, info, sessions
from prover_service.api.routes import log as log_routes
from prover_service.errors import ServiceError
from prover_service.limits import BodyLimit, UnsignedPostLimit, WriteLane, error_response
from prover_service.service import ProverService
from prover_service.settings import Settings
from prover_service.tables import now

__all__ = ["BodyLimit", "create_app"]

log = logging.getLogger("prover_service")
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed(request: Request) -> str:
    """The ``Allow`` header of a 405: the methods the API documents for the path.

    Starlette names only the first route that matched the path (POST but not GET on
    /v1/attributions). The most specific documented template wins (``/v1/attributions/import``
    over ``/v1/attributions/{content_hash}``), so ``Allow`` is what ``/openapi.json`` says;
    an undocumented path (``/docs``) gets the methods of every route that serves it.
    """
    path = request.scope["path"]
    documented = [
        (template.count("{"), [m.upper() for m in ops])
        for template, ops in request.app.openapi()["paths"].items()
        if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), path)
    ]
    if documented:
        return ", ".join(sorted(min(documented)[1]))
    routes = request.app.router.routes  # (FastAPI may nest included routers: ask each)

    def serves(method: str) -> bool:
        scope = {**request.scope, "method": method}
        return any(route.matches(scope)[0] == Match.FULL for route in routes)

    return ", ".join(m for m in _METHODS if serves(m))


_error = error_response


def create_app(settings: Settings, service: ProverService | None = None) -> FastAPI:
    """The Prover's app; starts its worker lanes with the app (unless ``run_worker`` is off)."""
    svc = service or ProverService(settings)
    svc.gate.share(svc.db)  # nonces and rate buckets shared by every process on the database

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc.checks.start()  # the start-up task checks, in the background (task_check)
        if settings.run_worker:
            svc.start_worker()
        yield
        svc.stop_worker()

    app = FastAPI(
        title="Verifiable data attribution: Prover",
        version="1",
        description="Publishes signed attributions and answers signed challenges "
        "(docs/protocol.md#two-message-protocol). Errors are `{code, detail}` (`ErrorResponse`).",
        lifespan=lifespan,
        redirect_slashes=False,  # no 307 built from the Host header: an unknown path is a 404
        # every GET: read_rate_per_minute per caller; every write: through the write lane
        dependencies=[Depends(limit_reads), Depends(write_lane)],
    )
    app.state.service = svc
    gate = svc.gate
    app.add_middleware(
        BodyLimit,
        limit=settings.max_body_bytes,
        uploads=("/v1/attributions/import", "/v1/attributions/datamodel"),
        upload_limit=settings.max_upload_bytes,
        may_upload=lambda key: not gate.allow or key in gate.allow,
        message_limits={
            "/v1/challenges": settings.max_challenge_bytes,
            "/v1/sessions/[^/]+/verdict": settings.max_verdict_bytes,
        },
        deadline_s=settings.body_timeout_s,
        authenticate=lambda headers, method, target, sha: gate.authenticate(
            headers,
            method,
            target,
            b"",
            body_sha256=sha,
        ),
        max_uploads=settings.max_concurrent_uploads,
    )
    rate = settings.post_rate_per_minute  # outermost: before any body is read
    app.state.write_lane = lane = WriteLane(settings.max_concurrent_writes, settings.write_wait_s)
    app.add_middleware(
        UnsignedPostLimit, take=lambda who: gate.requests.take("post", who, rate, now()), rate=rate,
        lane=lane,
    )  # fmt: skip

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        retry = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(retry)} if retry is not None else None
        return _error(exc.status, exc.code, exc.detail, headers)

    @app.exception_handler(ProtocolError)
    async def protocol_error(_: Request, exc: ProtocolError) -> JSONResponse:
        return _error(422, "invalid", str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors: Any = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, "malformed", f"{where}: {first.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body FastAPI could not decode (bad UTF-8, deep JSON)
            return _error(422, "malformed", f"the request body does not parse: {exc.detail}")
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed(request)
        return _error(exc.status_code, code, str(exc.detail), headers or None)

    @app.exception_handler(SQLAlchemyError)
    async def store_error(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        log.error("database error: %s", str(exc).splitlines()[0][:200])
        return _error(503, "store_unavailable", "the Prover's database failed; try again later")

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error(500, "internal", f"internal error ({type(exc).__name__})")

    for router in (
        info.router,
        attributions.router,
        sessions.router,
        log_routes.router,
        audit.router,
    ):
        app.include_router(router)
    return app
