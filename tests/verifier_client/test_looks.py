"""Checking alone in two looks (``verifier_client.baselines.alone_looks``): against exact planted
truth, with fixed seeds. The rule must keep P(accept | err = epsilon) <= delta at the boundary,
and stop early when the attribution is far better than epsilon."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from protocol.datamodel import Datamodel
from protocol.sampling import SharedBaseDesign
from protocol.tasks import PlantedTask
from verifier_client.baselines import LOOK_DELTA, alone_looks

DELTA = 0.05
BASES = 800  # looks at 400 and 800 bases: clt is allowed at both (n p^2 >= 50 at p = 1/2)


def _binomial_ok(failures: int, reps: int, rate: float) -> bool:
    """failures is within 3 binomial SD above reps * rate (one-sided)."""
    return failures <= reps * rate + 3.0 * math.sqrt(reps * rate * (1.0 - rate))


def _task_with_err(err: float) -> tuple[PlantedTask, Datamodel]:
    """A planted task (B1 = 1, p = 1/2) and Phi with its slopes scaled so that err(g) = err
    exactly on every target (as in tests/protocol/test_validity.py)."""
    task = PlantedTask(n_train=20, n_targets=4, b0=0.2, b1=1.0, b2=0.3, b3=0.1, noise=0.2,
                       seed=1)  # fmt: skip
    opt = task.optimal_datamodel()
    w = opt.weights * (1.0 - math.sqrt(err / float(task.spectrum().b1.mean())))
    return task, Datamodel(opt.intercept + 0.5 * opt.weights.sum(axis=1) - 0.5 * w.sum(1), w)


def _run(task: PlantedTask, g: Datamodel, epsilon: float, seed: int) -> tuple[str, int, int]:
    """One check alone: (verdict, bases used, subsets trained)."""
    design = SharedBaseDesign.saunshi(seed.to_bytes(32, "little"), task.n_train, 0.5, 0.2, BASES)
    trained: list[int] = []

    def train(start: int, stop: int) -> NDArray[np.float64]:
        trained.append(stop - start)
        return task.evaluate(design.masks(start, stop), design.seeds(start, stop))

    decision, bases = alone_looks(
        train, (BASES // 2, BASES), design, g, epsilon=epsilon, delta=DELTA, aggregate="mean",
        validity="clt", bound=task.bound, p=0.5,
    )  # fmt: skip
    return decision.verdict, bases, sum(trained)


def test_the_two_looks_keep_the_error_rate_at_the_boundary() -> None:
    # err = epsilon exactly: an accept at either look is an error. The union bound gives <= delta
    # (LOOK_DELTA sums to 1). Measured (seeds 0..239): 2 accepts of 240, both at the first look.
    assert sum(LOOK_DELTA) == 1.0
    task, g = _task_with_err(0.3)
    assert abs(float(task.err(g).mean()) - 0.3) < 1e-12
    accepts = sum(_run(task, g, 0.3, seed)[0] == "accept" for seed in range(240))
    assert _binomial_ok(accepts, 240, DELTA)


def test_a_good_attribution_stops_at_the_first_look_and_trains_half() -> None:
    # err = epsilon / 10: the first look (half the bases, half of delta) certifies almost
    # always; then only half of the design is trained. Measured (seeds 0..39): 40 of 40 early.
    task, g = _task_with_err(0.05)
    runs = [_run(task, g, 0.5, seed) for seed in range(40)]
    assert all(verdict == "accept" for verdict, _, _ in runs)
    early = [r for r in runs if r[1] == BASES // 2]
    assert len(early) >= 36
    assert all(trained == BASES // 2 * 4 for _, _, trained in early)
    # one that does not certify at the first look goes on and trains the rest, once (err 0.3 at
    # epsilon 0.45, measured seeds 0..39: 15 accepts, 6 of them at the first look)
    late = _run(*_task_with_err(0.3), 0.45, 3)
    assert late[1] == BASES and late[2] == BASES * 4
