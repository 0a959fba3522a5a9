"""Your own model as a task: ordinary torch training code, one model per subset.

Write two functions and declare what the task is::

    def train(indices: np.ndarray, seed: int) -> torch.nn.Module: ...   # train on these rows
    def outputs(model) -> torch.Tensor: ...                             # f on the Z targets

    task = TorchTask(name="wine-mlp", n_train=128, n_targets=50, bound=20.0,
                     train=train, outputs=outputs, spec={...}, tau=1e-4)

and serve it with ``serve --task my_task.py:make_task``. :class:`TorchTask` applies the
determinism settings before every training run: torch's, numpy's and Python's global generators
seeded from the run's seed (so code that calls ``torch.randn`` or shuffles a ``DataLoader``
is reproducible), ``torch.use_deterministic_algorithms(True)``, cuDNN autotuning off, and
``CUBLAS_WORKSPACE_CONFIG`` set on CUDA; the previous settings are restored afterwards.

**Threads.** Those generators and settings are global to the process, and the Prover trains in
several threads (two job lanes, the audit page). Every call of the user's code therefore runs
under one process-wide lock, :data:`GLOBAL_TORCH_STATE`, from the seeding to the last read-out,
so each training's randomness is its own: concurrent trainings give the values serial ones do.
(Other code that draws on torch's global generator should hold the same lock.) Where your code
can take a generator, give ``train`` (or ``train_batch``) a keyword parameter ``generator``: it
receives a ``torch.Generator`` seeded from the run's seed (for ``torch.randn(...,
generator=g)``, ``DataLoader(..., generator=g)``), its own per model, which no other thread
touches; layer initialisers still use the global one, hence the lock.
``probes(model)`` (optional) adds the outputs on a public probe set to CHECKEQUIV's fingerprint;
``train_batch(list of indices, list of seeds) -> list of models`` (optional) trains several
models in one call when your code can batch them. ``certifiable=`` (optional) declares a
strongly convex objective whose optimum your ``train`` returns (:mod:`protocol.tasks.certifiable`):
the Verifier can then check every subset by a gradient (``verify --protocol witness``).

What you must still declare is ``tau``: ordinary float32 code gives different last bits on
different CPUs (AVX2 or AVX-512), thread counts and GPUs, and training amplifies them. Run
``prover_service check-task --task my_task.py:make_task``: it trains the same rows every way
the bits could change and prints the tau to declare; ``serve`` refuses a task whose declared
tau is smaller than what a short version of that check measures at start-up. ``examples/``
holds a complete task on scikit-learn's wine data.
"""

from __future__ import annotations

import inspect
import os
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from protocol.checks import as_mask_matrix
from protocol.errors import InvalidParameterError, TaskError
from protocol.tasks.base import TaskBase, TrainingOutputs
from protocol.tasks.certifiable import Certifiable
from protocol.tasks.trained import pick_device, torch_device_class

__all__ = ["GLOBAL_TORCH_STATE", "TorchTask"]

#: Held while user code runs with torch's, numpy's and Python's global generators seeded and
#: torch's determinism settings changed (module doc); re-entrant.
GLOBAL_TORCH_STATE = threading.RLock()

Model = Any
TrainOne = Callable[[NDArray[np.int64], int], Model]
TrainMany = Callable[[Sequence[NDArray[np.int64]], Sequence[int]], Sequence[Model]]
Readout = Callable[[Model], Any]


def _as_row(name: str, out: Any, width: int | None) -> NDArray[np.float64]:
    arr = out.detach().double().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    arr = np.asarray(arr, dtype=np.float64).reshape(-1)
    if width is not None and arr.shape != (width,):
        raise TaskError(f"{name}(model) returned {arr.shape[0]} values; expected {width}")
    return arr


class TorchTask(TaskBase):
    """A task made of a user's per-model torch training code (module doc)."""

    def __init__(
        self,
        *,
        name: str,
        n_train: int,
        n_targets: int,
        bound: float,
        train: TrainOne | None = None,
        outputs: Readout,
        spec: dict[str, Any],
        tau: float = 0.0,
        probes: Readout | None = None,
        train_batch: TrainMany | None = None,
        chunk_size: int = 16,
        device: str | None = "cpu",
        certifiable: Certifiable | None = None,
    ) -> None:
        if (train is None) == (train_batch is None):
            raise InvalidParameterError(f"task {name!r}: give exactly one of train, train_batch")
        if not (isinstance(chunk_size, int) and chunk_size >= 1):
            raise InvalidParameterError(f"task {name!r}: chunk_size must be an integer >= 1")
        self.name, self.n_train, self.n_targets = str(name), int(n_train), int(n_targets)
        self.bound, self.tau, self.chunk_size = float(bound), float(tau), chunk_size
        self.device = pick_device(device)
        self._train, self._train_batch = train, train_batch
        self._outputs, self._probes = outputs, probes
        self._spec = dict(spec)
        self._certifiable = certifiable
        fn = train if train is not None else train_batch
        self._wants_generator = _takes_keyword(fn, "generator")

    def certifiable(self) -> Certifiable | None:
        """Your convex objective, if you declared one (``certifiable=``): then ``train`` must
        return the model at its exact optimum, and the witness route checks each subset with one
        gradient (:mod:`protocol.tasks.certifiable`, docs/certified-optimality.md)."""
        return self._certifiable

    def spec(self) -> dict[str, Any]:
        """The user's spec, plus what the adapter fixes: determinism settings and versions."""
        return {
            **self._spec,
            "task": self.name,
            "bound": self.bound,
            "checkequiv_tau": self.tau,
            "adapter": "protocol.tasks.adapter.TorchTask/1: seeded torch, numpy, random; "
            "deterministic algorithms",
            "versions": {"torch": torch.__version__.split("+")[0], "numpy": np.__version__},
        }

    @property
    def device_class(self) -> str:
        """As for the built-in trained tasks (:func:`protocol.tasks.trained.torch_device_class`)."""
        return torch_device_class(self.device)

    @staticmethod
    def _seed_everything(seed: int) -> None:
        torch.manual_seed(seed % 2**63)
        np.random.seed(seed % 2**32)  # noqa: NPY002 - user code may use the legacy global RNG
        random.seed(seed)

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed % 2**63)

    def evaluate_outputs(
        self, masks: NDArray[np.bool_], seeds: NDArray[np.uint64]
    ) -> TrainingOutputs:
        """Train one model per row under the determinism settings; read f and the probes.

        Runs under :data:`GLOBAL_TORCH_STATE` (module doc), so calls from several threads give
        the values they give one after another."""
        m = as_mask_matrix(masks, self.n_train)
        s = [int(x) for x in np.asarray(seeds, dtype=np.uint64)]
        indices = [np.flatnonzero(row).astype(np.int64) for row in m]
        with GLOBAL_TORCH_STATE:
            values, probe_rows = self._train_and_read(indices, s)
        probes = (
            np.stack(probe_rows).astype(np.float32)
            if probe_rows
            else np.zeros((len(s), 0), dtype=np.float32)
        )
        return TrainingOutputs(np.clip(values, -self.bound, self.bound), probes)

    def _train_and_read(
        self, indices: list[NDArray[np.int64]], s: list[int]
    ) -> tuple[NDArray[np.float64], list[NDArray[np.float64]]]:
        """The user's code under the determinism settings (caller holds the lock)."""
        previous = (
            torch.are_deterministic_algorithms_enabled(),
            torch.backends.cudnn.benchmark,
            torch.random.get_rng_state(),
        )
        if self.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        try:
            if self._train_batch is not None:
                self._seed_everything(s[0] if s else 0)
                extra: dict[str, Any] = {"generator": [self._generator(x) for x in s]} \
                    if self._wants_generator else {}  # fmt: skip
                models = list(self._train_batch(indices, s, **extra))
                if len(models) != len(s):
                    raise TaskError(f"train_batch returned {len(models)} models for {len(s)} rows")
            else:
                assert self._train is not None  # noqa: S101 - checked in __init__
                models = []
                for idx, seed in zip(indices, s, strict=True):
                    self._seed_everything(seed)
                    extra = {"generator": self._generator(seed)} if self._wants_generator else {}
                    models.append(self._train(idx, seed, **extra))
            with torch.no_grad():
                values = np.stack(
                    [_as_row("outputs", self._outputs(mdl), self.n_targets) for mdl in models]
                ) if models else np.zeros((0, self.n_targets))  # fmt: skip
                probe_rows = [_as_row("probes", self._probes(mdl), None) for mdl in models] \
                    if self._probes is not None else []  # fmt: skip
        finally:
            torch.use_deterministic_algorithms(previous[0])
            torch.backends.cudnn.benchmark = previous[1]
            torch.random.set_rng_state(previous[2])
        return values, probe_rows


def _takes_keyword(fn: Callable[..., Any] | None, name: str) -> bool:
    """Whether ``fn`` has a parameter ``name`` that may be passed by keyword."""
    if fn is None:
        return False
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
               for p in params)  # fmt: skip
