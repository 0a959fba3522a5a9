"""Exceptions of the protocol core.

The tree::

    ProtocolError                 root of everything this package raises on purpose
    ├── InvalidParameterError     a caller passed a parameter outside its domain
    │                             (p not in (0, 1), rho not in [0, 1], epsilon <= 0, ...)
    ├── ShapeError                an array has the wrong shape or dtype
    ├── NonFiniteError            an array holds NaN or +-Inf where finite values are required
    ├── TaskError                 a task cannot be found, loaded, or broke its contract
    └── BudgetError               a plan is impossible (e.g. a tolerance eats the whole margin)

All of them are also ``ValueError`` subclasses, so callers that only know the standard library
still catch them; command-line front ends turn them into one clear line and exit code 2.
"""

from __future__ import annotations

__all__ = [
    "BudgetError",
    "InvalidParameterError",
    "NonFiniteError",
    "ProtocolError",
    "ShapeError",
    "TaskError",
]


class ProtocolError(ValueError):
    """Root of the exceptions raised on purpose by :mod:`protocol`."""


class InvalidParameterError(ProtocolError):
    """A scalar parameter lies outside its domain."""


class ShapeError(ProtocolError):
    """An array has the wrong shape or dtype."""


class NonFiniteError(ProtocolError):
    """An array holds NaN or infinite values."""


class TaskError(ProtocolError):
    """A training task is unknown, cannot be loaded, or returned something off-contract."""


class BudgetError(ProtocolError):
    """The requested guarantees cannot be met (e.g. the CHECKEQUIV slack exceeds the margin)."""
