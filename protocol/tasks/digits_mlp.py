"""``digits-mlp``: a 64-128-10 ReLU network on the digits split
(:mod:`protocol.tasks.digits_data`: pool, targets, f and the probe set).

Seeded initialisation (uniform +-1/sqrt(fan_in)) and seeded minibatches (drawn with replacement
from the model's own subset), SGD with momentum and weight decay, a fixed number of steps;
batched with one (K, ., .) tensor per layer. Non-convex, so rounding differences grow through
training (7e-3 in float32 between two positions in one batch); it is therefore trained in
**exact arithmetic** (:mod:`protocol.tasks.exact`): inputs, weights, activations and gradients
enter each product on a dyadic grid (``_Grid``) small enough that every matrix product is exact
in float64, softmax uses an exp made of ``*`` and ``+``, and the rest is elementwise. The same
(mask, seed) gives the same bits on every CPU, thread count, batch and position (and on CUDA):
tau = 0.

Two implementations of the training loop give those bits: on CPU, one compiled loop that
trains each model in turn with its working set in cache (:mod:`protocol.tasks.mlp_kernels`,
numba; twice the speed of the other or more); elsewhere, or with ``VDA_MLP_KERNELS=torch``, the
chain of torch operations of :meth:`DigitsMLP._sgd`, which defines the order of operations.

The task carries the differentiable extension Daunce uses (``full_model``,
``example_gradients``, ``example_losses``, ``finetune``), with models as columns of a (P, K)
parameter matrix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from protocol.errors import InvalidParameterError
from protocol.tasks import mlp_kernels
from protocol.tasks.digits_data import N_CLASSES, N_POOL, N_TARGETS, load_digits_split
from protocol.tasks.exact import (
    EXACT_BITS_FLOAT32,
    check_exact_product,
    check_float32_matmul_exact,
    exp_nonpositive,
    exp_terms,
    floor_log2,
    pow2,
    representable,
    to_units,
    unit_bits,
)
from protocol.tasks.trained import TrainedTask, correct_class_margin, splitmix64

__all__ = ["DigitsMLP"]


def _uniform(seeds: NDArray[np.uint64], tag: int, count: int) -> NDArray[np.float64]:
    """(K, count) uniforms in [0, 1) from splitmix64(splitmix64(seed ^ tag) + i)."""
    base = splitmix64(np.asarray(seeds, dtype=np.uint64) ^ np.uint64(tag))
    with np.errstate(over="ignore"):
        h = splitmix64(base[:, None] + np.arange(count, dtype=np.uint64)[None, :])
    return np.asarray((h >> np.uint64(11)).astype(np.float64) / 2.0**53)


@dataclass(frozen=True)
class _Grid:
    """The dyadic grids of ``digits-mlp``'s exact products: value = units * 2^-frac, |value| <=
    limit, in float32. The bit budget of every product (24 bits: float32 holds every integer
    up to 2^24) is checked when the task is built (:meth:`check`); ``dz_bits`` and ``d_frac``
    follow from the batch size so that the budgets stay within 24 bits:

    ======================  ====================================  ===========================
    product                 inputs (bits)                         bits: a + b + log2(inner)
    ======================  ====================================  ===========================
    layer 1  X W1           x 7 (2^-3, |x| <= 16), W1 10 (2^-10,  7 + 10 + log2 65 = 23.0
                            |w| <= 1)
    layer 2  H W2 (+ bias)  h 8 (2^-4, 0 <= h <= 16), W2 8        8 + 8 + log2 129 = 23.0
                            (2^-9, |w| <= 1/2)
    softmax sum             e 20 (2^-20, 0 <= e <= 1)              20 + log2 10 = 23.3
    dW2  H^T D              h 8, d 10 (2^-10, |p - y| <= 1)       8 + 10 + log2 64 = 24
    dH   D W2^T             d 10, W2 8                            10 + 8 + log2 10 = 21.3
    dW1  X^T dZ             x 7, dz 11 (per model and step: the   7 + 11 + log2 64 = 24
                            leading 11 bits of its largest |dz|)
    ======================  ====================================  ===========================

    (bits for the defaults hidden = 128, batch = 64). Hidden gradients span many orders of
    magnitude during training, so their grid is chosen per model and step (block floating
    point, :func:`protocol.tasks.exact.floor_log2`); every other grid is fixed."""

    x_frac: int = 3  # inputs (standardised pixels; 18 of the pool's 95,808 exceed 16)
    x_limit: float = 16.0
    w_frac: int = 10  # first-layer weights (the copy used in products; masters stay float32)
    w_limit: float = 1.0
    w2_frac: int = 9  # second-layer weights
    w2_limit: float = 0.5
    h_frac: int = 4  # hidden activations
    h_limit: float = 16.0
    e_frac: int = 20  # softmax numerators exp(z - max z) in [0, 1]
    d_max_frac: int = 10  # output gradients p - onehot in [-1, 1] (the 1/batch is a scale)

    @property
    def x_bits(self) -> float:
        return unit_bits(self.x_frac, self.x_limit)

    @property
    def w1_bits(self) -> float:
        return unit_bits(self.w_frac, self.w_limit)

    @property
    def w2_bits(self) -> float:
        return unit_bits(self.w2_frac, self.w2_limit)

    @property
    def h_bits(self) -> float:
        return unit_bits(self.h_frac, self.h_limit)

    def d_frac(self, batch: int) -> int:
        """Output-gradient grid: as fine as dW2's budget allows, at most 2^-d_max_frac."""
        return min(self.d_max_frac, math.floor(EXACT_BITS_FLOAT32 - self.h_bits - math.log2(batch)))

    def dz_bits(self, batch: int) -> int:
        """Leading bits kept of each model's hidden gradients: what dW1's budget allows."""
        return math.floor(EXACT_BITS_FLOAT32 - self.x_bits - math.log2(batch))

    def check(self, hidden: int, batch: int) -> None:
        """Refuse a configuration whose products could round (table above)."""
        if self.dz_bits(batch) < 4 or self.d_frac(batch) < 4:
            raise InvalidParameterError(
                f"digits-mlp: batch {batch} leaves fewer than 4 bits for exact gradients"
            )
        d_bits = float(self.d_frac(batch))
        for name, a, b, inner in (
            ("layer 1", self.x_bits, self.w1_bits, 65),
            ("layer 2", self.h_bits, self.w2_bits, hidden + 1),
            ("softmax sum", float(self.e_frac), 0.0, N_CLASSES),
            ("dW2", self.h_bits, d_bits, batch),
            ("dH", d_bits, self.w2_bits, N_CLASSES),
            ("dW1", self.x_bits, float(self.dz_bits(batch)), batch),
        ):
            check_exact_product(f"digits-mlp {name}", a, b, inner, EXACT_BITS_FLOAT32)

    def as_dict(self, batch: int) -> dict[str, float]:
        return dict(
            sorted(
                {
                    **asdict(self),
                    "d_frac": self.d_frac(batch),
                    "dz_bits": self.dz_bits(batch),
                }.items()
            )
        )


_MLP_GRID = _Grid()
_F32 = torch.float32


class DigitsMLP(TrainedTask):
    """``digits-mlp`` (module doc): trained in exact arithmetic (:mod:`protocol.tasks.exact`)."""

    name = "digits-mlp"
    n_train = N_POOL
    n_targets = N_TARGETS

    def __init__(
        self,
        hidden: int = 128,
        steps: int = 300,
        batch: int = 64,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        bound: float = 30.0,
        tau: float = 0.0,
        chunk_size: int = 64,
        device: str | None = None,
        finetune_steps: int = 100,
    ) -> None:
        super().__init__(device, chunk_size)
        if not (hidden >= 1 and steps >= 1 and batch >= 1 and lr > 0 and bound > 0 and tau >= 0):
            raise InvalidParameterError("digits-mlp: need hidden, steps, batch >= 1, lr, bound > 0")
        self.hidden, self.steps, self.batch = int(hidden), int(steps), int(batch)
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.bound, self.tau = float(bound), float(tau)
        self.finetune_steps = int(finetune_steps)
        g = _MLP_GRID
        g.check(self.hidden, self.batch)
        self.data = load_digits_split()
        dev = self.device

        def units(x: NDArray[np.float64]) -> torch.Tensor:
            return to_units(torch.tensor(x, dtype=_F32, device=dev), g.x_frac, g.x_limit)

        self._xu, self._xtu, self._xpu = (
            units(self.data.x_pool), units(self.data.x_targets), units(self.data.x_probes)
        )  # fmt: skip
        self._y = torch.tensor(self.data.y_pool, device=dev)
        self._yt = torch.tensor(self.data.y_targets, device=dev)

    _d_in = 65  # 64 pixels and the bias input

    # Which CPU implementation of _sgd runs (the bits are the same): "auto" (the compiled loop
    # of protocol.tasks.mlp_kernels where numba is present and VDA_MLP_KERNELS is not "torch"),
    # "numba" or "torch" (the chain of torch operations; also the path on CUDA).
    kernels = "auto"

    @property
    def _fused(self) -> bool:
        if self.kernels == "torch":
            return False
        ok = mlp_kernels.available()
        if self.kernels == "numba" and not ok:
            raise InvalidParameterError("digits-mlp: numba kernels asked for, numba missing")
        return ok

    def _spec(self) -> dict[str, Any]:
        return {
            "task": self.name, "version": 3, **self.data.spec(),
            "model": f"MLP 64-{self.hidden}-10 ReLU", "init": "uniform +-1/sqrt(fan_in), seeded",
            "optimiser": "SGD momentum", "lr": self.lr, "momentum": self.momentum,
            "weight_decay": self.weight_decay, "steps": self.steps, "batch": self.batch,
            "sampling": "with replacement from the subset, seeded", "dtype": "float32",
            "arithmetic": "exact: float32 products of integer units within 24 bits, hidden "
                          "gradients in per-model block floating point (protocol.tasks.exact)",
            "grid": _MLP_GRID.as_dict(self.batch), "output": "correct-class margin",
        }  # fmt: skip

    def _logits(self, w1: torch.Tensor, w2: torch.Tensor, xu: torch.Tensor) -> torch.Tensor:
        """Exact logits (K, B, 10) of the models w1 (K, 65, H), w2 (K, H + 1, 10) on inputs in
        units, (B, 65) or (K, B, 65): the forward pass of :meth:`_sgd`."""
        g = _MLP_GRID
        check_float32_matmul_exact(self.device)
        if xu.dim() == 2:
            xu = xu.expand(w1.shape[0], *xu.shape)
        w1u = to_units(w1.to(_F32), g.w_frac, g.w_limit)
        w2u = to_units(w2.to(_F32), g.w2_frac, g.w2_limit)
        top = g.h_limit * 2.0 ** (g.x_frac + g.w_frac)
        hu = torch.bmm(xu, w1u).clamp_(0.0, top).mul_(2.0 ** (g.h_frac - g.x_frac - g.w_frac))
        hu.round_()
        b2u = w2u[:, self.hidden :].mul(2.0**g.h_frac)
        return torch.baddbmm(b2u, hu, w2u[:, : self.hidden]).mul_(2.0 ** -(g.h_frac + g.w2_frac))

    def train_chunk(
        self, masks: torch.Tensor, seeds: NDArray[np.uint64]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w1, w2 = self._train_weights(masks, seeds)
        margins = correct_class_margin(self._logits(w1, w2, self._xtu), self._yt)
        return margins, self._logits(w1, w2, self._xpu)

    def _train_weights(
        self, masks: torch.Tensor, seeds: NDArray[np.uint64]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k, d, hdim = masks.shape[0], self._d_in, self.hidden
        dev = self.device
        init = _uniform(seeds, 1, d * hdim + (hdim + 1) * N_CLASSES) * 2.0 - 1.0
        w1 = init[:, : d * hdim].reshape(k, d, hdim) / np.sqrt(d - 1)
        w2 = init[:, d * hdim :].reshape(k, hdim + 1, N_CLASSES) / np.sqrt(hdim)
        # Minibatches: the r-th included point of each model, r = floor(u * count).
        m_np = masks.cpu().numpy()
        order = torch.tensor(np.argsort(~m_np, axis=1, kind="stable"), device=dev)
        count = np.maximum(m_np.sum(1), 1)
        u = _uniform(seeds, 2, self.steps * self.batch)
        rank = np.minimum((u * count[:, None]).astype(np.int64), count[:, None] - 1)
        picks = torch.gather(order, 1, torch.tensor(rank, device=dev))
        picks = picks.view(k, self.steps, self.batch)
        live = torch.tensor(m_np.any(1), device=dev, dtype=_F32).view(k, 1, 1)
        w1_t = torch.tensor(w1, dtype=_F32, device=dev)
        w2_t = torch.tensor(w2, dtype=_F32, device=dev)
        return self._sgd(w1_t, w2_t, picks, live, None)

    def _sgd(
        self,
        w1: torch.Tensor,
        w2: torch.Tensor,
        picks: torch.Tensor,
        live: torch.Tensor,
        linear: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SGD with momentum over the minibatches ``picks`` (K, steps, batch) on the mean
        cross-entropy; ``linear`` adds a constant to each model's gradient (Daunce's first-order
        term). Back-propagation is written out so that every product is exact (module doc of
        :mod:`protocol.tasks.exact`, bit budgets in ``_Grid``); updates are elementwise.

        Layout: feature-major (K, features, batch), so that every batched product has a long
        contiguous axis (the class axis is 10 wide); masters in float32, scaled by their grid
        (2^w_frac) so that quantising is a clamp and a round; all buffers allocated once."""
        g = _MLP_GRID
        check_float32_matmul_exact(self.device)
        k, hdim, b, d, c = w1.shape[0], self.hidden, self.batch, self._d_in, N_CLASSES
        dev = w1.device

        def f32(v: float) -> float:
            return representable(v, _F32)

        def buf(*shape: int) -> torch.Tensor:
            return torch.empty(shape, dtype=_F32, device=dev)

        s1, s2 = 2.0**g.w_frac, 2.0**g.w2_frac
        w1m = w1.to(_F32).mul(s1).transpose(1, 2).contiguous()  # (K, H, 65) master, in units
        w2t = w2.to(_F32).mul(s2).transpose(1, 2)
        w2m, b2m = (
            w2t[:, :, :hdim].contiguous(),
            w2t[:, :, hdim:].contiguous(),
        )  # (K,10,H), (K,10,1)
        v1, v2, vb = torch.zeros_like(w1m), torch.zeros_like(w2m), torch.zeros_like(b2m)
        lim1, lim2 = g.w_limit * s1, g.w2_limit * s2
        mom, lr_wd, lr_b = f32(self.momentum), f32(self.lr * self.weight_decay), f32(self.lr / b)
        d_frac, dz_bits = g.d_frac(b), g.dz_bits(b)
        z_to_h, h_top = (
            2.0 ** (g.h_frac - g.x_frac - g.w_frac),
            g.h_limit * 2.0 ** (g.x_frac + g.w_frac),
        )
        c2 = lr_b * 2.0 ** (g.w2_frac - g.h_frac - d_frac)  # dW2 units -> lr x master units
        c2b = lr_b * 2.0 ** (g.w2_frac - d_frac)
        e1 = g.w_frac - g.x_frac - d_frac - g.w2_frac  # dW1 units -> master units, less shift
        lin1 = lin2 = lin2b = None
        if linear is not None:  # the first-order term, in lr x master units
            lr = f32(self.lr)
            l2 = linear[1].to(_F32).mul(lr * s2).transpose(1, 2)
            lin1 = linear[0].to(_F32).mul(lr * s1).transpose(1, 2).contiguous()
            lin2, lin2b = l2[:, :, :hdim].contiguous(), l2[:, :, hdim:].contiguous()
        all_live = bool(live.min() > 0)
        live1 = live.to(_F32).view(k, 1, 1)
        if self._fused and dev.type == "cpu":
            const = dict(
                lim1=lim1, lim2=lim2, h_scale=2.0**g.h_frac, h_top=h_top, z_to_h=z_to_h,
                logit_scale=2.0 ** -(g.h_frac + g.w2_frac), e_scale=2.0**g.e_frac,
                d_scale=2.0**d_frac, mom=mom, lr_wd=lr_wd, lr_b=lr_b, c2=c2, c2b=c2b,
            )  # fmt: skip

            def arr(t: torch.Tensor) -> NDArray[Any]:  # shares t's memory: updated in place
                return np.asarray(t.detach().numpy())

            lins = None
            if lin1 is not None and lin2 is not None and lin2b is not None:
                lins = (arr(lin1), arr(lin2), arr(lin2b.view(k, c)))
            mlp_kernels.sgd(
                tuple(arr(t) for t in (w1m, v1, w2m, v2, b2m.view(k, c), vb.view(k, c))),
                arr(picks.contiguous()), arr(self._y), arr(self._xu), lins,
                None if all_live else arr(live1.view(k)), const, dz_bits, e1, exp_terms(_F32),
            )  # fmt: skip
            return self._sgd_out(w1m, w2m, b2m, s1, s2)
        w1u, tmp1, g1 = buf(k, hdim, d), buf(k, hdim, d), buf(k, hdim, d)
        w2u, g2, tmp2, b2u, g2b = (
            buf(k, c, hdim),
            buf(k, c, hdim),
            buf(k, c, hdim),
            buf(k, c, 1),
            buf(k, c, 1),
        )
        xu, hu, act, dz = buf(k, b, d), buf(k, hdim, b), buf(k, hdim, b), buf(k, hdim, b)
        logits, prob = buf(k, c, b), buf(k, c, b)
        minus_one = torch.full((k, 1, b), -1.0, dtype=_F32, device=dev)
        steps = picks.permute(1, 0, 2).contiguous()  # (steps, K, batch)
        labels = self._y[steps].unsqueeze(2)  # (steps, K, 1, batch)
        for t in range(steps.shape[0]):
            torch.index_select(self._xu, 0, steps[t].view(-1), out=xu.view(k * b, d))
            torch.clamp(w1m, -lim1, lim1, out=w1u).round_()
            torch.clamp(w2m, -lim2, lim2, out=w2u).round_()
            torch.clamp(b2m, -lim2, lim2, out=b2u).round_().mul_(2.0**g.h_frac)
            # forward: hidden units (K, H, B), logits (K, 10, B), all products exact
            torch.bmm(w1u, xu.transpose(1, 2), out=hu)
            hu.clamp_(0.0, h_top).mul_(z_to_h).round_()
            torch.clamp(hu, max=1.0, out=act)  # the ReLU's derivative, 0/1
            torch.baddbmm(b2u, w2u, hu, out=logits)
            logits.mul_(2.0 ** -(g.h_frac + g.w2_frac))
            logits.sub_(logits.amax(1, keepdim=True))
            eu = exp_nonpositive(logits, out=prob).mul_(2.0**g.e_frac).round_()  # in [0, 1]
            eu.div_(eu.sum(1, keepdim=True))
            eu.scatter_add_(1, labels[t], minus_one)  # p - onehot
            du = eu.mul_(2.0**d_frac).round_()  # |du| <= 2^d_frac: p - y in [-1, 1]
            # backward: dW2 (K, 10, H) and its bias, dH (K, H, B), dW1 (K, H, 65)
            torch.bmm(du, hu.transpose(1, 2), out=g2)
            torch.sum(du, 2, keepdim=True, out=g2b)
            torch.bmm(w2u.transpose(1, 2), du, out=dz)
            dz.mul_(act)
            flat = dz.view(k, -1)  # amax and amin: 6x faster than torch.aminmax here
            top = torch.maximum(flat.amax(1), flat.amin(1).neg_())
            shift = (floor_log2(top) + (1 - dz_bits)).clamp_(min=0)  # |dz| / 2^shift < 2^dz_bits
            dz.mul_(pow2(-shift).view(k, 1, 1)).round_()
            torch.bmm(dz, xu, out=g1)
            # SGD with momentum, coupled weight decay: v = m v + lr (g + wd w); w = w - v
            g1.mul_(pow2(shift + e1).mul_(lr_b).view(k, 1, 1))
            g1.add_(torch.mul(w1m, lr_wd, out=tmp1))
            g2.mul_(c2).add_(torch.mul(w2m, lr_wd, out=tmp2))
            g2b.mul_(c2b).add_(b2m * lr_wd)
            if lin1 is not None and lin2 is not None and lin2b is not None:
                g1.add_(lin1)
                g2.add_(lin2)
                g2b.add_(lin2b)
            if not all_live:
                g1.mul_(live1)
                g2.mul_(live1)
                g2b.mul_(live1)
            v1.mul_(mom).add_(g1)
            v2.mul_(mom).add_(g2)
            vb.mul_(mom).add_(g2b)
            w1m.sub_(v1)
            w2m.sub_(v2)
            b2m.sub_(vb)
        return self._sgd_out(w1m, w2m, b2m, s1, s2)

    @staticmethod
    def _sgd_out(
        w1m: torch.Tensor, w2m: torch.Tensor, b2m: torch.Tensor, s1: float, s2: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The masters (in units, feature-major) as weights w1 (K, 65, H), w2 (K, H + 1, 10)."""
        w1_out = w1m.mul_(1.0 / s1).transpose(1, 2).contiguous()
        w2_out = torch.cat([w2m, b2m], 2).mul_(1.0 / s2).transpose(1, 2).contiguous()
        return w1_out, w2_out

    # -- the differentiable extension used by Daunce (prover_service.attribution) ----------
    def _unflatten(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d, h = self._d_in, self.hidden
        k = theta.shape[1]
        w1 = theta[: d * h].T.reshape(k, d, h)
        w2 = theta[d * h :].T.reshape(k, h + 1, N_CLASSES)
        return w1.contiguous(), w2.contiguous()

    @staticmethod
    def _flatten(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        return torch.cat([w1.reshape(w1.shape[0], -1), w2.reshape(w2.shape[0], -1)], 1).T

    def full_model(self) -> torch.Tensor:
        """The model trained on the whole pool with seed 0, flattened: (P, 1)."""
        ones = torch.ones((1, self.n_train), dtype=torch.bool, device=self.device)
        return self._flatten(*self._train_weights(ones, np.zeros(1, dtype=np.uint64)))

    def example_losses(self, theta: torch.Tensor, which: str) -> torch.Tensor:
        """Cross-entropy of every model (columns of theta) on the pool or the targets: (K, n)."""
        x, y = (self._xu, self._y) if which == "pool" else (self._xtu, self._yt)
        logits = self._logits(*self._unflatten(theta), x)
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, N_CLASSES), y.repeat(theta.shape[1]), reduction="none"
        ).view(theta.shape[1], -1)

    def example_gradients(self, theta: torch.Tensor) -> torch.Tensor:
        """Per-example loss gradients on the pool at one model theta (P, 1): (N, P)."""
        w1, w2 = self._unflatten(theta)
        w1, w2 = w1[0], w2[0]
        x = self._xu * 2.0**-_MLP_GRID.x_frac
        z = x @ w1
        h1 = torch.cat([torch.relu(z), torch.ones_like(z[:, :1])], dim=1)
        d2 = torch.softmax(h1 @ w2, dim=1)
        d2[torch.arange(len(self._y)), self._y] -= 1.0
        d1 = (d2 @ w2[:-1].T) * (z > 0)
        g1 = x[:, :, None] * d1[:, None, :]
        g2 = h1[:, :, None] * d2[:, None, :]
        return torch.cat([g1.reshape(len(z), -1), g2.reshape(len(z), -1)], dim=1)

    def finetune(
        self, weights: torch.Tensor, linear: torch.Tensor | None, start: torch.Tensor
    ) -> torch.Tensor:
        """Fine-tune copies of ``start`` (P, 1) for ``finetune_steps`` SGD steps on weighted
        pools (K, N) (minibatches drawn in proportion to the weights, seeded by the copy's
        index); ``linear`` (P, K) is added to the summed objective, so divided by its weight."""
        k = weights.shape[0]
        w = weights.detach().cpu().numpy().astype(np.float64)
        total = np.maximum(w.sum(1), 1e-12)
        cum = np.cumsum(w, axis=1)
        u = _uniform(np.arange(k, dtype=np.uint64), 3, self.finetune_steps * self.batch)
        picks = np.stack([np.searchsorted(cum[i], u[i] * total[i], side="right") for i in range(k)])
        picks = np.minimum(picks, self.n_train - 1).reshape(k, self.finetune_steps, self.batch)
        w1, w2 = self._unflatten(start.to(_F32).repeat(1, k))
        lin = None
        if linear is not None:
            scale = torch.tensor(1.0 / total, dtype=linear.dtype, device=linear.device)
            lin = self._unflatten(linear * scale)
        live = torch.ones((k, 1, 1), dtype=_F32, device=self.device)
        return self._flatten(*self._sgd(w1, w2, torch.tensor(picks, device=self.device), live, lin))
