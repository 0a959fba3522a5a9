"""The FastAPI application: ``create_app(settings)`` builds everything; nothing at import time.

Every error reply, FastAPI's and Starlette's own included (unknown route, wrong method, a body
that does not parse), is ``ErrorResponse{code, detail}``: the domain's
:class:`~prover_service.errors.ServiceError` tree is mapped here, once. Request bodies are
limited while they stream in (:class:`BodyLimit`), whatever the transfer encoding. Every route
reads under ``read_rate_per_minute`` (:func:`~prover_service.api.deps.limit_reads`), and the
service's Gate keeps its nonces and rate buckets in the database, shared by every process on it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocol.errors import ProtocolError
from prover_service.api.deps import limit_reads
from prover_service.api.routes import attributions, audit, info, sessions
from prover_service.api.routes import log as log_routes
from prover_service.errors import ServiceError
from prover_service.service import ProverService
from prover_service.settings import Settings

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


def _error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"code": code, "detail": detail}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: refuse a body over ``limit`` bytes without ever holding more than that.

    A ``Content-Length`` over the limit is refused before any byte is read; a chunked body is
    counted as it streams in and refused (413) at the first chunk past the limit, leaving the
    rest unread. A body within the limit is handed to the app as one message.

    The upload paths (``uploads``: outside scores and datamodels, which for a large task exceed
    the default) get ``upload_limit`` instead, but only for a request whose ``X-VDA-Key`` header
    names a key that ``may_upload`` accepts (on the allow-list, when there is one): an anonymous
    caller never makes the Prover hold more than ``limit`` bytes. The signature itself is checked
    after the body is read, as for every signed request.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        uploads: tuple[str, ...] = (),
        upload_limit: int | None = None,
        may_upload: Callable[[str], bool] | None = None,
    ) -> None:
        self.app, self.limit = app, limit
        self.uploads, self.upload_limit, self.may_upload = uploads, upload_limit, may_upload

    def _limit(self, scope: Scope, headers: dict[bytes, bytes]) -> int:
        if self.upload_limit is None or scope.get("path") not in self.uploads:
            return self.limit
        key = headers.get(b"x-vda-key", b"").decode("latin-1")
        if key and (self.may_upload is None or self.may_upload(key.lower())):
            return max(self.limit, self.upload_limit)
        return self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        limit = self._limit(scope, headers)
        too_large = _error(413, "too_large", f"request body over {limit} bytes")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                del chunks
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


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
        "(PROTOCOL.md section 4). Errors are `{code, detail}` (`ErrorResponse`).",
        lifespan=lifespan,
        dependencies=[Depends(limit_reads)],  # every GET: read_rate_per_minute per caller
    )
    app.state.service = svc
    gate = svc.gate
    app.add_middleware(
        BodyLimit,
        limit=settings.max_body_bytes,
        uploads=("/v1/attributions/import", "/v1/attributions/datamodel"),
        upload_limit=settings.max_upload_bytes,
        may_upload=lambda key: not gate.allow or key in gate.allow,
    )

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
