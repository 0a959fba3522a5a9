"""L2-regularised multinomial logistic regression as a certifiable problem (float64, numpy).

The objective, for a subset S of the pool (x_i with a constant 1 appended as the bias input,
so the intercept is a row of W and is penalised like every other parameter):

    L_S(W) = sum_{i in S} CE(W^T x_i, y_i) + (l2 / 2) ||W||_F^2,       W: (D, C)

CE is convex in the logits and the logits are linear in W, so L_S is l2-strongly convex:
**mu = l2**, for every S (the sum, not the mean, so |S| does not enter). Parameters travel as
theta = W.reshape(-1) (row-major: theta[d C + c] = W[d, c]), P = D C.

**Output** f_z = the correct-class margin w_y . x_z - max_{c != y} w_c . x_z, clipped to
[-b, b]. Its Lipschitz bound: for a change Delta W,
|Delta f_z| <= |Delta w_y . x_z| + max_{c != y} |Delta w_c . x_z|  (max is 1-Lipschitz)
<= ||x_z|| (||Delta w_y|| + max_c ||Delta w_c||) <= sqrt(2) ||x_z|| ||Delta W||_F
(Cauchy-Schwarz on the two terms), so **L_z = sqrt(2) ||x_z||_2** with the bias input
included; clipping does not increase it.

**Rounding** of the Verifier's own float64 computation (u = 2^-53, gamma_k = k u / (1 - k u),
bounds that hold for any summation order): a logit x . w_c is off by at most
gamma_D ||x|| ||w_c|| (Cauchy-Schwarz on sum |x_d w_dc|); the softmax then by a factor
exp(2 dz + (C + 4) u) - 1 of p; the residual r = p - y adds u |r|; the product X^T R adds
gamma_n |X|^T |R|; the penalty and the sum 2 u (|g| + l2 |w|). The norm of that componentwise
bound, with 1 % for its own rounding, is added to ||g|| (:meth:`gradient_norm_bounds`), and
2 gamma_D ||x_z|| max_c ||w_c|| + u |f| to each output (:meth:`output_error`).

**Solver** (the Prover's, :meth:`witnesses` and :meth:`polish`): Newton's method with the
Newton system solved by preconditioned conjugate gradients, batched over models (one
Hessian-vector product costs two GEMMs, like a gradient), preconditioned by the exact inverse
Hessian at the full pool's optimum with every point weighted p (Jacobi when P > 2,000), and a
step halved while the objective would rise.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protocol.checks import as_mask_matrix
from protocol.errors import InvalidParameterError, ShapeError

__all__ = ["MultinomialProblem", "PolishReport"]

FloatArray = NDArray[np.float64]
_U = 2.0**-53


def _gamma(k: int) -> float:
    return k * _U / (1.0 - k * _U)


@dataclass
class PolishReport:
    """What :meth:`MultinomialProblem.polish` spent: Newton steps, gradient passes and
    Hessian-vector products (each about one gradient pass), per call."""

    newton_steps: int = 0
    gradient_passes: int = 0
    hessian_products: int = 0
    gradient_norms: FloatArray = field(default_factory=lambda: np.zeros(0))


class MultinomialProblem:
    """The objective, outputs and solver of module doc.

    ``x_pool`` (N, D) and ``x_targets`` (Z, D) float64 with the bias input already appended;
    ``y_pool`` (N,), ``y_targets`` (Z,) int labels in [0, C); ``l2`` > 0; ``bound`` b.
    """

    def __init__(
        self,
        x_pool: FloatArray,
        y_pool: NDArray[np.int64],
        x_targets: FloatArray,
        y_targets: NDArray[np.int64],
        l2: float,
        bound: float,
        n_classes: int | None = None,
        p: float = 0.5,
    ) -> None:
        self.x = np.ascontiguousarray(x_pool, dtype=np.float64)
        self.xt = np.ascontiguousarray(x_targets, dtype=np.float64)
        if self.x.ndim != 2 or self.xt.ndim != 2 or self.x.shape[1] != self.xt.shape[1]:
            raise ShapeError(f"features of shapes {self.x.shape} and {self.xt.shape}")
        if not (np.isfinite(self.x).all() and np.isfinite(self.xt).all()):
            raise InvalidParameterError("features must be finite")
        self.y = np.asarray(y_pool, dtype=np.int64)
        self.yt = np.asarray(y_targets, dtype=np.int64)
        c = int(n_classes if n_classes is not None else max(self.y.max(), self.yt.max()) + 1)
        labels = np.concatenate([self.y, self.yt])
        if c < 2 or labels.min() < 0 or labels.max() >= c:
            raise InvalidParameterError(f"labels must lie in [0, {c}) with at least 2 classes")
        if not (math.isfinite(l2) and l2 > 0 and math.isfinite(bound) and bound > 0):
            raise InvalidParameterError("need l2 > 0 and bound > 0")
        self.n_classes, self.l2, self.bound, self.p = c, float(l2), float(bound), float(p)
        self.n, self.d = self.x.shape
        self.n_params = self.d * c
        self.mu = self.l2
        self._onehot = np.eye(c)[self.y][:, None, :]  # (n, 1, C)
        self._absx = np.abs(self.x)
        self._xnorm = np.linalg.norm(self.x, axis=1)  # (n,)
        self._xtnorm = np.linalg.norm(self.xt, axis=1)  # (Z,)
        self._precond: tuple[str, FloatArray] | None = None
        self._start: FloatArray | None = None
        # The Prover's first solver (a task's own, e.g. digits-logreg's L-BFGS): masks (K, N)
        # -> theta (K, P); None starts every model from the full-pool optimum.
        self.warm_solver: Callable[[NDArray[np.bool_]], FloatArray] | None = None

    # -- shapes -----------------------------------------------------------------------------
    def _theta(self, theta: FloatArray) -> FloatArray:
        t = np.asarray(theta, dtype=np.float64)
        if t.ndim != 2 or t.shape[1] != self.n_params:
            raise ShapeError(f"theta of shape {t.shape}; need (K, {self.n_params})")
        return t

    def _masks(self, masks: NDArray[np.bool_], k: int) -> FloatArray:
        m = as_mask_matrix(masks, self.n)
        if m.shape[0] != k:
            raise ShapeError(f"{m.shape[0]} masks for {k} parameter rows")
        return np.ascontiguousarray(m.T, dtype=np.float64)[:, :, None]  # (n, K, 1)

    def _logits(self, x: FloatArray, theta: FloatArray) -> FloatArray:
        """(rows, K, C) logits of the K models on inputs x (rows, D)."""
        k = theta.shape[0]
        w = theta.reshape(k, self.d, self.n_classes).transpose(1, 0, 2).reshape(self.d, -1)
        return (x @ w).reshape(x.shape[0], k, self.n_classes)

    def _back(self, r: FloatArray, absolute: bool = False) -> FloatArray:
        """X^T R for R (n, K, C) -> (K, P) (|X|^T R with ``absolute``)."""
        k = r.shape[1]
        x = self._absx if absolute else self.x
        g = x.T @ r.reshape(self.n, -1)
        return np.ascontiguousarray(
            g.reshape(self.d, k, self.n_classes).transpose(1, 0, 2).reshape(k, -1)
        )

    @staticmethod
    def _softmax(z: FloatArray) -> FloatArray:
        e = np.exp(z - z.max(axis=2, keepdims=True))
        return np.asarray(e / e.sum(axis=2, keepdims=True))

    # -- the contract -----------------------------------------------------------------------
    def objective(self, theta: FloatArray, masks: NDArray[np.bool_]) -> FloatArray:
        """L_S(theta) for each row, (K,)."""
        t = self._theta(theta)
        m = self._masks(masks, len(t))[:, :, 0]
        z = self._logits(self.x, t)
        top = z.max(axis=2, keepdims=True)
        lse = (np.log(np.exp(z - top).sum(axis=2, keepdims=True)) + top)[:, :, 0]
        true = np.take_along_axis(z, self.y[:, None, None].repeat(len(t), 1), axis=2)[:, :, 0]
        return np.asarray(((lse - true) * m).sum(0) + 0.5 * self.l2 * (t * t).sum(1))

    def gradients(self, theta: FloatArray, masks: NDArray[np.bool_]) -> FloatArray:
        """grad L_S(theta), (K, P) float64."""
        t = self._theta(theta)
        m = self._masks(masks, len(t))
        prob = self._softmax(self._logits(self.x, t))
        return self._back((prob - self._onehot) * m) + self.l2 * t

    def gradient_norm_bounds(self, theta: FloatArray, masks: NDArray[np.bool_]) -> FloatArray:
        """(K,) ||grad L_S(theta)|| plus the rounding allowance of module doc, in one pass."""
        t = self._theta(theta)
        k = len(t)
        m = self._masks(masks, k)
        prob = self._softmax(self._logits(self.x, t))
        resid = (prob - self._onehot) * m
        grad = self._back(resid) + self.l2 * t
        wnorm = np.linalg.norm(t.reshape(k, self.d, self.n_classes), axis=1).max(axis=1)  # (K,)
        dz = _gamma(self.d) * self._xnorm[:, None] * wnorm[None, :]  # (n, K)
        dp = prob * np.expm1(2.0 * dz + (self.n_classes + 4) * _U)[:, :, None]
        err_r = (dp + _U * np.abs(resid)) * m + _gamma(self.n) * np.abs(resid)
        err = self._back(err_r, absolute=True) + 2.0 * _U * (np.abs(grad) + self.l2 * np.abs(t))
        return np.asarray(np.linalg.norm(grad, axis=1) + 1.01 * np.linalg.norm(err, axis=1))

    def raw_outputs(self, theta: FloatArray) -> FloatArray:
        """Unclipped correct-class margins on the targets, (K, Z)."""
        z = self._logits(self.xt, self._theta(theta))  # (Z, K, C)
        k = z.shape[1]
        idx = self.yt[:, None, None].repeat(k, 1)
        true = np.take_along_axis(z, idx, axis=2)[:, :, 0]
        np.put_along_axis(z, idx, -np.inf, axis=2)
        return np.ascontiguousarray((true - z.max(axis=2)).T)

    def outputs(self, theta: FloatArray) -> FloatArray:
        """f on the targets, (K, Z), clipped to [-b, b]."""
        return np.clip(self.raw_outputs(theta), -self.bound, self.bound)

    def output_error(self, theta: FloatArray) -> FloatArray:
        """(K, Z) rounding bound of :meth:`outputs` (module doc)."""
        t = self._theta(theta)
        k = len(t)
        wnorm = np.linalg.norm(t.reshape(k, self.d, self.n_classes), axis=1).max(axis=1)
        f = np.abs(self.outputs(t))
        return np.asarray(2.0 * _gamma(self.d) * wnorm[:, None] * self._xtnorm[None, :] + _U * f)

    def output_lipschitz(self) -> FloatArray:
        """(Z,) L_z = sqrt(2) ||x_z|| (module doc)."""
        return np.asarray(math.sqrt(2.0) * self._xtnorm)

    # -- the Prover's solver ----------------------------------------------------------------
    def gradient_tolerance(self, value_bound: float) -> float:
        """The gradient norm at which every per-value bound L_z ||g|| / mu is <= value_bound."""
        return float(value_bound * self.mu / max(float(self.output_lipschitz().max()), 1e-300))

    def hessian(self, theta: FloatArray, weights: FloatArray) -> FloatArray:
        """The exact (P, P) Hessian of one model (theta (P,)) with per-point weights (n,)."""
        c, d = self.n_classes, self.d
        prob = self._softmax(self._logits(self.x, theta[None]))[:, 0, :]  # (n, C)
        xw = self.x * weights[:, None]
        h = np.zeros((d, c, d, c))
        for j in range(c):
            h[:, j, :, j] = (xw * prob[:, j : j + 1]).T @ self.x
        v = (self.x[:, :, None] * prob[:, None, :]).reshape(self.n, d * c)
        hess = h.reshape(d * c, d * c) - (v * weights[:, None]).T @ v
        return np.asarray(hess + self.l2 * np.eye(d * c))

    def full_pool_start(self) -> FloatArray:
        """The optimum with every pool point weighted p, (P,): the warm start (cached)."""
        if self._start is None:
            w = np.full(self.n, self.p)
            theta = np.zeros(self.n_params)
            for _ in range(100):
                prob = self._softmax(self._logits(self.x, theta[None]))
                g = self._back((prob - self._onehot) * w[:, None, None])[0] + self.l2 * theta
                step = np.linalg.solve(self.hessian(theta, w), g)
                theta = theta - step
                if np.max(np.abs(step)) < 1e-13 * max(1.0, np.max(np.abs(theta))):
                    break
            self._start = theta
        return self._start

    def _preconditioner(self) -> tuple[str, FloatArray]:
        if self._precond is None:
            theta = self.full_pool_start()
            w = np.full(self.n, self.p)
            if self.n_params <= 2000:
                inv = np.asarray(np.linalg.inv(self.hessian(theta, w)), dtype=np.float64)
                self._precond = ("dense", inv)
            else:
                prob = self._softmax(self._logits(self.x, theta[None]))[:, 0, :]
                diag = (self.x**2 * w[:, None]).T @ (prob * (1 - prob))  # (D, C)
                self._precond = ("diag", np.asarray(1.0 / (diag.reshape(-1) + self.l2)))
        return self._precond

    def _apply_precond(self, r: FloatArray) -> FloatArray:
        kind, m = self._preconditioner()
        return np.asarray(r @ m.T if kind == "dense" else r * m[None, :])

    def _hvp(self, prob: FloatArray, m: FloatArray, v: FloatArray) -> FloatArray:
        """Hessian-vector products (K, P) at the models whose probabilities are ``prob``."""
        a = self._logits(self.x, v)
        pa = prob * a
        hv = (pa - prob * pa.sum(axis=2, keepdims=True)) * m
        return self._back(hv) + self.l2 * v

    def polish(
        self,
        theta: FloatArray,
        masks: NDArray[np.bool_],
        gradient_tol: float,
        *,
        max_newton: int = 8,
        cg_tol: float = 1e-4,
        max_cg: int = 60,
    ) -> tuple[FloatArray, PolishReport]:
        """Newton-PCG from ``theta`` (K, P) until each row's ||grad|| <= ``gradient_tol`` (or
        stops falling): the polished rows and what it cost (module doc)."""
        t = self._theta(theta).copy()
        k = len(t)
        m = self._masks(masks, k)
        rep = PolishReport()
        obj = self.objective(t, masks)
        stalled = np.zeros(k, dtype=bool)
        gnorm = np.full(k, np.inf)
        for _ in range(max_newton + 1):
            prob = self._softmax(self._logits(self.x, t))
            g = self._back((prob - self._onehot) * m) + self.l2 * t
            rep.gradient_passes += 1
            new_norm = np.linalg.norm(g, axis=1)
            stalled |= (new_norm >= 0.5 * gnorm) & (new_norm < 1e-7)  # at the rounding floor
            gnorm = new_norm
            act = np.flatnonzero((gnorm > gradient_tol) & ~stalled)
            if len(act) == 0 or rep.newton_steps >= max_newton:
                break
            rep.newton_steps += 1
            step = self._pcg(prob[:, act], m[:, act], g[act], cg_tol, max_cg, rep)
            scale = np.ones(len(act))
            for _half in range(30):
                trial = t[act] - scale[:, None] * step
                f_new = self.objective(trial, masks[act])
                bad = f_new > obj[act] + 1e-12 * np.abs(obj[act])
                if not bad.any():
                    break
                scale = np.where(bad, scale * 0.5, scale)
            t[act] = trial
            obj[act] = f_new
        rep.gradient_norms = gnorm
        return t, rep

    def _pcg(
        self, prob: FloatArray, m: FloatArray, g: FloatArray, tol: float, iters: int,
        rep: PolishReport,
    ) -> FloatArray:  # fmt: skip
        """Batched preconditioned CG for H x = g, each column to ||r|| <= tol ||g||."""
        x = np.zeros_like(g)
        r = g.copy()
        z = self._apply_precond(r)
        p = z.copy()
        rz = (r * z).sum(1)
        goal = tol * np.linalg.norm(g, axis=1)
        for _ in range(iters):
            live = np.linalg.norm(r, axis=1) > goal
            if not live.any():
                break
            hp = self._hvp(prob, m, p)
            rep.hessian_products += 1
            php = (p * hp).sum(1)
            alpha = np.where(live & (php > 0), rz / np.where(php > 0, php, 1.0), 0.0)
            x += alpha[:, None] * p
            r -= alpha[:, None] * hp
            z = self._apply_precond(r)
            rz_new = (r * z).sum(1)
            beta = np.where(live, rz_new / np.where(rz != 0, rz, 1.0), 0.0)
            p = z + beta[:, None] * p
            rz = rz_new
        return x

    def witnesses(
        self, masks: NDArray[np.bool_], seeds: NDArray[np.uint64], value_bound: float
    ) -> FloatArray:
        """From the full-pool warm start, polished until every per-value bound is <=
        ``value_bound`` (seeds are unused: the optimum does not depend on them)."""
        m = as_mask_matrix(masks, self.n)
        if self.warm_solver is not None:
            start = np.asarray(self.warm_solver(m), dtype=np.float64)
        else:
            start = np.repeat(self.full_pool_start()[None], len(m), axis=0)
        theta, _ = self.polish(start, m, self.gradient_tolerance(value_bound), max_newton=20)
        return theta

    def with_l2(self, l2: float) -> MultinomialProblem:
        """The same data and outputs under another L2 weight (its own caches)."""
        other = copy.copy(self)
        other.l2 = other.mu = float(l2)
        other._precond, other._start = None, None
        return other

    def spec(self) -> dict[str, Any]:
        """The objective part of a task's spec."""
        return {
            "objective": "sum CE + 0.5 l2 |W|^2, every parameter penalised (bias included)",
            "l2": self.l2, "mu": self.mu, "classes": self.n_classes,
            "output": "correct-class margin at the exact optimum",
        }  # fmt: skip
