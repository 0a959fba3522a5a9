"""Errors of the Prover service, mapped to HTTP once (``app.py``) as ``{code, detail}``.

The tree::

    ServiceError            root; ``status`` is the HTTP status, ``code`` a stable string
    ├── NotFound            404 unknown task, attribution, job or session
    ├── Unauthorized        401 bad or missing signature, wrong signer, stale time stamp
    ├── Conflict            409 replayed nonce, verdict posted twice, response not ready
    ├── Invalid             422 a well-formed request whose content the protocol refuses
    └── TooLarge            413 a request beyond the service's size limits
"""

from __future__ import annotations

__all__ = ["Conflict", "Invalid", "NotFound", "ServiceError", "TooLarge", "Unauthorized"]


class ServiceError(Exception):
    """Root of the service's domain errors."""

    status = 500
    code = "internal"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class Invalid(ServiceError):
    status, code = 422, "invalid"


class TooLarge(ServiceError):
    status, code = 413, "too_large"
