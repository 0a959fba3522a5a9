"""The certifiable-task contract: a strongly convex objective whose optimum a gradient certifies.

A task is **certifiable** when, for every subset S, its training objective L_S is
mu-strongly convex (mu > 0 stated by the task, the same for every S) and f(S) is *defined* as
the outputs at the exact optimum theta*(S). Then for any parameters theta,

    ||theta - theta*(S)|| <= ||grad L_S(theta)|| / mu        (strong convexity)
    |f_z(theta) - f_z(theta*(S))| <= L_z ||theta - theta*(S)|| (L_z: the output's Lipschitz bound)

so one gradient pass over S certifies every value of that subset, whatever solver, precision
or device produced theta (McConnell, Mehlhorn, Naeher & Schweitzer, *Certifying algorithms*,
2011). The Verifier's check is :func:`protocol.witness.check_witnesses`.

**What a certifiable object has** (:class:`Certifiable`), parameters as rows of a (K, P)
float64 matrix, one row per subset:

* ``mu: float``: the strong-convexity modulus of every L_S (e.g. the L2 weight when every
  parameter, the intercept included, is penalised and the rest of the loss is convex);
* ``n_params: int``: P;
* ``gradients(theta (K, P), masks (K, N) bool) -> (K, P)``: grad L_S(theta), in float64;
* ``outputs(theta (K, P)) -> (K, Z)``: f on the targets from parameters, clipped to [-b, b];
* ``output_lipschitz() -> (Z,)``: L_z with |f_z(a) - f_z(b)| <= L_z ||a - b||_2 for all a, b
  (clipping is 1-Lipschitz, so a bound on the raw output serves);
* ``witnesses(masks, seeds, value_bound) -> (K, P)``: the Prover's solver: parameters whose
  per-value bound L_z ||grad|| / mu is at most ``value_bound`` where float64 allows.

Optional, for a rigorous account of the Verifier's own rounding (zero when absent):
``gradient_error(theta, masks) -> (K,)`` bounds the error of the computed gradient's norm, and
``output_error(theta) -> (K, Z)`` that of the computed outputs. An object may instead offer
``gradient_norm_bounds(theta, masks) -> (K,)`` (norm and rounding in one pass), which
:func:`gradient_norm_bounds` prefers.

A task declares the extension by a method ``certifiable() -> Certifiable | None``
(:class:`protocol.tasks.base.TaskBase` returns None); :func:`certifiable_of` reads and
validates it.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from protocol.errors import TaskError

__all__ = [
    "Certifiable",
    "certifiable_of",
    "gradient_norm_bounds",
    "output_errors",
]

FloatArray = NDArray[np.float64]


@runtime_checkable
class Certifiable(Protocol):
    """A strongly convex objective with outputs at its optimum (module doc)."""

    mu: float
    n_params: int

    def gradients(self, theta: FloatArray, masks: NDArray[np.bool_]) -> FloatArray: ...

    def outputs(self, theta: FloatArray) -> FloatArray: ...

    def output_lipschitz(self) -> FloatArray: ...

    def witnesses(
        self, masks: NDArray[np.bool_], seeds: NDArray[np.uint64], value_bound: float
    ) -> FloatArray: ...


def certifiable_of(task: object) -> Certifiable | None:
    """The task's certifiable extension, validated, or None if it declares none.

    Refuses (:class:`TaskError`) an extension without the contract's members, or with a
    modulus that is not a finite number > 0 or a parameter count that is not an int >= 1.
    """
    getter = getattr(task, "certifiable", None)
    cert = getter() if callable(getter) else None
    if cert is None:
        return None
    name = getattr(task, "name", type(task).__name__)
    if not isinstance(cert, Certifiable):
        raise TaskError(f"task {name!r}: its certifiable() lacks part of the contract")
    mu = cert.mu
    if not (isinstance(mu, int | float) and math.isfinite(mu) and mu > 0):
        raise TaskError(f"task {name!r} declares mu = {mu!r}; need a finite mu > 0")
    if not isinstance(cert.n_params, int | np.integer) or cert.n_params < 1:
        raise TaskError(f"task {name!r} declares n_params = {cert.n_params!r}")
    return cert


def _rows(name: str, arr: Any, shape: tuple[int, ...]) -> FloatArray:
    out = np.asarray(arr, dtype=np.float64)
    if out.shape != shape:
        raise TaskError(f"{name} returned shape {out.shape}, expected {shape}")
    return out


def gradient_norm_bounds(
    cert: Certifiable, theta: FloatArray, masks: NDArray[np.bool_]
) -> FloatArray:
    """(K,) upper bounds on ||grad L_S(theta)||_2: the computed norm plus the object's rounding
    allowance (module doc). NaN or infinite gradients give +inf (never certified)."""
    k = theta.shape[0]
    fused = getattr(cert, "gradient_norm_bounds", None)
    if callable(fused):
        out = _rows("gradient_norm_bounds", fused(theta, masks), (k,))
    else:
        grad = _rows("gradients", cert.gradients(theta, masks), (k, cert.n_params))
        out = np.linalg.norm(grad, axis=1)
        err = getattr(cert, "gradient_error", None)
        if callable(err):
            out = out + np.abs(_rows("gradient_error", err(theta, masks), (k,)))
    return np.where(np.isfinite(out), out, np.inf)


def output_errors(cert: Certifiable, theta: FloatArray, shape: tuple[int, int]) -> FloatArray:
    """(K, Z) bounds on the rounding error of the computed outputs (zeros if not declared)."""
    err = getattr(cert, "output_error", None)
    if not callable(err):
        return np.zeros(shape)
    return np.abs(_rows("output_error", err(theta), shape))
