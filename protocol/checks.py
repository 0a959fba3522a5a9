"""Input validation shared by the protocol core: clear errors instead of stack traces.

Every public function of :mod:`protocol` validates its inputs with these helpers, which raise
the subclasses of :class:`protocol.errors.ProtocolError`, never ``assert``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protocol.errors import InvalidParameterError, NonFiniteError, ShapeError

__all__ = ["as_finite_matrix", "as_mask_matrix", "check_probability", "check_positive", "check_rho"]


def check_probability(name: str, value: float) -> float:
    """Return ``value`` as float if it lies in the open interval (0, 1), else raise."""
    v = _as_float(name, value)
    if not 0.0 < v < 1.0:
        raise InvalidParameterError(f"{name} must lie in the open interval (0, 1); got {value!r}")
    return v


def check_rho(name: str, value: float) -> float:
    """Return ``value`` as float if it is a correlation in the closed interval [0, 1]."""
    v = _as_float(name, value)
    if not 0.0 <= v <= 1.0:
        raise InvalidParameterError(f"{name} must lie in [0, 1]; got {value!r}")
    return v


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as float if it is finite and strictly positive."""
    v = _as_float(name, value)
    if not v > 0.0:
        raise InvalidParameterError(f"{name} must be > 0; got {value!r}")
    return v


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidParameterError(f"{name} must be a number; got a bool")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} must be a number; got {value!r}") from None
    if not math.isfinite(v):
        raise InvalidParameterError(f"{name} must be finite; got {value!r}")
    return v


def as_mask_matrix(masks: Any, n_train: int | None = None) -> NDArray[np.bool_]:
    """Validate a (K, N) 0/1 mask matrix and return it as ``bool``.

    Accepts bool arrays and integer arrays holding only 0 and 1; anything else (floats, other
    values, wrong rank, wrong N) raises :class:`ShapeError`.
    """
    arr = np.asarray(masks)
    if arr.ndim != 2:
        raise ShapeError(f"masks must be a 2-D array (K, N); got shape {arr.shape}")
    if n_train is not None and arr.shape[1] != n_train:
        raise ShapeError(f"masks must have N = {n_train} columns; got {arr.shape[1]}")
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.integer):
        raise ShapeError(f"masks must be bool or integer 0/1; got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise ShapeError("masks must hold only 0 and 1")
    return arr.astype(np.bool_)


def as_finite_matrix(name: str, values: Any, shape: tuple[int | None, ...]) -> NDArray[np.float64]:
    """Validate a float array of the given shape (``None`` = any length) with finite entries."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ShapeError(f"{name} must be a numeric array") from None
    if arr.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(arr.shape, shape, strict=True)
    ):
        want_s = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise ShapeError(f"{name} must have shape {want_s}; got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise NonFiniteError(f"{name} holds NaN or infinite values")
    return arr
