"""``protocol.npy``: honest ``.npy`` bytes pass, every lie in a header is refused before any
array is allocated (issue 21, item 13: both sides parse their peer's arrays)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.lib import format as npy_format

from protocol.errors import ShapeError
from protocol.messages import array_to_npy
from protocol.npy import check_npy_header, npy_max_bytes, read_npy_header, shape_text

DTYPES = ("<f8", "<f4", "|u1", "<u8")


def _npy(array: np.ndarray) -> bytes:  # type: ignore[type-arg]
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _with_header(data: bytes, **fields: object) -> bytes:
    """``data``'s array under a version 1.0 header whose fields (``descr``, ``shape``,
    ``fortran_order``) are replaced by ``fields``: what a lying peer sends."""
    head = read_npy_header(data)
    meta = {"descr": head.dtype, "fortran_order": head.fortran_order, "shape": head.shape}
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, meta | fields)
    return buf.getvalue() + data[head.offset :]


@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=3).map(tuple),
    dtype=st.sampled_from(DTYPES),
)
def test_honest_bytes_pass_and_fit_their_cap(shape: tuple[int, ...], dtype: str) -> None:
    _, data = array_to_npy("values", np.zeros(shape, dtype=dtype))
    head = check_npy_header(data, shape=shape, dtypes=DTYPES, max_bytes=10**6)
    assert (head.dtype, head.shape, head.fortran_order) == (dtype, shape, False)
    assert head.offset + head.nbytes == len(data) <= npy_max_bytes(dtype, shape)
    free = tuple(None for _ in shape)  # every size free: only the rank is checked
    assert check_npy_header(data, shape=free, dtypes=DTYPES, max_bytes=10**6) == head


def test_a_header_announcing_8_tib_is_refused_without_allocating() -> None:
    data = _npy(np.zeros((4, 2)))
    lie = _with_header(data, shape=(1048576, 1048576))
    with pytest.raises(ShapeError, match=r"shape \(1048576, 1048576\), expected \(4, \*\)"):
        check_npy_header(lie, shape=(4, None), dtypes=DTYPES, max_bytes=10**9)
    with pytest.raises(ShapeError, match="8796093022208 bytes of data announced"):
        check_npy_header(lie, shape=(None, None), dtypes=DTYPES, max_bytes=10**9)
    with pytest.raises(ShapeError, match="bytes after the header"):  # a free shape, no cap hit
        check_npy_header(lie, shape=(None, None), dtypes=DTYPES, max_bytes=2**50)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_npy(np.zeros((4, 2)))[:-1], "bytes after the header"),
        (_npy(np.zeros((4, 2))) + b"\0", "bytes after the header"),
        (_npy(np.zeros((4, 2), dtype="<i8")), "dtype <i8"),
        (_npy(np.zeros((4, 2), dtype=">f8")), "dtype >f8"),
        (_npy(np.asfortranarray(np.zeros((4, 2)))), "Fortran order"),
        (_npy(np.zeros((4, 2, 1))), "expected"),
        (_with_header(_npy(np.zeros((4, 2))), shape=(4, -2)), "negative"),
        (_with_header(_npy(np.zeros((4, 2))), descr="|O"), "object"),
        (b"\x93NUMPY\x03\x00" + bytes(64), "version"),
        (b"not an npy at all", "not a valid .npy header"),
        (b"", "not a valid .npy header"),
    ],
)
def test_every_lie_is_a_shape_error(data: bytes, match: str) -> None:
    with pytest.raises(ShapeError, match=match):
        check_npy_header(data, shape=(4, 2), dtypes=("<f8",), max_bytes=10**6)


def test_a_prefix_is_checked_for_what_it_announces() -> None:
    data = _npy(np.zeros((400, 2)))
    head = read_npy_header(data[:200])  # an upload still arriving: the header is enough
    assert head.shape == (400, 2)
    assert check_npy_header(data[:200], shape=(400, 2), dtypes=("<f8",), max_bytes=6400,
                            complete=False) == head  # fmt: skip
    with pytest.raises(ShapeError, match="at most 6399"):
        check_npy_header(data[:200], shape=(400, 2), dtypes=("<f8",), max_bytes=6399,
                         complete=False)  # fmt: skip
    fortran = _npy(np.asfortranarray(np.zeros((4, 2))))
    either = check_npy_header(fortran, shape=(4, 2), dtypes=("<f8",), max_bytes=64,
                              fortran_order=None)  # fmt: skip
    assert either.fortran_order


def test_shapes_read_as_people_write_them() -> None:
    assert [shape_text(s) for s in [(), (3,), (64, None)]] == ["()", "(3,)", "(64, *)"]
