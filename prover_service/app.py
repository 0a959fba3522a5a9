"""The FastAPI application: ``create_app(settings)`` builds everything; nothing at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from protocol.errors import ProtocolError
from prover_service.api.routes import attributions, info, sessions
from prover_service.errors import ServiceError
from prover_service.service import ProverService
from prover_service.settings import Settings

__all__ = ["create_app"]


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"code": code, "detail": detail}, status_code=status)


def create_app(settings: Settings, service: ProverService | None = None) -> FastAPI:
    """The Prover's app; starts its worker thread with the app (unless ``run_worker`` is off)."""
    svc = service or ProverService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.run_worker:
            svc.start_worker()
        yield
        svc.stop_worker()

    app = FastAPI(
        title="Verifiable data attribution: Prover",
        version="1",
        description="Publishes signed attributions and answers signed challenges "
        "(PROTOCOL.md section 4). Errors are `{code, detail}`.",
        lifespan=lifespan,
    )
    app.state.service = svc

    @app.middleware("http")
    async def limit_body(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return _error(413, "too_large", f"request body over {settings.max_body_bytes} bytes")
        if length is None and request.method in ("POST", "PUT"):
            body = await request.body()
            if len(body) > settings.max_body_bytes:
                return _error(
                    413, "too_large", f"request body over {settings.max_body_bytes} bytes"
                )
        return await call_next(request)

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.detail)

    @app.exception_handler(ProtocolError)
    async def protocol_error(_: Request, exc: ProtocolError) -> JSONResponse:
        return _error(422, "invalid", str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, "malformed", f"{where}: {first.get('msg')}")

    for router in (info.router, attributions.router, sessions.router):
        app.include_router(router)
    return app
