"""Your own model as a task, end to end: a small torch MLP on scikit-learn's wine data.

Everything here is ordinary torch code; :class:`protocol.tasks.adapter.TorchTask` turns it
into a task both parties can train. Try it:

    python -m prover_service check-task --task examples/wine_mlp.py:make_task
    python -m prover_service serve --task examples/wine_mlp.py:make_task --key prover.key
    python -m verifier_client verify --prover http://127.0.0.1:8000 \
        --task examples/wine_mlp.py:make_task --epsilon 1 --key verifier.key

Data: the 178 wines (13 features, 3 cultivars) ship inside scikit-learn. Rows are ordered by a
fixed permutation (numpy's PCG64 seeded with 2026); the first 128 are the training pool (the
subsets select among them), the last 50 the targets. Features are standardised with the pool's
mean and standard deviation. f is the correct-class margin on each target.

tau: the model trains in float32, one model at a time, so its bits depend on the CPU's
instruction set (AVX2 or AVX-512) and on torch's version. ``check-task`` measured a largest
difference of 5.7e-6 here (2-core AMD EPYC, AVX2, torch 2.13), between the native and the
baseline instruction set; alone, in batches, shuffled, repeated and at 1 or 2 threads the bits
were identical. We declare 1e-4, about 17 times that, so that a Verifier on another CPU does not
abort an honest Prover.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from sklearn.datasets import load_wine

from protocol.tasks.adapter import TorchTask

N_POOL, N_TARGETS, STEPS, LR = 128, 50, 150, 0.05


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    x, y = load_wine(return_X_y=True)
    digest = hashlib.sha256(x.astype("<f8").tobytes() + y.astype("<i8").tobytes()).hexdigest()
    order = np.random.default_rng(2026).permutation(len(x))
    pool, targets = order[:N_POOL], order[N_POOL : N_POOL + N_TARGETS]
    mean, sd = x[pool].mean(0), x[pool].std(0)
    z = (x - mean) / sd

    def t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(a, dtype=dtype)

    return (t(z[pool], torch.float32), t(y[pool], torch.long),
            t(z[targets], torch.float32), t(y[targets], torch.long), digest)  # fmt: skip


def make_task() -> TorchTask:
    """The factory ``serve``, ``verify`` and ``check-task`` call."""
    x, y, xt, yt, digest = _data()

    def train(indices: np.ndarray, seed: int) -> torch.nn.Module:
        model = torch.nn.Sequential(
            torch.nn.Linear(13, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        )
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-3)
        if len(indices) == 0:
            return model
        rows = torch.as_tensor(indices)
        for _ in range(STEPS):  # full-batch training on the subset
            loss = torch.nn.functional.cross_entropy(model(x[rows]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model

    def outputs(model: torch.nn.Module) -> torch.Tensor:
        logits = model(xt)
        true = logits.gather(1, yt[:, None]).squeeze(1)
        others = logits.scatter(1, yt[:, None], float("-inf")).amax(1)
        return true - others

    def probes(model: torch.nn.Module) -> torch.Tensor:
        return model(x[:8]).flatten()

    return TorchTask(
        name="wine-mlp",
        n_train=N_POOL,
        n_targets=N_TARGETS,
        bound=20.0,
        train=train,
        outputs=outputs,
        probes=probes,
        tau=1e-4,
        spec={
            "data": "sklearn.datasets.load_wine",
            "data_hash": digest,
            "split": "numpy PCG64(2026) permutation; 128 pool, 50 targets",
            "model": "MLP 13-16-3 ReLU, float32",
            "optimiser": "SGD momentum 0.9, wd 1e-3",
            "lr": LR,
            "steps": STEPS,
            "output": "correct-class margin",
        },  # fmt: skip
    )
