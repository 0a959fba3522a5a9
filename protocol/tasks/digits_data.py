"""scikit-learn's bundled digits (1,797 images of 8 x 8 pixels, 10 classes), split once for
both trained digits tasks: ``digits-logreg`` (:mod:`protocol.tasks.digits_logreg`) and
``digits-mlp`` (:mod:`protocol.tasks.digits_mlp`).

**Split** (both tasks): a permutation of the 1,797 rows by sorting the uint32 words of
``stream(SHA-256(b"VDA/v1/digits-split"), "split", 0)`` (ties broken by row index); the first
1,497 rows are the training pool (the N examples that masks select), the last 300 the targets.
Features are standardised with the pool's mean and standard deviation (a constant feature gets
sd 1), and a constant 1 is appended as the bias input. f is the correct-class margin on each
target (true logit minus the largest other), clipped to [-b, b]. The public probe set for
CHECKEQUIV is the first 16 pool rows; the fingerprint is their 10 logits per model.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protocol.codec import sha256_hex
from protocol.sampling import stream_words

__all__ = ["DigitsData", "N_CLASSES", "N_POOL", "N_PROBES", "N_TARGETS", "load_digits_split"]

N_POOL, N_TARGETS, N_PROBES, N_CLASSES = 1497, 300, 16, 10


def _digits_arrays() -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """scikit-learn's digits, (1797, 64) float64 and (1797,) int64: read from the file that
    ``sklearn.datasets.load_digits`` reads (its ``data/digits.csv.gz``, pixels then label per
    row) without importing scikit-learn (2-3 s at a Prover's start-up); through load_digits
    itself if that file is not where it was. The data hash in the spec covers either way."""
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            if table.shape == (1797, 65):
                return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # the data ships inside scikit-learn

    x, y = load_digits(return_X_y=True)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)


class DigitsData:
    """The fixed split (module doc): pool and targets, standardised, with a bias column."""

    def __init__(self) -> None:
        x, y = _digits_arrays()
        self.data_hash = sha256_hex(x.astype("<f8").tobytes() + y.astype("<i8").tobytes())
        key = hashlib.sha256(b"VDA/v1/digits-split").digest()
        words = stream_words(key, "split", 0, len(x)).astype(np.int64)
        perm = np.lexsort((np.arange(len(x)), words))
        pool, targets = perm[:N_POOL], perm[N_POOL : N_POOL + N_TARGETS]
        mean, sd = x[pool].mean(0), x[pool].std(0)
        sd[sd == 0] = 1.0

        def prep(rows: NDArray[np.int64]) -> NDArray[np.float64]:
            return np.hstack([(x[rows] - mean) / sd, np.ones((len(rows), 1))])

        self.pool_index, self.target_index = pool, targets
        self.x_pool, self.y_pool = prep(pool), y[pool]
        self.x_targets, self.y_targets = prep(targets), y[targets]
        self.x_probes = self.x_pool[:N_PROBES]

    def spec(self) -> dict[str, Any]:
        """The data and split part of both digits tasks' specs."""
        return {
            "data": "sklearn.datasets.load_digits",
            "data_hash": self.data_hash,
            "split": {"rule": "sort stream(SHA-256('VDA/v1/digits-split'),'split',0)",
                      "pool": N_POOL, "targets": N_TARGETS, "probes": N_PROBES},
        }  # fmt: skip


@cache
def load_digits_split() -> DigitsData:
    """The split, computed once per process."""
    return DigitsData()
