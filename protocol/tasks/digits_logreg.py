"""``digits-logreg``: multinomial logistic regression on the digits split
(:mod:`protocol.tasks.digits_data`: pool, targets, f and the probe set).

Objective (scikit-learn's, C = 1/l2) ``0.5 l2 ||W_features||^2 + sum_{i in x} CE_i`` with an
unpenalised intercept. Convex, one optimum; solved per model by preconditioned L-BFGS (memory 5,
a fixed number of iterations, a monotone safeguard that halves a model's step when its objective
would rise), started from and preconditioned by the full-pool solution at weight p (its exact
Hessian H0, so one L-BFGS step on a typical subset is close to a Newton step). Models sit in the
columns of one (65 * 10, K) matrix, so the forward and backward passes are two large GEMMs over
all K models.

``dtype="float64"`` (the default) runs anywhere with a declared tau of 1e-9: the convex
problem has one optimum, and honest runs of one (mask, seed) differ by rounding only (measured
5e-14 between batch positions; 4e-13 with other GEMM shapes, thread counts and inputs moved by
one unit in the last place), so 1e-9 is 2,500x the largest difference seen and costs the
certificate nothing measurable. ``dtype="float32"`` is ~20 % faster on CPU but differs by up to
3e-4 between code paths; it declares tau = 1e-3, which the decision must charge on every value.

The task carries the differentiable extension Daunce uses (``full_model``,
``example_gradients``, ``example_losses``, ``finetune``), with models as columns of a (P, K)
parameter matrix.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from protocol.errors import InvalidParameterError
from protocol.tasks.certified_logreg import certified_chunk, certified_problem, certified_spec
from protocol.tasks.digits_data import N_CLASSES, N_POOL, N_TARGETS, load_digits_split
from protocol.tasks.multinomial import MultinomialProblem
from protocol.tasks.trained import TrainedTask, correct_class_margin

__all__ = ["DigitsLogReg"]

# Declared CHECKEQUIV tolerance, ~3x (float32) and ~2,500x (float64) the largest difference
# measured between honest runs (batch, position, threads, instruction set, inputs moved by one
# unit in the last place): 3e-4 in float32, 4e-13 in float64. See docs/training.md.
_DEFAULT_TAU = {"float32": 1e-3, "float64": 1e-9}


def _softmax_rows(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _full_pool_newton(
    x: NDArray[np.float64], y: NDArray[np.int64], weight: float, l2: float, iters: int = 50
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Newton's method in float64 on the pool with every point weighted ``weight``.

    Returns W (D, C) and the Hessian (D C, D C) at W, with the softmax's gauge direction
    (the same intercept added to every class) given curvature 1 so the Hessian is invertible.
    """
    n, d = x.shape
    c = N_CLASSES
    onehot = np.eye(c)[y]
    reg = np.full(d, l2)
    reg[-1] = 0.0
    gauge = np.zeros((d, c))
    gauge[-1] = 1.0 / np.sqrt(c)
    gauge_v = gauge.reshape(-1)
    w = np.zeros((d, c))
    hess = np.eye(d * c)
    for _ in range(iters):
        p = _softmax_rows(x @ w)
        grad = weight * x.T @ (p - onehot) + reg[:, None] * w
        xw = x * weight
        hess = np.zeros((d, c, d, c))
        for k in range(c):
            hess[:, k, :, k] = (xw * p[:, k : k + 1]).T @ x
        v = (x[:, :, None] * p[:, None, :]).reshape(n, d * c)
        hess = hess.reshape(d * c, d * c) - (v * weight).T @ v
        hess += np.diag(np.repeat(reg, c)) + np.outer(gauge_v, gauge_v)
        step = np.linalg.solve(hess, grad.reshape(-1)).reshape(d, c)
        w -= step
        if np.max(np.abs(step)) < 1e-12:
            break
    return w, hess


class DigitsLogReg(TrainedTask):
    """``digits-logreg`` (module doc)."""

    name = "digits-logreg"
    n_train = N_POOL
    n_targets = N_TARGETS

    def __init__(
        self,
        l2: float = 1.0,
        iters: int = 18,
        memory: int = 5,
        p: float = 0.5,
        bound: float = 16.0,
        tau: float | None = None,
        chunk_size: int = 256,
        device: str | None = None,
        dtype: str = "float64",
        certifiable: int = 0,
    ) -> None:
        super().__init__(device, chunk_size)
        tau = _DEFAULT_TAU.get(dtype, 0.0) if tau is None else tau
        if certifiable not in (0, 1):
            raise InvalidParameterError("digits-logreg: certifiable must be 0 or 1")
        self.certified = bool(certifiable)  # the convex witness route (certified_logreg.py)
        if not (l2 > 0 and iters >= 1 and memory >= 1 and 0 < p < 1 and bound > 0 and tau >= 0):
            raise InvalidParameterError("digits-logreg: need l2 > 0, iters, memory >= 1, 0<p<1")
        if dtype not in ("float32", "float64"):
            raise InvalidParameterError(
                f"digits-logreg: dtype must be float32 or float64; got {dtype!r}"
            )
        self.dtype = dtype
        self.l2, self.iters, self.memory, self.p = float(l2), int(iters), int(memory), float(p)
        self.bound, self.tau = float(bound), float(tau)
        data = load_digits_split()
        self.data = data
        dev, f32 = self.device, getattr(torch, dtype)
        self._d, self._c = data.x_pool.shape[1], N_CLASSES
        self._x = torch.tensor(data.x_pool, dtype=f32, device=dev)
        self._labels = torch.tensor(data.y_pool, device=dev)
        self._onehot = torch.nn.functional.one_hot(self._labels, N_CLASSES).to(f32)[:, :, None]
        self._xt = torch.tensor(data.x_targets, dtype=f32, device=dev)
        self._yt = torch.tensor(data.y_targets, device=dev)
        self._xp = torch.tensor(data.x_probes, dtype=f32, device=dev)
        self._start: tuple[torch.Tensor, torch.Tensor] | None = None  # (w0, H0^-1), on first use
        reg = torch.full((self._d, self._c), self.l2)
        reg[-1] = self.l2 if self.certified else 0.0  # certifiable: the intercept penalised too
        self._reg = reg.reshape(-1, 1).to(dev, f32)
        self._problem = certified_problem(self) if self.certified else None

    def _spec(self) -> dict[str, Any]:
        return {
            "task": self.name, "version": 1, **self.data.spec(),
            "features": "standardised by pool mean/sd, bias column",
            "model": "multinomial logistic regression", "objective": "0.5 l2 |W|^2 + sum CE",
            "l2": self.l2, "optimiser": "preconditioned L-BFGS, warm start at full pool",
            "iters": self.iters, "memory": self.memory, "p": self.p, "dtype": self.dtype,
            "output": "correct-class margin",
            **(certified_spec(self) if self.certified else {}),
        }  # fmt: skip

    def certifiable(self) -> MultinomialProblem | None:
        """The certifiable extension (:mod:`protocol.tasks.certified_logreg`) with
        ``certifiable=1``, else None."""
        return self._problem

    def _warm(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The warm start w0 (D C, 1) and preconditioner H0^-1 (D C, D C), computed on first
        use (a second of Newton's method: building the task, and ``serve``, stay fast)."""
        if self._start is None:
            w0, hess = _warm_start(self.l2, self.p)
            dtype = self._x.dtype
            self._start = (
                torch.tensor(w0.reshape(-1, 1), dtype=dtype, device=self.device),
                torch.tensor(np.linalg.inv(hess), dtype=dtype, device=self.device),
            )
        return self._start

    def _loss_grad(
        self,
        w: torch.Tensor,
        m: torch.Tensor,
        linear: torch.Tensor | None,
        work: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Objective (K,) and gradient (D C, K) of the K models w (D C, K) with pool weights
        m (N, K): f = sum_i m_i (logsumexp(z_i) - z_i,y_i) + 0.5 |W|^2_reg. ``work`` (N, C K)
        holds the logits; every pass over it is in place (five passes and two GEMMs per call;
        the residual m (p - onehot) is formed before the backward GEMM, never as a difference
        of two GEMMs, which would cancel in float32)."""
        n, d, c = self._x.shape[0], self._d, self._c
        k = w.shape[1]
        flat = torch.mm(self._x, w.view(d, c * k), out=work)
        z = flat.view(n, c, k)
        z.sub_(z.amax(1, keepdim=True))
        labels = self._labels.view(n, 1, 1).expand(n, 1, k)
        true = z.gather(1, labels).squeeze(1)
        e = z.exp_()
        s = e.sum(1, keepdim=True)
        reg_w = self._reg * w
        f = ((s.squeeze(1).log() - true) * m).sum(0) + 0.5 * (reg_w * w).sum(0)
        e.mul_(m[:, None, :] / s)  # m p
        e.scatter_add_(1, labels, -m[:, None, :])  # m (p - onehot)
        g = torch.mm(self._x.T, flat).view(d * c, k).add_(reg_w)
        if linear is not None:
            f = f + (linear * w).sum(0)
            g = g + linear
        return f, g

    def solve(
        self,
        weights: torch.Tensor,
        linear: torch.Tensor | None = None,
        start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Weights (D C, K) of K models (columns).

        ``weights`` (K, N): each pool example's weight in the loss (a 0/1 mask, or bootstrap
        counts); ``linear`` (D C, K): an optional linear term added to each objective (Daunce's
        perturbation); ``start`` (D C, K): a warm start other than the full-pool solution.
        """
        m = weights.T.to(self._x.dtype)
        k = m.shape[1]
        w0, h0inv = self._warm()
        w = w0.repeat(1, k) if start is None else start.to(self._x.dtype)
        work = torch.empty((self._x.shape[0], self._c * k), dtype=w.dtype, device=w.device)
        f, g = self._loss_grad(w, m, linear, work)
        step = torch.ones(k, device=w.device, dtype=w.dtype)
        hist: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for _ in range(self.iters):
            q = g.clone()
            alphas = []
            for s_i, y_i, rho_i in reversed(hist):
                a = rho_i * (s_i * q).sum(0)
                alphas.append(a)
                q -= a * y_i
            r = h0inv @ q
            for (s_i, y_i, rho_i), a in zip(hist, reversed(alphas), strict=True):
                r += s_i * (a - rho_i * (y_i * r).sum(0))
            w_new = w - step * r
            f_new, g_new = self._loss_grad(w_new, m, linear, work)
            ok = f_new <= f + 1e-4 * f.abs()
            s_vec, y_vec = w_new - w, g_new - g
            sy = (s_vec * y_vec).sum(0)
            good = ok & (sy > 1e-10)
            w = torch.where(ok, w_new, w)
            f = torch.where(ok, f_new, f)
            g = torch.where(ok, g_new, g)
            step = torch.where(ok, torch.ones_like(step), step * 0.5)
            zero = torch.zeros_like(s_vec)
            rho = torch.where(good, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
            hist.append((torch.where(good, s_vec, zero), torch.where(good, y_vec, zero), rho))
            hist = hist[-self.memory :]
        return w

    # -- the differentiable extension used by Daunce (prover_service.attribution) ----------
    def full_model(self) -> torch.Tensor:
        """The model trained on the whole pool, (D C, 1), solved tightly in float64."""
        w, _ = _full_pool_newton(self.data.x_pool, self.data.y_pool, 1.0, self.l2)
        return torch.tensor(w.reshape(-1, 1), dtype=self._x.dtype, device=self.device)

    def example_losses(self, w: torch.Tensor, which: str) -> torch.Tensor:
        """Cross-entropy of every model (columns of w) on the pool or the targets: (K, n)."""
        x, y = (self._x, self._labels) if which == "pool" else (self._xt, self._yt)
        logits = self.logits(w, x)
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, self._c), y.repeat(w.shape[1]), reduction="none"
        ).view(w.shape[1], -1)

    def example_gradients(self, w: torch.Tensor) -> torch.Tensor:
        """Per-example loss gradients on the pool at one model w (D C, 1): (N, D C)."""
        p = torch.softmax(self._x @ w.view(self._d, self._c), dim=1)
        resid = p - self._onehot[:, :, 0]
        return (self._x[:, :, None] * resid[:, None, :]).reshape(self._x.shape[0], -1)

    def finetune(
        self, weights: torch.Tensor, linear: torch.Tensor | None, start: torch.Tensor
    ) -> torch.Tensor:
        """Fine-tune copies of ``start`` (D C, 1) on weighted pools (K, N): (D C, K)."""
        return self.solve(weights, linear, start.repeat(1, weights.shape[0]))

    @property
    def probe_inputs(self) -> torch.Tensor:
        """The probes' inputs (P, D), as the models see them."""
        return self._xp

    def logits(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits (K, T, C) of the models in w (D C, K) on inputs x (T, D)."""
        k = w.shape[1]
        return (x @ w.view(self._d, self._c * k)).view(x.shape[0], self._c, k).permute(2, 0, 1)

    def train_chunk(
        self, masks: torch.Tensor, seeds: NDArray[np.uint64]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeds are unused: the optimum of a convex problem does not depend on them."""
        if self._problem is not None:
            return certified_chunk(self, self._problem, masks)
        w = self.solve(masks)
        return correct_class_margin(self.logits(w, self._xt), self._yt), self.logits(w, self._xp)


@cache
def _warm_start(l2: float, p: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    data = load_digits_split()
    return _full_pool_newton(data.x_pool, data.y_pool, p, l2)
