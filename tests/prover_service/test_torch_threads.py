"""Issue 21 item 1: trainings of a TorchTask in several threads give the values serial ones do.

The task's training draws on torch's global generator (layer initialisers, ``torch.randn``),
numpy's and Python's, as ordinary user code does; threads start together (a barrier) and run
several rounds, so unguarded global state would interleave (it did: 12 of 600 spot-checks
differed on the Prover before the lock).
"""

from __future__ import annotations

import random
import threading

import numpy as np
import torch

from protocol.tasks.adapter import TorchTask

N, Z, THREADS, ROWS = 24, 4, 4, 6


def _task(with_generator: bool = False) -> TorchTask:
    x = torch.linspace(-1, 1, N * 3).reshape(N, 3)
    y = torch.sin(x.sum(1))

    def fit(indices: np.ndarray, gen: torch.Generator | None) -> torch.nn.Module:
        model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rows = torch.as_tensor(indices)
        for _ in range(20):
            noise = torch.randn(len(rows), generator=gen) * 0.01  # the global one when gen is None
            jitter = float(np.random.rand()) * 1e-3 + random.random() * 1e-3  # noqa: NPY002, S311
            loss = ((model(x[rows]).squeeze(1) - y[rows] - noise) ** 2).mean() + jitter
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model

    def outputs(model: torch.nn.Module) -> torch.Tensor:
        return model(x[:Z]).squeeze(1)

    if with_generator:

        def train_g(indices: np.ndarray, seed: int, generator: torch.Generator) -> torch.nn.Module:
            return fit(indices, generator)

        train = train_g
    else:

        def train_plain(indices: np.ndarray, seed: int) -> torch.nn.Module:
            return fit(indices, None)

        train = train_plain
    return TorchTask(name="threads", n_train=N, n_targets=Z, bound=10.0, train=train,
                     outputs=outputs, spec={"t": 1})  # fmt: skip


def _rows(k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(k)
    return rng.random((ROWS, N)) < 0.5, rng.integers(0, 2**63, ROWS, dtype=np.uint64)


def _concurrent(task: TorchTask, rounds: int = 3) -> list[np.ndarray]:
    out: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def work(k: int) -> None:
        try:
            start.wait()
            vals = [task.evaluate_outputs(*_rows(k)).values for _ in range(rounds)]
            out[k] = np.stack(vals)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return [out[k] for k in range(THREADS)]


def test_concurrent_trainings_equal_serial_ones() -> None:
    task = _task()
    serial = [task.evaluate_outputs(*_rows(k)).values for k in range(THREADS)]
    for k, got in enumerate(_concurrent(task)):
        for r in range(len(got)):
            assert np.array_equal(got[r], serial[k]), (k, r)


def test_a_generator_per_model_when_train_takes_one() -> None:
    task = _task(with_generator=True)
    serial = [task.evaluate_outputs(*_rows(k)).values for k in range(THREADS)]
    again = [task.evaluate_outputs(*_rows(k)).values for k in range(THREADS)]
    assert all(np.array_equal(a, b) for a, b in zip(serial, again, strict=True))
    for k, got in enumerate(_concurrent(task, rounds=2)):
        assert all(np.array_equal(g, serial[k]) for g in got)


def test_the_callers_global_generator_is_left_as_it_was() -> None:
    torch.manual_seed(1234)
    want = torch.rand(3)
    torch.manual_seed(1234)
    _task().evaluate_outputs(*_rows(0))
    assert torch.equal(torch.rand(3), want)
