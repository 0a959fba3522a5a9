"""``digits-mlp``'s exact training on CPU as one compiled loop (numba): the same bits as the
torch chain of :meth:`protocol.tasks.digits_mlp.DigitsMLP._sgd`, at twice its speed or more.

The torch chain runs about 40 separate tensor operations per step between its five matrix
products, on all K models at once: each streams a tensor of up to half a million floats
through memory, and together they took longer than the products (``docs/training.md``). Here
each model is trained in turn, all its steps, with its working set (about 0.2 MB at the
defaults) in cache, and each elementwise stage is one loop. It gives the same bits because

- every elementwise operation is the same single correctly rounded float32 operation as in
  the torch chain, in the same order: ``+ - * /``, ``min``/``max``, ``rint`` (round half to
  even), compiled without ``fastmath`` (no reassociation, no contraction of ``a * b + c``
  into a fused multiply-add; a test reads the compiled assembly for FMA instructions);
- every constant is float32 (:func:`sgd` refuses one that is not representable);
- the products (BLAS through ``np.dot``) and the two sums are over integers below 2^24,
  exact in any order, and the maximum is order-free.

``tests/protocol/test_mlp_kernels.py`` compares the bits with the torch chain, also with numba
compiling for other CPUs (``NUMBA_CPU_NAME`` generic, haswell) and OpenBLAS on other kernels.

numba is imported on first use (about 0.4 s; compiled code is cached on disk), so
``import protocol`` stays light. Where numba is missing, or ``VDA_MLP_KERNELS=torch``, the
task runs the torch chain (also the CUDA path). The products run on one BLAS thread: the Prover
parallelises across chunks, and a 128 x 65 x 64 product split over threads was slower here
(5.0 ms against 3.4 ms per step of 64 models on two cores).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protocol.errors import InvalidParameterError

__all__ = ["FLOAT_CONSTANTS", "available", "sgd"]

# The order of sgd's float32 constants.
FLOAT_CONSTANTS = (
    "lim1", "lim2", "h_scale", "h_top", "z_to_h", "logit_scale", "e_scale", "d_scale", "mom",
    "lr_wd", "lr_b", "c2", "c2b",
)  # fmt: skip

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}


def available() -> bool:
    """Whether the compiled loop can run: numba importable and ``VDA_MLP_KERNELS`` not
    ``torch``."""
    if os.environ.get("VDA_MLP_KERNELS", "").strip().lower() == "torch":
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _module() -> Any:
    """The compiled kernels, with the BLAS that numba's ``np.dot`` calls (scipy's OpenBLAS)
    limited to one thread, once per process."""
    with _LOCK:
        if "module" not in _STATE:
            from protocol.tasks import _mlp_numba

            try:
                import scipy.linalg.cython_blas  # noqa: F401  (the library np.dot calls)
                from threadpoolctl import ThreadpoolController

                libs = ThreadpoolController().select(user_api="blas")
                scipy_libs = [
                    lib for lib in libs.lib_controllers if "scipy.libs" in str(lib.filepath)
                ]
                for lib in scipy_libs:
                    lib.set_num_threads(1)
            except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
                pass
            _STATE["module"] = _mlp_numba
        return _STATE["module"]


def sgd(
    masters: tuple[NDArray[np.float32], ...],
    picks: NDArray[np.int64],
    y: NDArray[np.int64],
    xpool: NDArray[np.float32],
    linear: tuple[NDArray[np.float32], ...] | None,
    live: NDArray[np.float32] | None,
    constants: dict[str, float],
    dz_bits: int,
    e1: int,
    terms: tuple[float, ...],
) -> None:
    """Run DigitsMLP._sgd in place on ``masters`` = (w1m (K, H, D), v1, w2m (K, C, H), v2,
    b2m (K, C), vb), float32 C-contiguous, in units of their grids. ``picks`` (K, steps, B)
    rows of ``xpool`` (N, D, input units) with labels ``y`` (N,); ``linear`` the first-order
    terms shaped as w1m, w2m, b2m (or None); ``live`` (K,) 0/1 (None: all live);
    ``constants`` by the names of :data:`FLOAT_CONSTANTS`, each exactly a float32."""
    f = np.array([constants[name] for name in FLOAT_CONSTANTS], dtype=np.float32)
    exact = f.astype(np.float64) == np.array([constants[n] for n in FLOAT_CONSTANTS])
    t = np.array(terms, dtype=np.float32)
    if not exact.all() or not np.array_equal(t.astype(np.float64), np.array(terms)):
        bad = [n for n, ok in zip(FLOAT_CONSTANTS, exact, strict=True) if not ok]
        raise InvalidParameterError(f"digits-mlp kernels: not float32 constants: {bad or terms}")
    w1m, _, w2m, _, b2m, _ = masters
    k = w1m.shape[0]
    arrays = [*masters, *(linear if linear is not None else (w1m, w2m, b2m))]
    if any(a.dtype != np.float32 or not a.flags.c_contiguous for a in arrays):
        raise InvalidParameterError("digits-mlp kernels: need C-contiguous float32 arrays")
    _check_shapes(masters, picks, y, xpool, linear, live)
    alive = np.ones(k, dtype=np.float32) if live is None else np.ascontiguousarray(live)
    _module().sgd(
        *masters, np.ascontiguousarray(picks, dtype=np.int64), np.ascontiguousarray(y),
        np.ascontiguousarray(xpool), *arrays[6:], linear is not None, alive, live is not None,
        f, int(dz_bits), int(e1), t,
    )  # fmt: skip


def _check_shapes(
    masters: tuple[NDArray[np.float32], ...],
    picks: NDArray[np.int64],
    y: NDArray[np.int64],
    xpool: NDArray[np.float32],
    linear: tuple[NDArray[np.float32], ...] | None,
    live: NDArray[np.float32] | None,
) -> None:
    """Refuse arrays the compiled loop would read out of bounds (it runs without bounds
    checks): inconsistent shapes, rows of ``picks`` outside the pool, labels outside the
    classes."""
    w1m, v1, w2m, v2, b2m, vb = masters
    k, h, d = w1m.shape
    c = w2m.shape[1] if w2m.ndim == 3 else -1
    want = [(k, h, d), (k, h, d), (k, c, h), (k, c, h), (k, c), (k, c)]
    shapes = [a.shape for a in masters]
    if linear is not None:
        want, shapes = want + [want[0], want[2], want[4]], shapes + [a.shape for a in linear]
    n = xpool.shape[0] if xpool.ndim == 2 else -1
    pairs = zip(shapes, want, strict=True)
    problems = [f"{got} where {exp} was expected" for got, exp in pairs if got != exp]
    if xpool.shape != (n, d) or y.shape != (n,):
        problems.append(f"pool {xpool.shape} with labels {y.shape} for {d} inputs")
    if picks.ndim != 3 or picks.shape[0] != k or (live is not None and live.shape != (k,)):
        problems.append(f"picks {picks.shape} or live for {k} models")
    elif picks.size and (picks.min() < 0 or picks.max() >= n):
        problems.append(f"picks outside the pool's {n} rows")
    if y.size and (y.min() < 0 or y.max() >= c):
        problems.append(f"labels outside the {c} classes")
    if problems:
        raise InvalidParameterError("digits-mlp kernels: " + "; ".join(problems))
