"""``.npy`` headers checked before any array is allocated: the bound on what a peer's bytes cost.

An ``.npy`` file starts with a small header (magic, version, a Python literal giving dtype,
fortran order and shape); ``np.load`` trusts it and allocates ``prod(shape) * itemsize``
bytes before it reads the data, so a 200-byte file claiming a (10^6, 10^6) float64 array is a
MemoryError (or, with overcommit, a huge allocation) on whoever parses it. Both sides parse
their peer's arrays: the Verifier a response's values and probes, the Prover an uploaded
attribution. They call :func:`check_npy_header` first, with the shape they expect (``None``
for a free dimension), the dtypes they accept and the bytes they allow; it reads only the
header (at most :data:`NPY_HEADER_MAX` bytes of it) and raises :class:`ShapeError` unless

* the magic and version are ``.npy`` 1.0 or 2.0 and the header is a valid literal,
* the dtype is one of ``dtypes`` (never an object dtype), the fortran order is the one asked,
* the shape has the expected rank and every fixed dimension, no dimension is negative,
* the data it announces is at most ``max_bytes`` and, for ``complete`` bytes, exactly what
  follows the header (no truncation, no trailing bytes).

:func:`npy_max_bytes` is the most bytes an ``.npy`` of a known dtype and shape can take: the
cap for reading one off the network.
"""

from __future__ import annotations

import io
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib import format as npy_format

from protocol.errors import ShapeError

__all__ = [
    "NPY_HEADER_MAX",
    "NpyHeader",
    "check_npy_header",
    "npy_max_bytes",
    "read_npy_header",
    "shape_matches",
    "shape_text",
]

NPY_HEADER_MAX = 4096  # numpy writes about 128 bytes for a shape of rank 3


@dataclass(frozen=True)
class NpyHeader:
    """What an ``.npy`` header announces: ``dtype`` (its ``.str``, e.g. ``"<f8"``), ``shape``,
    ``fortran_order`` and ``offset``, where the data begins."""

    dtype: str
    shape: tuple[int, ...]
    fortran_order: bool
    offset: int
    itemsize: int

    @property
    def nbytes(self) -> int:
        """Bytes of data the header announces: prod(shape) * itemsize."""
        return math.prod(self.shape) * self.itemsize


def read_npy_header(data: bytes, name: str = "array") -> NpyHeader:
    """The header of ``.npy`` bytes (``data`` may be just a prefix holding the header);
    :class:`ShapeError` if it is not one. Nothing but the header is read or allocated."""
    fp = io.BytesIO(data[: NPY_HEADER_MAX + 12])
    try:
        version = npy_format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(fp, NPY_HEADER_MAX)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(fp, NPY_HEADER_MAX)
        else:
            raise ShapeError(f"{name}: .npy version {version} is not 1.0 or 2.0")
    except (ValueError, OSError, SyntaxError, TypeError) as exc:
        raise ShapeError(f"{name}: not a valid .npy header: {exc}") from None
    dims = tuple(shape)
    if any(d < 0 for d in dims):
        raise ShapeError(f"{name}: .npy header with a negative dimension {dims}")
    if dtype.hasobject:
        raise ShapeError(f"{name}: .npy of an object dtype is refused")
    return NpyHeader(str(dtype.str), dims, bool(fortran), fp.tell(), int(dtype.itemsize))


def check_npy_header(
    data: bytes,
    *,
    shape: Sequence[int | None],
    dtypes: Collection[str],
    max_bytes: int,
    fortran_order: bool | None = False,
    complete: bool = True,
    name: str = "array",
) -> NpyHeader:
    """Check ``data``'s header (module doc) against the expected ``shape`` (``None``: any size),
    ``dtypes`` (``.str`` names such as ``"<f8"``) and ``max_bytes`` of data, before anything is
    allocated; ``fortran_order`` None accepts either order. ``complete=False`` for a prefix
    (an upload still arriving): then only the announced size is checked against the limit.
    Returns the header; raises :class:`ShapeError` naming ``name`` and what differs."""
    head = read_npy_header(data, name)
    if head.dtype not in dtypes:
        raise ShapeError(f"{name}: dtype {head.dtype}, expected one of {sorted(dtypes)}")
    if fortran_order is not None and head.fortran_order != fortran_order:
        order = "Fortran" if head.fortran_order else "C"
        raise ShapeError(f"{name}: an array in {order} order, expected the other")
    if not shape_matches(head.shape, shape):
        raise ShapeError(f"{name}: .npy header says shape {head.shape}, "
                         f"expected {shape_text(shape)}")  # fmt: skip
    if head.nbytes > max_bytes:
        raise ShapeError(f"{name}: {head.nbytes} bytes of data announced, at most {max_bytes}")
    if complete and len(data) != head.offset + head.nbytes:
        raise ShapeError(
            f"{name}: {len(data) - head.offset} bytes after the header, "
            f"the header announces {head.nbytes}"
        )
    return head


def npy_max_bytes(dtype: str, shape: Sequence[int]) -> int:
    """The most bytes an ``.npy`` of ``dtype`` and ``shape`` takes (header included): the cap
    for downloading one whose signed reference gives its dtype and shape."""
    return NPY_HEADER_MAX + 12 + math.prod(shape) * np.dtype(dtype).itemsize


def shape_matches(shape: Sequence[int], expected: Sequence[int | None]) -> bool:
    """Whether ``shape`` has the rank of ``expected`` and its every fixed (non-None) size."""
    return len(shape) == len(expected) and all(
        w is None or w == d for w, d in zip(expected, shape, strict=True)
    )


def shape_text(expected: Sequence[int | None]) -> str:
    """An expected shape as a person reads it: ``(64, *)`` for ``(64, None)``."""
    parts = ["*" if w is None else str(w) for w in expected]
    return f"({parts[0]},)" if len(parts) == 1 else f"({', '.join(parts)})"
