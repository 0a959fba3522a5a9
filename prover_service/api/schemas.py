"""The routes' bodies, from :mod:`protocol.wire` (both sides share them), and the error replies
each route documents in OpenAPI.

Every error is :class:`~protocol.wire.ErrorResponse` ``{code, detail}`` (``app.py`` maps the
domain's errors and FastAPI's and Starlette's own to it). ``READ_ERRORS`` are what any route can
answer: 401/403 (a bad or refused signed request), 404, 405 (a known path with another method),
413 (a body over the limit), 422 (a request that does not parse), 429 (over the read rate or a
quota, with ``Retry-After``), 500 (a bug, without a traceback) and 503 (the store is damaged or
unreachable, or a task is still being checked at start-up, then with ``Retry-After``);
``WRITE_ERRORS`` add 409 (state) and 507 (the disk quota); ``HTML_READ_ERRORS`` are
``READ_ERRORS`` of an HTML page (still JSON). ``BINARY`` documents an ``.npy`` or datamodel
body.
"""

from __future__ import annotations

from typing import Any

from protocol.wire import (
    AttributionOut,
    AttributionRequest,
    ConsistencyProofOut,
    ErrorResponse,
    ImportAccepted,
    InclusionProofOut,
    InfoOut,
    JobOut,
    ReadyOut,
    SessionCreated,
    SessionOut,
    TranscriptOut,
)

__all__ = [
    "AttributionOut",
    "AttributionRequest",
    "BINARY",
    "ConsistencyProofOut",
    "ErrorResponse",
    "HTML_READ_ERRORS",
    "ImportAccepted",
    "InclusionProofOut",
    "InfoOut",
    "JobOut",
    "READ_ERRORS",
    "ReadyOut",
    "SessionCreated",
    "SessionOut",
    "TranscriptOut",
    "WRITE_ERRORS",
]

_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}
}
_READ = (401, 403, 404, 405, 413, 422, 429, 500, 503)
_WRITE = (*_READ, 409, 507)


def _errors(codes: tuple[int, ...]) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {c: {"model": ErrorResponse} for c in codes}
    if 429 in out:
        out[429]["headers"] = _RETRY_AFTER
    if 503 in out:  # a task still being checked at start-up sends Retry-After
        out[503]["headers"] = _RETRY_AFTER
    return out


READ_ERRORS = _errors(_READ)
WRITE_ERRORS = _errors(_WRITE)
# An HTML page's errors are JSON too; FastAPI would document them as the page's text/html.
HTML_READ_ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    for c in _READ
}
HTML_READ_ERRORS[429]["headers"] = _RETRY_AFTER
BINARY: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                              "format": "binary"}}}},
}  # fmt: skip
