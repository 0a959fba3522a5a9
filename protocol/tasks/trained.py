"""The engine behind trained tasks: many models at once, each model's result its own.

A :class:`TrainedTask` trains K models per call of :meth:`TrainedTask.train_chunk`, with one
weight tensor per layer carrying a leading (or trailing) model axis, each model's loss masked by
its own subset and each model's randomness derived from its own seed (counter-based SplitMix64
hashes, never a shared generator whose state would depend on the batch); no reduction crosses
models.

That makes a model's result independent of its batch *mathematically*, not bitwise: a matrix
product adds in an order chosen by the kernel, and the kernel depends on the CPU's vector
instruction set (AVX2 or AVX-512), the thread count, the matrix shapes and even a model's
position in the batch (measured: reversing 32 rows of the float32 MLP moved margins by up to
7e-3 with ``ATEN_CPU_CAPABILITY=default``). Two honest answers:

* **exact arithmetic** (:mod:`protocol.tasks.exact`): ``digits-mlp`` keeps every product on
  integer grids, so the same (mask, seed) gives the same bits on every device: tau = 0;
* **a declared tolerance**: ``digits-logreg`` solves a convex problem in float64 (one optimum;
  honest runs differ by ~1e-13) and declares tau = 1e-9.

``prover_service check-task`` measures which holds. Outputs: :meth:`evaluate_outputs` returns
the clipped correct-class margins on the Z targets and the raw logits on a small public probe
set (the CHECKEQUIV fingerprint).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from protocol.checks import as_mask_matrix
from protocol.errors import InvalidParameterError, ShapeError
from protocol.tasks.base import TaskBase, TrainingOutputs, forced_switches

__all__ = [
    "TrainedTask",
    "TrainingOutputs",
    "correct_class_margin",
    "pick_device",
    "splitmix64",
    "torch_device_class",
]

Progress = Callable[[int, int], None]


def splitmix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64 finaliser (golden-gamma add, two xor-shift-multiply rounds), mod 2^64."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return np.asarray(z ^ (z >> np.uint64(31)), dtype=np.uint64)


def pick_device(device: str | None = None) -> torch.device:
    """``cuda`` when available (or asked for), else ``cpu``; refuses an unavailable CUDA."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidParameterError(f"device {device!r} requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise InvalidParameterError(f"unknown device {device!r}; use cpu, cuda or auto")
    return torch.device(device)


def correct_class_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """True-class logit minus the largest other: logits (..., T, C), labels (T,) -> (..., T)."""
    true = logits.gather(-1, labels.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, labels.expand(*logits.shape[:-1]).unsqueeze(-1), float("-inf"))
    return true - others.amax(-1)


def torch_device_class(device: torch.device) -> str:
    """What changes a torch task's bits: the GPU model and CUDA version, or the CPU's
    architecture, the instruction set torch dispatches to (and any forced switch), the thread
    count; torch's version."""
    version = torch.__version__.split("+")[0]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"cuda:{name}:cuda={torch.version.cuda}:torch={version}"
    isa = torch.backends.cpu.get_cpu_capability().lower()
    return (
        f"cpu:{platform.machine()}:{isa}{forced_switches()}:threads={torch.get_num_threads()}"
        f":torch={version}"
    )


class TrainedTask(TaskBase):
    """Base class of trained tasks; subclasses implement :meth:`train_chunk` and ``_spec``."""

    name: str
    n_train: int
    n_targets: int
    bound: float

    def __init__(self, device: str | None, chunk_size: int) -> None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise InvalidParameterError(f"chunk_size must be a positive integer; got {chunk_size}")
        self.device = pick_device(device)
        self.chunk_size = chunk_size

    @property
    def device_class(self) -> str:
        """What changes bits here (:func:`torch_device_class`)."""
        return torch_device_class(self.device)

    def train_chunk(
        self, masks: torch.Tensor, seeds: NDArray[np.uint64]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Train K models: masks (K, N) bool on device, seeds (K,) uint64 ->
        (margins on targets (K, Z), probe logits (K, P, ...))."""
        raise NotImplementedError

    def _spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """The recipe both parties train; the device is not part of it (see CHECKEQUIV)."""
        return {
            **self._spec(),
            "bound": self.bound,
            "checkequiv_tau": self.tau,
            "versions": {"torch": torch.__version__.split("+")[0], "numpy": np.__version__},
        }

    def evaluate_outputs(
        self,
        masks: NDArray[np.bool_],
        seeds: NDArray[np.uint64],
        progress: Progress | None = None,
    ) -> TrainingOutputs:
        """Train one model per row, ``chunk_size`` at a time; values and probe logits."""
        m = as_mask_matrix(masks, self.n_train)
        s = np.asarray(seeds, dtype=np.uint64)
        if s.shape != (m.shape[0],):
            raise ShapeError(f"need one seed per mask: {m.shape[0]} masks, seeds {s.shape}")
        values = np.empty((m.shape[0], self.n_targets))
        probes: list[NDArray[np.float32]] = []
        for start in range(0, m.shape[0], self.chunk_size):
            stop = min(start + self.chunk_size, m.shape[0])
            with torch.no_grad():
                margins, logits = self.train_chunk(
                    torch.from_numpy(m[start:stop]).to(self.device), s[start:stop]
                )
            values[start:stop] = margins.double().cpu().numpy()
            probes.append(logits.float().cpu().numpy().reshape(stop - start, -1))
            if progress is not None:
                progress(stop, m.shape[0])
        np.clip(values, -self.bound, self.bound, out=values)
        flat = np.concatenate(probes) if probes else np.zeros((0, 0), dtype=np.float32)
        return TrainingOutputs(values, flat)
