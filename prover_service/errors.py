"""Errors of the Prover service, mapped to HTTP once (``app.py``) as ``{code, detail}``.

The tree::

    ServiceError              root; ``status`` is the HTTP status, ``code`` a stable string
    ├── Malformed             422 the request body or a parameter does not parse
    ├── Invalid               422 a well-formed request whose content the protocol refuses
    ├── RequestTimeout        408 a request body that did not arrive within its deadline
    ├── Unauthorized          401 bad or missing signature, replayed request nonce, stale time
    ├── Forbidden             403 a signed request from a key that may not do this
    ├── NotFound              404 unknown task, attribution, job, session, array or route
    ├── MethodNotAllowed      405 a known route with another method
    ├── Conflict              409 replayed challenge nonce, second verdict, response not ready
    ├── TooLarge              413 a body, |E| or budget beyond the operator's limits
    ├── TooManyRequests       429 a per-key rate, concurrency or trainings quota, or a full
    │                             queue; ``retry_after`` seconds go out as ``Retry-After``
    ├── Busy                  503 a bounded resource (large uploads, audits) is in use; retry
    ├── InsufficientStorage   507 the array store's disk quota would be exceeded
    ├── TaskUnavailable       503 a served task's start-up check is running (``Retry-After``,
    │                             ``task_not_ready``) or has failed (``task_refused``)
    └── StoreError            503 the database or array store is damaged or unreachable
        └── CorruptArray          an array's bytes no longer hash to their name

Anything else that escapes a route is a bug: it becomes ``500 {code: "internal"}`` without a
traceback on the wire. ``protocol.errors.ProtocolError`` raised by the domain (a bad value in a
signed message) maps to 422 ``invalid``.
"""

from __future__ import annotations

__all__ = [
    "Busy",
    "Conflict",
    "CorruptArray",
    "Forbidden",
    "InsufficientStorage",
    "Invalid",
    "Malformed",
    "MethodNotAllowed",
    "NotFound",
    "RequestTimeout",
    "ServiceError",
    "StoreError",
    "TaskUnavailable",
    "TooLarge",
    "TooManyRequests",
    "Unauthorized",
]


class ServiceError(Exception):
    """Root of the service's domain errors."""

    status = 500
    code = "internal"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Malformed(ServiceError):
    """The request does not parse (bad JSON, a wrong type, a missing field)."""

    status, code = 422, "malformed"


class Invalid(ServiceError):
    """The request parses but the protocol refuses its content."""

    status, code = 422, "invalid"


class Unauthorized(ServiceError):
    """No valid signature: missing, forged, stale, or a replayed request nonce."""

    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    """A valid signature from a key that is not allowed this request."""

    status, code = 403, "forbidden"


class NotFound(ServiceError):
    """Nothing by that name (or nothing this requester may see)."""

    status, code = 404, "not_found"


class MethodNotAllowed(ServiceError):
    """The route exists but not with this method."""

    status, code = 405, "method_not_allowed"


class Conflict(ServiceError):
    """The state does not allow it (any more, or yet)."""

    status, code = 409, "conflict"


class TooLarge(ServiceError):
    """Beyond a size limit the operator set."""

    status, code = 413, "too_large"


class TooManyRequests(ServiceError):
    """A quota or the queue is full; try again after ``retry_after`` seconds."""

    status, code = 429, "too_many_requests"

    def __init__(self, detail: str, retry_after: int = 60) -> None:
        super().__init__(detail)
        self.retry_after = max(1, int(retry_after))


class RequestTimeout(ServiceError):
    """The request body did not arrive within the server's deadline (a slow or stalled sender)."""

    status, code = 408, "timeout"


class Busy(ServiceError):
    """A bounded resource is in use (large uploads, audits); try again after ``retry_after``."""

    status, code = 503, "busy"

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.retry_after = max(1, int(retry_after))


class InsufficientStorage(ServiceError):
    """The array store's disk quota would be exceeded by this job."""

    status, code = 507, "insufficient_storage"


class TaskUnavailable(ServiceError):
    """A served task is not available for work: its start-up check
    (:func:`prover_service.task_check.quick_check`) is still running, try again after
    ``retry_after`` seconds (code ``task_not_ready``), or it failed (``task_refused``, no
    ``retry_after``: the operator must fix the task's declaration)."""

    status, code = 503, "task_not_ready"

    def __init__(self, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after = None if retry_after is None else max(1, int(retry_after))
        if retry_after is None:
            self.code = "task_refused"


class StoreError(ServiceError):
    """The database or the array store is damaged or unreachable (operator's problem)."""

    status, code = 503, "store_unavailable"


class CorruptArray(StoreError):
    """A stored array's bytes do not hash to their name (disk damage or a killed write)."""

    code = "corrupt_array"
