"""The float32 digits-mlp that exact arithmetic replaced (digits-mlp version 1): the speed
reference of ``training_throughput.py``. Same recipe (64-128-10 ReLU, seeded init and
minibatches, SGD with momentum and weight decay), autograd in float32, one (K, ., .) tensor
per layer; its bits depend on the batch, the thread count and the instruction set (issue 9),
which is why it is no longer a task. Benchmark code only."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from protocol.tasks.digits import N_CLASSES, _uniform, load_digits_split
from protocol.tasks.trained import correct_class_margin


class Float32MLP:
    """``train(masks, seeds)`` -> margins (K, 300) of models trained like digits-mlp v1."""

    def __init__(
        self,
        hidden: int = 128,
        steps: int = 300,
        batch: int = 64,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        chunk_size: int = 128,
        device: str = "cpu",
    ) -> None:
        self.hidden, self.steps, self.batch, self.chunk_size = hidden, steps, batch, chunk_size
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        data = load_digits_split()
        self.device = torch.device(device)
        self._x = torch.tensor(data.x_pool, dtype=torch.float32, device=self.device)
        self._y = torch.tensor(data.y_pool, device=self.device)
        self._xt = torch.tensor(data.x_targets, dtype=torch.float32, device=self.device)
        self._yt = torch.tensor(data.y_targets, device=self.device)

    def _forward(self, w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.expand(w1.shape[0], *x.shape)
        h = torch.relu(torch.bmm(x, w1))
        return torch.bmm(torch.cat([h, torch.ones_like(h[:, :, :1])], dim=2), w2)

    def _chunk(self, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]) -> torch.Tensor:
        k, d, hdim, dev = masks.shape[0], self._x.shape[1], self.hidden, self.device
        init = _uniform(seeds, 1, d * hdim + (hdim + 1) * N_CLASSES) * 2.0 - 1.0
        w1 = torch.tensor(init[:, : d * hdim].reshape(k, d, hdim) / np.sqrt(d - 1), device=dev)
        w2 = torch.tensor(
            init[:, d * hdim :].reshape(k, hdim + 1, N_CLASSES) / np.sqrt(hdim), device=dev
        )
        w1, w2 = w1.float().requires_grad_(), w2.float().requires_grad_()
        order = torch.tensor(np.argsort(~masks, axis=1, kind="stable"), device=dev)
        count = np.maximum(masks.sum(1), 1)
        u = _uniform(seeds, 2, self.steps * self.batch)
        rank = np.minimum((u * count[:, None]).astype(np.int64), count[:, None] - 1)
        picks = torch.gather(order, 1, torch.tensor(rank, device=dev)).view(k, self.steps, -1)
        v1, v2 = torch.zeros_like(w1), torch.zeros_like(w2)
        with torch.enable_grad():
            for t in range(self.steps):
                idx = picks[:, t]
                logits = self._forward(w1, w2, self._x[idx])
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, N_CLASSES), self._y[idx].reshape(-1), reduction="sum"
                )
                g1, g2 = torch.autograd.grad(loss / self.batch, (w1, w2))
                with torch.no_grad():
                    v1.mul_(self.momentum).add_(g1 + self.weight_decay * w1)
                    v2.mul_(self.momentum).add_(g2 + self.weight_decay * w2)
                    w1.sub_(self.lr * v1)
                    w2.sub_(self.lr * v2)
        with torch.no_grad():
            return correct_class_margin(self._forward(w1, w2, self._xt), self._yt)

    def train(self, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]) -> NDArray[np.float64]:
        """Margins (K, 300) on the digits targets, ``chunk_size`` models at a time."""
        out = [
            self._chunk(masks[i : i + self.chunk_size], seeds[i : i + self.chunk_size])
            for i in range(0, len(masks), self.chunk_size)
        ]
        return torch.cat(out).double().cpu().numpy()
