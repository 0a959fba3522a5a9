"""Cheating witnesses, made for the witness route (issue "Certified optimality", point 6).

Each attack returns parameters and values for every subset, consistent with each other unless
the attack is about the values; :func:`protocol.witness.check_witnesses` must reject every
subset it touches (their per-value bounds exceed any limit below the harm done):

============  ==================================================================================
``nearby``    theta*(S') for S' = S with one example added or removed (drawn per subset)
``early``     the solver stopped before polishing: the task's warm solver (digits-logreg's
              18 L-BFGS iterations) or the full-pool warm start, never Newton-polished
``scaled``    theta*(S) (1 + 1e-3)
``flat``      theta*(S) moved along the flattest Hessian direction that changes the outputs
              (the smallest eigenvector off the softmax's gauge directions), by as much as moves
              some output by ``shift``: the cheapest lie in gradient norm
``values``    theta*(S) honest, reported values moved by ``shift`` on every target
``l2``        the exact optimum for half the task's L2 weight (another regularisation)
============  ==================================================================================

The gradient-norm bound gives, for any theta, |f_z(theta) - f_z(theta*)| <= L_z ||theta -
theta*|| <= L_z ||grad|| / mu = tau_z: a lie that moves a value by more than the limit has a
tau above the limit. These attacks work on a
:class:`~protocol.tasks.multinomial.MultinomialProblem` (they need its solver and Hessian).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from protocol.errors import InvalidParameterError
from protocol.tasks.multinomial import MultinomialProblem

__all__ = ["WITNESS_ATTACKS", "flattest_direction", "tamper_witnesses"]

WITNESS_ATTACKS = ("nearby", "early", "scaled", "flat", "values", "l2")
FloatArray = NDArray[np.float64]
_FLOOR = 1e-10  # polish the attacker's own optima to the rounding floor


def flattest_direction(
    problem: MultinomialProblem, theta: FloatArray, mask: FloatArray
) -> FloatArray:
    """The unit eigenvector (P,) of the subset's Hessian at theta with the smallest eigenvalue
    off the gauge subspace {v 1^T} (adding one vector to every class changes no margin)."""
    d, c = problem.d, problem.n_classes
    hess = problem.hessian(theta, mask.astype(np.float64))
    gauge = np.kron(np.eye(d), np.ones((1, c)) / np.sqrt(c))  # (D, P): rows span the gauge
    q, _ = np.linalg.qr(np.eye(d * c) - gauge.T @ gauge)
    basis = q[:, : d * (c - 1)]  # an orthonormal basis of the complement
    vals, vecs = np.linalg.eigh(basis.T @ hess @ basis)
    return np.asarray(basis @ vecs[:, 0])


def tamper_witnesses(
    kind: str,
    problem: MultinomialProblem,
    theta: FloatArray,
    masks: NDArray[np.bool_],
    values: FloatArray,
    *,
    shift: float,
    rng: np.random.Generator,
) -> tuple[FloatArray, FloatArray]:
    """The attack ``kind`` (module doc) on honest witnesses theta (K, P) of masks (K, N) and
    their values (K, Z): the parameters and values to report."""
    if kind not in WITNESS_ATTACKS:
        raise InvalidParameterError(f"unknown witness attack {kind!r}; one of {WITNESS_ATTACKS}")
    t = np.array(theta, dtype=np.float64)
    m = np.asarray(masks, dtype=bool)
    if kind == "values":
        return t, np.clip(values + shift, -problem.bound, problem.bound)
    if kind == "scaled":
        t = t * (1.0 + 1e-3)
    elif kind == "early":
        if problem.warm_solver is not None:
            t = np.asarray(problem.warm_solver(m), dtype=np.float64)
        else:
            t = np.repeat(problem.full_pool_start()[None], len(m), axis=0)
    elif kind == "nearby":
        near = m.copy()
        flip = rng.integers(0, m.shape[1], size=len(m))
        near[np.arange(len(m)), flip] ^= True
        t, _ = problem.polish(t, near, _FLOOR)
    elif kind == "l2":
        t, _ = problem.with_l2(0.5 * problem.l2).polish(t, m, _FLOOR, max_newton=20)
    else:  # flat
        for i in range(len(t)):
            v = flattest_direction(problem, t[i], m[i])
            step = 1e-4
            slope = np.abs(problem.raw_outputs((t[i] + step * v)[None]) - values[i]).max() / step
            t[i] = t[i] + (shift / max(slope, 1e-300)) * v
    return t, problem.outputs(t)
