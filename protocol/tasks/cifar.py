"""``cifar10-resnet``: a small ResNet on CIFAR-10 read from a local path; the GPU-scale task.

**Data.** ``data_dir`` holds the standard python pickles of CIFAR-10 (``data_batch_1`` ..
``data_batch_5`` and ``test_batch``, as in ``cifar-10-batches-py``; each a dict with
``b"data"`` (n, 3072) uint8 and ``b"labels"``). Nothing is downloaded: a missing directory or
file is a clear :class:`~protocol.errors.TaskError`. The pool is the first ``n_train`` training
images, the targets the first ``n_targets`` test images, the probes the next 16 test images.
Inputs are scaled to [0, 1] and normalised with the pool's per-channel mean and sd.

**Model and recipe** (airbench-like, simplified): conv 3->w, then three groups of
(conv, BatchNorm, GELU, max-pool 2) with widths (w, 2w, 4w) and a residual conv pair in each,
global max-pool and a linear head (scaled by 1/8). SGD with Nesterov momentum 0.9, label
smoothing 0.2, a linear warm-up/decay learning-rate schedule, random horizontal flips and
minibatch order from the seed. One model per run (BatchNorm makes K-way batching awkward);
``torch.use_deterministic_algorithms`` is on, so one device gives bitwise-equal repeats.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from protocol.codec import sha256_hex
from protocol.errors import InvalidParameterError, TaskError
from protocol.tasks.adapter import GLOBAL_TORCH_STATE
from protocol.tasks.trained import TrainedTask, correct_class_margin, splitmix64

__all__ = ["CifarResNet", "load_cifar10"]

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
N_PROBES = 16


def _read_batch(path: Path) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    if not path.is_file():
        raise TaskError(
            f"CIFAR-10 file {str(path)!r} is missing: point data_dir at an extracted "
            "cifar-10-batches-py directory (data_batch_1..5, test_batch); nothing is downloaded"
        )
    try:
        with path.open("rb") as fh:
            batch = pickle.load(fh, encoding="bytes")  # noqa: S301 - the user's own data files
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, TypeError, EOFError) as exc:
        raise TaskError(f"{str(path)!r} is not a CIFAR-10 python batch: {exc}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise TaskError(f"{str(path)!r}: expected data (n, 3072) and n labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise TaskError(f"{str(path)!r}: labels must be in 0..9")
    return data, labels


def load_cifar10(
    data_dir: str | Path,
) -> tuple[NDArray[np.uint8], NDArray[np.int64], NDArray[np.uint8], NDArray[np.int64]]:
    """Train images (n, 3, 32, 32) uint8, labels, test images, labels from a local directory."""
    root = Path(data_dir)
    if not root.is_dir():
        raise TaskError(
            f"CIFAR-10 directory {str(root)!r} does not exist; pass data_dir=PATH to an "
            "extracted cifar-10-batches-py directory"
        )
    parts = [_read_batch(root / name) for name in TRAIN_FILES]
    x_train = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_batch(root / TEST_FILE)
    return x_train, y_train, x_test.reshape(-1, 3, 32, 32), y_test


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()]


class _Group(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.head = nn.Sequential(*_conv_bn(c_in, c_out), nn.MaxPool2d(2))
        self.res = nn.Sequential(*_conv_bn(c_out, c_out), *_conv_bn(c_out, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        out: torch.Tensor = x + self.res(x)
        return out


class _ResNet(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, width))
        self.groups = nn.Sequential(
            _Group(width, width), _Group(width, 2 * width), _Group(2 * width, 4 * width)
        )
        self.head = nn.Linear(4 * width, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.stem(x))
        out: torch.Tensor = self.head(x.amax(dim=(2, 3))) / 8.0
        return out


class CifarResNet(TrainedTask):
    """``cifar10-resnet`` (module doc). ``data_dir`` is required."""

    name = "cifar10-resnet"

    def __init__(
        self,
        data_dir: str = "",
        n_train: int = 50_000,
        n_targets: int = 100,
        width: int = 32,
        epochs: int = 8,
        batch: int = 512,
        lr: float = 0.2,
        weight_decay: float = 5e-4,
        bound: float = 20.0,
        tau: float | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__(device, 1)
        if not data_dir:
            raise TaskError("cifar10-resnet needs data_dir=PATH (an extracted cifar-10-batches-py)")
        if tau is None or not tau >= 0:
            raise TaskError(
                "cifar10-resnet needs tau=T: float32 convolutions differ between CPUs and GPUs "
                "and the differences grow through training; measure T with "
                "`prover_service check-task` on the devices both parties use"
            )
        x_train, y_train, x_test, y_test = load_cifar10(data_dir)
        if not 1 <= n_train <= len(x_train):
            raise InvalidParameterError(f"n_train must be in [1, {len(x_train)}]")
        if not 1 <= n_targets <= len(x_test) - N_PROBES:
            raise InvalidParameterError(f"n_targets must be in [1, {len(x_test) - N_PROBES}]")
        if not (width >= 1 and epochs >= 1 and batch >= 1 and lr > 0 and bound > 0):
            raise InvalidParameterError("cifar10-resnet: width, epochs, batch >= 1; lr, bound > 0")
        self.n_train, self.n_targets = int(n_train), int(n_targets)
        self.width, self.epochs, self.batch = int(width), int(epochs), int(batch)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.bound, self.tau = float(bound), float(tau)
        self.data_hash = sha256_hex(
            x_train[:n_train].tobytes() + y_train[:n_train].tobytes() + x_test.tobytes()
        )
        pool = x_train[: self.n_train].astype(np.float32) / 255.0
        mean = pool.mean(axis=(0, 2, 3), keepdims=True)
        sd = pool.std(axis=(0, 2, 3), keepdims=True) + 1e-6

        def prep(x: NDArray[np.uint8]) -> torch.Tensor:
            arr = (x.astype(np.float32) / 255.0 - mean) / sd
            return torch.tensor(arr, device=self.device)

        self._x = prep(x_train[: self.n_train])
        self._y = torch.tensor(y_train[: self.n_train], device=self.device)
        self._xt = prep(x_test[: self.n_targets])
        self._yt = torch.tensor(y_test[: self.n_targets], device=self.device)
        self._xp = prep(x_test[self.n_targets : self.n_targets + N_PROBES])

    def _spec(self) -> dict[str, Any]:
        return {
            "task": self.name, "version": 1, "data": "CIFAR-10 python batches (local)",
            "data_hash": self.data_hash, "n_train": self.n_train, "n_targets": self.n_targets,
            "model": f"ResNet groups ({self.width}, {2 * self.width}, {4 * self.width})",
            "optimiser": "SGD nesterov 0.9, label smoothing 0.2, linear warm-up/decay",
            "epochs": self.epochs, "batch": self.batch, "lr": self.lr,
            "weight_decay": self.weight_decay, "dtype": "float32", "deterministic": True,
            "output": "correct-class margin",
        }  # fmt: skip

    def train_one(self, mask: torch.Tensor, seed: int) -> nn.Module:
        """Train one model on the pool rows where ``mask`` is set, all randomness from ``seed``."""
        gen = torch.Generator(device="cpu").manual_seed(int(splitmix64(np.array([seed]))[0] >> 1))
        # torch's layer initialisers read the global generator: seed it and build the model
        # under the process-wide lock (protocol.tasks.adapter), so concurrent trainings do not
        # interleave their draws
        with (
            GLOBAL_TORCH_STATE,
            torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []),
        ):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            model = _ResNet(self.width).to(self.device)
        idx = torch.nonzero(mask, as_tuple=False).flatten().cpu()
        if len(idx) == 0:
            return model.eval()
        steps_per_epoch = max(1, -(-len(idx) // self.batch))
        total = self.epochs * steps_per_epoch
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for param in model.parameters():
            (no_decay if param.ndim <= 1 else decay).append(param)
        opt = torch.optim.SGD(
            [{"params": decay, "weight_decay": self.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr, momentum=0.9, nesterov=True,
        )  # fmt: skip
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / (0.2 * total), (total - s) / (0.8 * total))
        )
        model.train()
        with torch.enable_grad():
            for _ in range(self.epochs):
                perm = idx[torch.randperm(len(idx), generator=gen)].to(self.device)
                flips = torch.rand(len(idx), generator=gen).to(self.device) < 0.5
                for b in range(steps_per_epoch):
                    rows = perm[b * self.batch : (b + 1) * self.batch]
                    x = self._x[rows]
                    flip = flips[b * self.batch : (b + 1) * self.batch].view(-1, 1, 1, 1)
                    x = torch.where(flip, x.flip(3), x)
                    loss = nn.functional.cross_entropy(model(x), self._y[rows], label_smoothing=0.2)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
                    opt.step()
                    sched.step()
        return model.eval()

    def train_chunk(
        self, masks: torch.Tensor, seeds: NDArray[np.uint64]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=False)
        try:
            margins, probes = [], []
            for mask, seed in zip(masks, seeds, strict=True):
                model = self.train_one(mask, int(seed))
                with torch.no_grad():
                    margins.append(correct_class_margin(model(self._xt), self._yt))
                    probes.append(model(self._xp))
            return torch.stack(margins), torch.stack(probes)
        finally:
            torch.use_deterministic_algorithms(previous)
