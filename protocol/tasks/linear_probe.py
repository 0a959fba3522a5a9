"""``linear-probe:features=FILE.npz``: multinomial logistic regression on features you supply.

The typical use is a linear probe on a frozen network's embeddings: compute the embeddings of
your training pool and of your targets once, save them, and attribute the probe's predictions to
the pool examples. The task is certifiable (:mod:`protocol.tasks.certifiable`): every subset's
probe is the unique optimum of an l2-strongly convex objective, so the Verifier can check each
subset with one gradient pass instead of a retraining (``verify --protocol witness``).

**The file** (:func:`write_features`): an ``.npz`` holding ``x_pool`` (N, D) and ``x_targets``
(Z, D) float arrays, ``y_pool`` (N,) and ``y_targets`` (Z,) integer labels in [0, C). Its
SHA-256 (of the file's bytes) is in the task spec, so both parties train on the same features;
the file is read at most ``MAX_FILE_BYTES`` and validated (shapes, finiteness, labels) before
use.

**The recipe.** Features standardised by the pool's mean and SD (``standardise=1``, a constant
feature gets SD 1), a constant 1 appended as the bias input, then the objective
``sum_{i in x} CE_i + 0.5 l2 ||W||^2`` over every parameter (mu = l2) and f = the correct-class
margin at the exact optimum, clipped to [-b, b] (:mod:`protocol.tasks.multinomial`). Training is
Newton-PCG from the full-pool optimum, to the float64 rounding floor; seeds are unused.
Parameters: ``l2`` (default 1), ``bound`` b (default 16), ``standardise`` (1 or 0).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protocol.checks import as_mask_matrix
from protocol.errors import InvalidParameterError, TaskError
from protocol.tasks.base import TaskBase
from protocol.tasks.multinomial import MultinomialProblem

__all__ = ["MAX_FILE_BYTES", "LinearProbe", "write_features"]

MAX_FILE_BYTES = 2**30
_KEYS = ("x_pool", "y_pool", "x_targets", "y_targets")
_GRADIENT_TOL = 1e-10  # evaluate(): polished to the rounding floor


def write_features(
    path: str | Path,
    x_pool: NDArray[Any],
    y_pool: NDArray[Any],
    x_targets: NDArray[Any],
    y_targets: NDArray[Any],
) -> str:
    """Save a features file (module doc); returns its SHA-256."""
    with open(path, "wb") as fh:
        np.savez(fh, x_pool=np.asarray(x_pool, dtype=np.float64),
                 y_pool=np.asarray(y_pool, dtype=np.int64),
                 x_targets=np.asarray(x_targets, dtype=np.float64),
                 y_targets=np.asarray(y_targets, dtype=np.int64))  # fmt: skip
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read(path: Path) -> tuple[str, dict[str, NDArray[Any]]]:
    if not path.is_file():
        raise TaskError(f"linear-probe: features file {str(path)!r} does not exist")
    if os.path.getsize(path) > MAX_FILE_BYTES:
        raise TaskError(f"linear-probe: {str(path)!r} is larger than {MAX_FILE_BYTES} bytes")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        import io

        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            missing = [k for k in _KEYS if k not in npz]
            if missing:
                raise TaskError(f"linear-probe: {str(path)!r} lacks {', '.join(missing)}")
            arrays = {k: np.asarray(npz[k]) for k in _KEYS}
    except (ValueError, OSError) as exc:
        raise TaskError(f"linear-probe: {str(path)!r} is not a valid .npz: {exc}") from None
    return digest, arrays


def _checked(arrays: dict[str, NDArray[Any]]) -> tuple[NDArray[Any], ...]:
    xp, yp, xt, yt = (arrays[k] for k in _KEYS)
    if xp.ndim != 2 or xt.ndim != 2 or xp.shape[1] != xt.shape[1] or xp.shape[0] < 2:
        raise TaskError(f"linear-probe: features of shapes {xp.shape} and {xt.shape}")
    if yp.shape != (xp.shape[0],) or yt.shape != (xt.shape[0],) or xt.shape[0] < 1:
        raise TaskError("linear-probe: need one label per pool and target row")
    for name, x in (("x_pool", xp), ("x_targets", xt)):
        if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
            raise TaskError(f"linear-probe: {name} must be finite numbers")
    for name, y in (("y_pool", yp), ("y_targets", yt)):
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise TaskError(f"linear-probe: {name} must be non-negative integer labels")
    return xp.astype(np.float64), yp.astype(np.int64), xt.astype(np.float64), yt.astype(np.int64)


class LinearProbe(TaskBase):
    """``linear-probe`` (module doc)."""

    name = "linear-probe"
    tau = 1e-9  # honest runs differ by rounding only (optimum polished to the float64 floor)
    chunk_size = 256

    def __init__(
        self, features: str, l2: float = 1.0, bound: float = 16.0, standardise: int = 1
    ) -> None:
        if not (isinstance(l2, int | float) and l2 > 0 and isinstance(bound, int | float)
                and bound > 0 and standardise in (0, 1)):  # fmt: skip
            raise InvalidParameterError("linear-probe: need l2 > 0, bound > 0, standardise 0|1")
        self.features_hash, arrays = _read(Path(str(features)))
        xp, yp, xt, yt = _checked(arrays)
        if standardise:
            mean, sd = xp.mean(0), xp.std(0)
            sd[sd == 0] = 1.0
            xp, xt = (xp - mean) / sd, (xt - mean) / sd
        xp = np.hstack([xp, np.ones((len(xp), 1))])
        xt = np.hstack([xt, np.ones((len(xt), 1))])
        self.l2, self.bound, self.standardise = float(l2), float(bound), int(standardise)
        self.n_train, self.n_targets = int(xp.shape[0]), int(xt.shape[0])
        self.problem = MultinomialProblem(xp, yp, xt, yt, self.l2, self.bound)

    def spec(self) -> dict[str, Any]:
        """Data (by content hash), features recipe and objective."""
        return {
            "task": self.name, "version": 1, "features_sha256": self.features_hash,
            "n_train": self.n_train, "n_targets": self.n_targets,
            "features": "standardised by pool mean/sd, bias column" if self.standardise
            else "as given, bias column",
            "optimiser": f"Newton-PCG from the full-pool optimum to ||grad|| <= {_GRADIENT_TOL:g}",
            "bound": self.bound, "checkequiv_tau": self.tau, **self.problem.spec(),
        }  # fmt: skip

    def certifiable(self) -> MultinomialProblem:
        """The certifiable extension: the problem itself."""
        return self.problem

    def evaluate(self, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]) -> NDArray[np.float64]:
        """f at the polished optimum of each subset, (K, Z)."""
        m = as_mask_matrix(masks, self.n_train)
        start = np.repeat(self.problem.full_pool_start()[None], len(m), axis=0)
        theta, _ = self.problem.polish(start, m, _GRADIENT_TOL, max_newton=30)
        return self.problem.outputs(theta)
