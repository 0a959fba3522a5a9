"""Linear datamodels g_z(x) = w_0 + sum_i w_i x_i (the attribution), and their quality figures.

A :class:`Datamodel` holds Z targets at once: ``intercept`` (Z,) and ``weights`` (Z, N), both
float64 and in **mask units** (x in {0, 1}, docs/protocol.md#datamodels). Quality figures:

* ``predict(masks)`` -> (K, Z);
* ``mse(masks, values)`` -> (Z,), the empirical MSE_p(f, g) on samples;
* ``lds(masks, values)`` -> (Z,), the linear datamodeling score: Spearman correlation over the
  K subsets between g(x) and f(x) (Ilyas et al. 2022);
* ``fourier(p)`` -> the degree <= 1 Fourier coefficients under B_p, from which the exact error
  gap against a planted truth follows: with mu = 2p - 1, sigma = 2 sqrt(p(1-p)) and
  x_i = p + (sigma / 2) phi_i, the constant coefficient is ``w_0 + p sum_i w_i`` and the
  coefficient of phi_i is ``w_i sigma / 2``; err(g) = sum over degree <= 1 characters of
  (g_hat - f_hat)^2 (Parseval).

**Binary form** (stable, little-endian): ``b"VDA-DM\\x00\\x01"`` (8 bytes), ``u32le Z``,
``u32le N``, then Z float64 intercepts, then Z * N float64 weights row-major. The content hash is
the SHA-256 of these bytes; the Prover publishes the datamodel under it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from protocol.checks import as_finite_matrix, as_mask_matrix, check_probability
from protocol.codec import sha256_hex
from protocol.distributions import rankdata
from protocol.errors import ShapeError

__all__ = ["Datamodel"]

_MAGIC = b"VDA-DM\x00\x01"
_HEADER = struct.Struct("<8sII")


@dataclass(frozen=True, eq=False)
class Datamodel:
    """Intercept (Z,) and weights (Z, N), float64, mask units; validated and read-only."""

    intercept: NDArray[np.float64]
    weights: NDArray[np.float64]

    def __post_init__(self) -> None:
        w = as_finite_matrix("weights", self.weights, (None, None))
        c = as_finite_matrix("intercept", self.intercept, (w.shape[0],))
        if w.shape[0] < 1 or w.shape[1] < 1:
            raise ShapeError(f"a datamodel needs Z >= 1 and N >= 1; got weights {w.shape}")
        w = np.ascontiguousarray(w)
        c = np.ascontiguousarray(c)
        w.setflags(write=False)
        c.setflags(write=False)
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "intercept", c)

    @property
    def n_targets(self) -> int:
        """Z."""
        return int(self.weights.shape[0])

    @property
    def n_train(self) -> int:
        """N."""
        return int(self.weights.shape[1])

    def predict(self, masks: NDArray[np.bool_]) -> NDArray[np.float64]:
        """g(x) for each mask row: (K, N) masks -> (K, Z)."""
        x = as_mask_matrix(masks, self.n_train).astype(np.float64)
        return x @ self.weights.T + self.intercept

    def output_range(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(inf, sup) of g over every mask, (Z,) each: w_0 plus the negative (positive) slopes.

        The a-priori range :func:`protocol.certify` needs for its ``betting`` bounds."""
        w = self.weights
        return (
            np.asarray(self.intercept + np.minimum(w, 0.0).sum(axis=1)),
            np.asarray(self.intercept + np.maximum(w, 0.0).sum(axis=1)),
        )

    def residuals(
        self, masks: NDArray[np.bool_], values: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """r = f - g on samples: (K, Z)."""
        f = as_finite_matrix("values", values, (None, self.n_targets))
        g = self.predict(masks)
        if g.shape[0] != f.shape[0]:
            raise ShapeError(f"{g.shape[0]} masks but {f.shape[0]} rows of values")
        return f - g

    def mse(self, masks: NDArray[np.bool_], values: NDArray[np.float64]) -> NDArray[np.float64]:
        """Empirical MSE per target, (Z,)."""
        r = self.residuals(masks, values)
        if r.shape[0] == 0:
            raise ShapeError("the MSE needs at least one sample")
        return np.asarray(np.mean(r * r, axis=0), dtype=np.float64)

    def lds(self, masks: NDArray[np.bool_], values: NDArray[np.float64]) -> NDArray[np.float64]:
        """Spearman correlation over samples between g(x) and f(x), per target, (Z,).

        A target whose f or g is constant over the samples has no rank correlation: NaN.
        """
        f = as_finite_matrix("values", values, (None, self.n_targets))
        g = self.predict(masks)
        if g.shape[0] != f.shape[0] or f.shape[0] < 2:
            raise ShapeError("LDS needs the same number (>= 2) of masks and value rows")
        rf = rankdata(f, axis=0) - (f.shape[0] + 1) / 2.0
        rg = rankdata(g, axis=0) - (f.shape[0] + 1) / 2.0
        num = np.sum(rf * rg, axis=0)
        den = np.sqrt(np.sum(rf * rf, axis=0) * np.sum(rg * rg, axis=0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    def fourier(self, p: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Degree-0 (Z,) and degree-1 (Z, N) Fourier coefficients under B_p (module doc)."""
        p = check_probability("p", p)
        sigma = 2.0 * np.sqrt(p * (1.0 - p))
        return self.intercept + p * self.weights.sum(axis=1), self.weights * (sigma / 2.0)

    def to_bytes(self) -> bytes:
        """The stable binary form (module doc)."""
        return (
            _HEADER.pack(_MAGIC, self.n_targets, self.n_train)
            + self.intercept.astype("<f8").tobytes()
            + self.weights.astype("<f8").tobytes()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Datamodel:
        """Parse the binary form; refuses a wrong magic, a truncated body or trailing bytes."""
        if len(data) < _HEADER.size:
            raise ShapeError("datamodel bytes are shorter than the header")
        magic, z, n = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ShapeError("not a datamodel (bad magic or unsupported version)")
        want = _HEADER.size + 8 * z * (n + 1)
        if len(data) != want:
            raise ShapeError(f"datamodel of Z={z}, N={n} needs {want} bytes; got {len(data)}")
        body = np.frombuffer(data, dtype="<f8", offset=_HEADER.size)
        return cls(body[:z].astype(np.float64), body[z:].reshape(z, n).astype(np.float64))

    @property
    def content_hash(self) -> str:
        """SHA-256 (hex) of :meth:`to_bytes`."""
        return sha256_hex(self.to_bytes())

    def scaled(self, factor: float) -> Datamodel:
        """A copy with intercept and weights multiplied by ``factor`` (e.g. the w/2 cheat)."""
        return Datamodel(self.intercept * factor, self.weights * factor)
