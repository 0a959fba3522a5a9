"""``planted``: a synthetic task with a planted Fourier spectrum: exact B_k, Phi and err are known.

For s = 2x - 1 in {+-1}^N and target z, ::

    f_z(x, r) = a0_z + sum_i a_zi s_i + sum_{(i,j) in P} a_zij s_i s_j
                     + sum_{(i,j,k) in T} a_zijk s_i s_j s_k + noise_z(r)

``noise_z(r)`` is uniform on [-sqrt(3) sigma_n, sqrt(3) sigma_n] (variance sigma_n^2), derived from
the training seed r alone, so a fixed (mask, seed) gives a fixed value and seed noise is real.
The index sets P (pairs) and T (triples) are shared by all targets; the coefficients are not.
Each target's coefficients are scaled so that, at p = 1/2, B_0 = ``b0``, B_1 = ``b1``,
B_2 = ``b2`` and B_3 = ``b3`` exactly; the seed noise adds sigma_n^2 to B_{>=2}.
At any other p, :meth:`PlantedTask.spectrum` re-expands the monomials in the p-biased characters
(s_i = mu + sigma phi_i) and still gives the exact spectrum.

**Bitwise reproducible** (tau = 0): every coefficient is rounded to the grid 2^-36 (``GRID``)
after scaling, so every partial sum of the matrix products is a multiple of 2^-36 below 2^53
units (the supremum must stay below 2^17, checked) and exact in any order, on any BLAS; the seed
noise is added last, in one rounding. B_k are then b_k up to ~1e-11 relative, and
:meth:`PlantedTask.spectrum` is computed from the rounded coefficients, so it stays exact.

The declared bound b defaults to the exact supremum of |f| (no clipping ever happens, so the
spectrum is exact). A smaller ``bound`` clips, and then :meth:`spectrum` refuses.

All coefficients and index sets come from the portable stream of :mod:`protocol.sampling`
keyed by ``SHA-256(b"VDA/v1/planted" || u64le(seed))``, so the task is the same in any language.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protocol.checks import as_mask_matrix, check_probability
from protocol.datamodel import Datamodel
from protocol.errors import InvalidParameterError, TaskError
from protocol.sampling import stream_words
from protocol.tasks.base import TaskBase

__all__ = ["PlantedSpectrum", "PlantedTask"]


def _splitmix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64 (add the golden gamma, then the two xor-shift-multiply rounds), mod 2^64."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


GRID_BITS = 36  # coefficients are multiples of 2^-36 (module doc)


def _on_grid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Round to the nearest multiple of 2^-GRID_BITS (exact scaling by powers of two)."""
    return np.asarray(np.round(x * 2.0**GRID_BITS) / 2.0**GRID_BITS, dtype=np.float64)


@dataclass(frozen=True)
class PlantedSpectrum:
    """Exact spectrum of a planted task under B_p; every field is per target, shape (Z,) or (Z, N).

    ``residual`` = B_{>=2} = MSE of the optimal datamodel = b2 + b3 + noise variance.
    """

    p: float
    constant: NDArray[np.float64]  # f_hat_empty, (Z,)
    linear: NDArray[np.float64]  # f_hat_{i}, (Z, N)
    b0: NDArray[np.float64]
    b1: NDArray[np.float64]
    b2: NDArray[np.float64]
    b3: NDArray[np.float64]
    noise_variance: float

    @property
    def residual(self) -> NDArray[np.float64]:
        """B_{>=2}, including the seed noise."""
        return self.b2 + self.b3 + self.noise_variance

    @property
    def variance(self) -> NDArray[np.float64]:
        """Var f = B_1 + B_{>=2}."""
        return self.b1 + self.residual


class PlantedTask(TaskBase):
    """Synthetic function with a planted spectrum (module doc). Cheap: 10^5 rows per second."""

    name = "planted"

    def __init__(
        self,
        n_train: int = 300,
        n_targets: int = 3,
        b0: float = 0.25,
        b1: float = 1.0,
        b2: float = 0.3,
        b3: float = 0.0,
        noise: float = 0.2,
        n_pairs: int | None = None,
        n_triples: int | None = None,
        seed: int = 0,
        bound: float | None = None,
    ) -> None:
        if not isinstance(n_train, int) or n_train < 3:
            raise InvalidParameterError(f"planted: n_train must be an integer >= 3; got {n_train}")
        if not isinstance(n_targets, int) or n_targets < 1:
            raise InvalidParameterError(f"planted: n_targets must be >= 1; got {n_targets!r}")
        for label, v in (("b0", b0), ("b1", b1), ("b2", b2), ("b3", b3), ("noise", noise)):
            if not np.isfinite(v) or v < 0:
                raise InvalidParameterError(f"planted: {label} must be finite and >= 0; got {v!r}")
        max_pairs = n_train * (n_train - 1) // 2
        n_pairs = n_train if n_pairs is None else n_pairs
        n_triples = (n_train if b3 > 0 else 0) if n_triples is None else n_triples
        if not 0 <= n_pairs <= max_pairs or (b2 > 0 and n_pairs == 0):
            raise InvalidParameterError(f"planted: n_pairs must be in [1, {max_pairs}]")
        max_triples = n_train * (n_train - 1) * (n_train - 2) // 6
        if not 0 <= n_triples <= max_triples or (b3 > 0 and n_triples == 0):
            raise InvalidParameterError(f"planted: n_triples must be in [1, {max_triples}]")
        if not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise InvalidParameterError("planted: seed must be an integer in [0, 2**64)")
        self.n_train = n_train
        self.n_targets = n_targets
        self._params: dict[str, Any] = {
            "n_train": n_train, "n_targets": n_targets, "b0": float(b0), "b1": float(b1),
            "b2": float(b2), "b3": float(b3), "noise": float(noise), "n_pairs": n_pairs,
            "n_triples": n_triples, "seed": seed,
        }  # fmt: skip
        self._key = hashlib.sha256(b"VDA/v1/planted" + struct.pack("<Q", seed)).digest()
        self._key64 = int.from_bytes(self._key[:8], "little")
        self.noise = float(noise)
        self.pairs = self._distinct_tuples("pairs", 2, n_pairs)
        self.triples = self._distinct_tuples("triples", 3, n_triples)
        self.a0 = _on_grid(
            np.sqrt(b0) * np.where(self._uniform("intercept", 0, n_targets) < 0, -1.0, 1.0)
        )
        self.a1 = self._coefficients("linear", n_train, b1)
        self.a2 = self._coefficients("pair-coef", n_pairs, b2)
        self.a3 = self._coefficients("triple-coef", n_triples, b3)
        sup = (
            np.abs(self.a0)
            + np.abs(self.a1).sum(axis=1)
            + np.abs(self.a2).sum(axis=1)
            + np.abs(self.a3).sum(axis=1)
            + np.sqrt(3.0) * self.noise
        )
        self.supremum = float(sup.max())
        if self.supremum >= 2.0 ** (53 - GRID_BITS):
            raise InvalidParameterError(
                f"planted: sup |f| = {self.supremum:.3g} is too large for exact sums on the "
                f"grid 2^-{GRID_BITS}; lower b0..b3 or noise"
            )
        if bound is None:
            self.bound = self.supremum
        else:
            if not np.isfinite(bound) or bound <= 0:
                raise InvalidParameterError(f"planted: bound must be > 0; got {bound!r}")
            self.bound = float(bound)
        self._params["bound"] = self.bound

    # -- construction helpers ---------------------------------------------------------------
    def _uniform(self, domain: str, index: int, count: int) -> NDArray[np.float64]:
        """``count`` values in (-1, 1): 2 (w + 1/2) / 2^32 - 1 from the task's stream."""
        w = stream_words(self._key, domain, index, count).astype(np.float64)
        return 2.0 * (w + 0.5) / 2.0**32 - 1.0

    def _coefficients(self, domain: str, count: int, weight: float) -> NDArray[np.float64]:
        out = np.zeros((self.n_targets, count))
        for z in range(self.n_targets):
            if count == 0 or weight == 0:
                continue
            u = self._uniform(domain, z, count)
            out[z] = _on_grid(u * np.sqrt(weight / np.sum(u * u)))
        return out

    def _distinct_tuples(self, domain: str, order: int, count: int) -> NDArray[np.int64]:
        """``count`` distinct sorted index tuples, by rejection from the stream (documented)."""
        seen: set[tuple[int, ...]] = set()
        out: list[tuple[int, ...]] = []
        block = 0
        while len(out) < count:
            words = stream_words(self._key, domain, block, order * 4096)
            for k in range(0, len(words), order):
                t = tuple(sorted(int(w) % self.n_train for w in words[k : k + order]))
                if len(set(t)) == order and t not in seen:
                    seen.add(t)
                    out.append(t)
                    if len(out) == count:
                        break
            block += 1
        return np.array(out, dtype=np.int64).reshape(count, order)

    # -- the task contract ------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """JSON description; its canonical hash identifies the task."""
        return {"task": "planted", "version": 2, "grid_bits": GRID_BITS, **self._params}

    def seed_noise(self, seeds: NDArray[np.uint64]) -> NDArray[np.float64]:
        """noise_z(r) for each seed: (K,) -> (K, Z).

        ``h = splitmix64(splitmix64(r XOR k) + z)`` with k the first 8 bytes (LE) of the task key,
        ``u = ((h >> 11) + 1/2) / 2^53`` and noise = sqrt(3) sigma_n (2u - 1). SplitMix64 is the
        standard 64-bit finaliser (Steele et al. 2014), vectorised here and portable anywhere.
        """
        r: NDArray[np.uint64] = np.asarray(seeds, dtype=np.uint64) ^ np.uint64(self._key64)
        cols = np.arange(self.n_targets, dtype=np.uint64)
        h = _splitmix64(np.asarray(_splitmix64(r)[:, None] + cols, dtype=np.uint64))
        u = ((h >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
        return np.asarray(np.sqrt(3.0) * self.noise * (2.0 * u - 1.0), dtype=np.float64)

    def evaluate(self, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]) -> NDArray[np.float64]:
        """f for each (mask, seed) row: (K, N) bool, (K,) uint64 -> (K, Z) float64, clipped."""
        x = as_mask_matrix(masks, self.n_train)
        s = 2.0 * x.astype(np.float64) - 1.0
        f = s @ self.a1.T + self.a0
        if len(self.pairs):
            f += (s[:, self.pairs[:, 0]] * s[:, self.pairs[:, 1]]) @ self.a2.T
        if len(self.triples):
            t = self.triples
            f += (s[:, t[:, 0]] * s[:, t[:, 1]] * s[:, t[:, 2]]) @ self.a3.T
        f += self.seed_noise(seeds)
        return np.asarray(np.clip(f, -self.bound, self.bound), dtype=np.float64)

    # -- ground truth -----------------------------------------------------------------------
    def spectrum(self, p: float = 0.5) -> PlantedSpectrum:
        """Exact Fourier weights under B_p (module doc). Refuses if ``bound`` clips."""
        p = check_probability("p", p)
        if self.bound < self.supremum:
            raise TaskError("planted: a bound below the supremum clips f; no exact spectrum")
        mu, sg = 2.0 * p - 1.0, 2.0 * np.sqrt(p * (1.0 - p))
        z, n = self.n_targets, self.n_train
        const = self.a0 + mu * self.a1.sum(1) + mu**2 * self.a2.sum(1) + mu**3 * self.a3.sum(1)
        lin = sg * self.a1.copy()
        for c in range(2):
            np.add.at(lin.T, self.pairs[:, c], (mu * sg * self.a2).T)
        for c in range(3):
            np.add.at(lin.T, self.triples[:, c], (mu**2 * sg * self.a3).T)
        # Degree-2 characters: the pairs themselves plus the sub-pairs of every triple.
        keys = [self.pairs[:, 0] * n + self.pairs[:, 1]]
        vals = [sg**2 * self.a2]
        for i, j in ((0, 1), (0, 2), (1, 2)):
            keys.append(self.triples[:, i] * n + self.triples[:, j])
            vals.append(mu * sg**2 * self.a3)
        all_keys = np.concatenate(keys)
        uniq, inv = np.unique(all_keys, return_inverse=True)
        deg2 = np.zeros((z, len(uniq)))
        np.add.at(deg2.T, inv, np.concatenate(vals, axis=1).T)
        return PlantedSpectrum(
            p=p,
            constant=const,
            linear=lin,
            b0=const**2,
            b1=np.sum(lin**2, axis=1),
            b2=np.sum(deg2**2, axis=1),
            b3=np.sum((sg**3 * self.a3) ** 2, axis=1),
            noise_variance=self.noise**2,
        )

    def optimal_datamodel(self, p: float = 0.5) -> Datamodel:
        """Phi: the degree <= 1 part of f in mask units (w_i = 2 f_hat_i / sigma)."""
        spec = self.spectrum(p)
        sg = 2.0 * np.sqrt(spec.p * (1.0 - spec.p))
        w = 2.0 * spec.linear / sg
        return Datamodel(spec.constant - spec.p * w.sum(axis=1), w)

    def err(self, model: Datamodel, p: float = 0.5) -> NDArray[np.float64]:
        """Exact error gap err(g) = MSE(g) - MSE(Phi) per target, (Z,)."""
        spec = self.spectrum(p)
        if model.n_train != self.n_train or model.n_targets != self.n_targets:
            raise TaskError(
                f"datamodel is (Z={model.n_targets}, N={model.n_train}); "
                f"task is (Z={self.n_targets}, N={self.n_train})"
            )
        c, lin = model.fourier(spec.p)
        gap = (c - spec.constant) ** 2 + np.sum((lin - spec.linear) ** 2, axis=1)
        return np.asarray(gap, dtype=np.float64)
