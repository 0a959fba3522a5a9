"""Fast simulated challenges for statistical tests (numpy Generator; NOT the wire derivation).

The wire derivation (ChaCha20, :mod:`protocol.sampling`) is tested on its own against
checked-in vectors; the estimators only need pairs with the right joint law, and hundreds of
repetitions need them quickly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class SimDesign:
    rhos: tuple[float, ...]
    pairs_per_level: int
    p: float = 0.5
    layout: str = "pairs"


def simulate_design(
    rng: np.random.Generator, n_train: int, p: float, rhos: tuple[float, ...], n: int
) -> tuple[SimDesign, NDArray[np.bool_], NDArray[np.uint64]]:
    """Masks (2 L n, N) in the ChallengeDesign order and independent uint64 seeds."""
    rows = []
    for rho in rhos:
        x = rng.random((n, n_train)) < p
        keep = rng.random((n, n_train)) < rho
        fresh = rng.random((n, n_train)) < p
        xp = np.where(keep, x, fresh)
        pair = np.empty((2 * n, n_train), dtype=bool)
        pair[0::2], pair[1::2] = x, xp
        rows.append(pair)
    masks = np.concatenate(rows)
    seeds = rng.integers(0, 2**63, size=len(masks), dtype=np.int64).astype(np.uint64)
    return SimDesign(tuple(rhos), n, p), masks, seeds


@dataclass(frozen=True)
class SimSharedDesign:
    rhos: tuple[float, ...]
    pairs_per_level: int
    layout: str = "shared-base"
    p: float = 0.5


def simulate_shared_design(
    rng: np.random.Generator, n_train: int, p: float, rhos: tuple[float, ...], n: int
) -> tuple[SimSharedDesign, NDArray[np.bool_], NDArray[np.uint64]]:
    """Masks ((1 + L) n, N) in the SharedBaseDesign order (x, then x'_l per base) and seeds:
    one uniform per coordinate decides the keeps of every level (nested), one shared fresh draw."""
    x = rng.random((n, n_train)) < p
    u = rng.random((n, n_train))
    fresh = rng.random((n, n_train)) < p
    rows = [x] + [np.where(u < rho, x, fresh) for rho in rhos]
    masks = np.stack(rows, axis=1).reshape(n * (1 + len(rhos)), n_train)
    seeds = rng.integers(0, 2**63, size=len(masks), dtype=np.int64).astype(np.uint64)
    return SimSharedDesign(tuple(rhos), n, p=p), masks, seeds
