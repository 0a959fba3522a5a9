"""The engine behind trained tasks: many models at once, one fixed code path, bitwise stable.

A :class:`TrainedTask` trains K models per call of :meth:`TrainedTask.train_chunk`, with one
weight tensor per layer carrying a leading (or trailing) model axis, each model's loss masked by
its own subset and each model's randomness derived from its own seed. Determinism rule: the
same (mask, seed) gives bitwise-identical outputs whatever batch it came in and wherever in
the batch, *on one machine and device*. Three things make that hold:

* **fixed chunk shape**: rows are processed in chunks of exactly ``chunk_size`` models; a short
  last chunk is padded with dummy rows (empty mask, seed 0) that are thrown away, so every
  kernel sees the same shapes every time (a batch of 1 takes other BLAS paths and differs);
* **per-model randomness** from counter-based hashes of the model's seed (SplitMix64), never
  from a shared generator whose state would depend on the batch;
* **no cross-model reductions**: every sum runs over one model's own data;
* **the same thread count** on CPU (part of ``device_class``): BLAS partitions work by threads.

Across devices (CPU against CUDA) results differ in the last bits and more: CHECKEQUIV
(:mod:`protocol.checkequiv`) then compares within a tolerance tau declared in the spec.

Outputs: :meth:`evaluate_outputs` returns the clipped correct-class margins on the Z targets and
the raw logits on a small public probe set (the CHECKEQUIV fingerprint); :meth:`evaluate` is
the plain task contract. ``progress(done, total)`` is called after every chunk.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from protocol.checks import as_mask_matrix
from protocol.errors import InvalidParameterError, ShapeError

__all__ = ["TrainedTask", "TrainingOutputs", "correct_class_margin", "pick_device", "splitmix64"]

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


@dataclass(frozen=True)
class TrainingOutputs:
    """values (K, Z) float64 clipped margins; probes (K, P) float32 raw probe logits (flattened)."""

    values: NDArray[np.float64]
    probes: NDArray[np.float32]


class TrainedTask:
    """Base class of trained tasks; subclasses implement :meth:`train_chunk` and ``_spec``."""

    name: str
    n_train: int
    n_targets: int
    bound: float
    chunk_size: int
    tau: float  # CHECKEQUIV tolerance across device classes

    def __init__(self, device: str | None, chunk_size: int) -> None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise InvalidParameterError(f"chunk_size must be a positive integer; got {chunk_size}")
        self.device = pick_device(device)
        self.chunk_size = chunk_size

    @property
    def device_class(self) -> str:
        """What CHECKEQUIV's exact mode requires both sides to share.

        On CPU the thread count is part of it: BLAS splits work differently with 1 and 2
        threads, and float32 margins then differ by ~1e-4 (measured on digits-logreg).
        """
        if self.device.type == "cuda":
            return f"cuda:{torch.cuda.get_device_name(self.device)}"
        return f"cpu:{platform.machine()}:threads={torch.get_num_threads()}"

    def train_chunk(
        self, masks: torch.Tensor, seeds: NDArray[np.uint64]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Train ``chunk_size`` models: masks (K, N) bool on device, seeds (K,) uint64 ->
        (margins on targets (K, Z), probe logits (K, P))."""
        raise NotImplementedError

    def _spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """The recipe both parties train; the device is not part of it (see CHECKEQUIV)."""
        return {
            **self._spec(),
            "bound": self.bound,
            "chunk_size": self.chunk_size,
            "checkequiv_tau": self.tau,
            "versions": {"torch": torch.__version__.split("+")[0], "numpy": np.__version__},
        }

    def evaluate_outputs(
        self,
        masks: NDArray[np.bool_],
        seeds: NDArray[np.uint64],
        progress: Progress | None = None,
    ) -> TrainingOutputs:
        """Train one model per row (in fixed-size chunks) and return values and probe logits."""
        m = as_mask_matrix(masks, self.n_train)
        s = np.asarray(seeds, dtype=np.uint64)
        if s.shape != (m.shape[0],):
            raise ShapeError(f"need one seed per mask: {m.shape[0]} masks, seeds {s.shape}")
        k0 = self.chunk_size
        values = np.empty((m.shape[0], self.n_targets))
        probes: list[NDArray[np.float32]] = []
        for start in range(0, m.shape[0], k0):
            stop = min(start + k0, m.shape[0])
            cm = np.zeros((k0, self.n_train), dtype=bool)
            cs = np.zeros(k0, dtype=np.uint64)
            cm[: stop - start], cs[: stop - start] = m[start:stop], s[start:stop]
            with torch.no_grad():
                margins, logits = self.train_chunk(torch.from_numpy(cm).to(self.device), cs)
            values[start:stop] = margins[: stop - start].double().cpu().numpy()
            probes.append(logits[: stop - start].float().cpu().numpy().reshape(stop - start, -1))
            if progress is not None:
                progress(stop, m.shape[0])
        np.clip(values, -self.bound, self.bound, out=values)
        flat = np.concatenate(probes) if probes else np.zeros((0, 0), dtype=np.float32)
        return TrainingOutputs(values, flat)

    def evaluate(self, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]) -> NDArray[np.float64]:
        """The task contract: f on the targets, (K, Z), clipped to [-b, b]."""
        return self.evaluate_outputs(masks, seeds).values
