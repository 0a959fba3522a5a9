"""TRAK through MadryLab's traker as a Prover method: better than ridge at equal trainings on
digits-logreg, its settings and trainings recorded, bad settings refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocol.errors import BudgetError, InvalidParameterError
from protocol.sampling import sample_masks, training_seeds
from protocol.tasks import PlantedTask
from protocol.tasks.digits import DigitsLogReg
from prover_service.attribution import attribute

pytest.importorskip("trak")

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def logreg() -> tuple[DigitsLogReg, np.ndarray, np.ndarray]:
    task = DigitsLogReg()
    key = bytes([21]) * 32
    masks = sample_masks(key, task.n_train, 0.5, range(128), domain="test-lds")
    return task, masks, task.evaluate(masks, training_seeds(key, range(128), domain="test-lds"))


@pytest.mark.slow
def test_trak_beats_ridge_at_equal_trainings(
    logreg: tuple[DigitsLogReg, np.ndarray, np.ndarray],
) -> None:
    # 80 trainings each: TRAK 16 checkpoints (projection 128) + 64 calibration trainings,
    # ridge 80 subsets. Measured with these seeds: TRAK mean LDS 0.70 on 128 fresh subsets,
    # ridge 0.18 (at 96 trainings: 0.73 and 0.20). The floor is ridge + 0.3, and TRAK must
    # also clear 0.5 on its own.
    task, masks, values = logreg
    trak = attribute(task, "trak:checkpoints=16,proj_dim=128", 80, seed=bytes(32))
    ridge = attribute(task, "ridge", 80, seed=bytes(32))
    assert trak.trainings == ridge.trainings == 80
    trak_lds = float(np.nanmean(trak.datamodel.lds(masks, values)))
    ridge_lds = float(np.nanmean(ridge.datamodel.lds(masks, values)))
    assert trak_lds > ridge_lds + 0.3
    assert trak_lds > 0.5


def test_trak_records_tool_settings_and_trainings(
    logreg: tuple[DigitsLogReg, np.ndarray, np.ndarray],
) -> None:
    task = logreg[0]
    result = attribute(task, "trak:checkpoints=4,proj_dim=64,lambda_reg=0.01", 20, seed=bytes(32))
    d = result.details
    assert result.method == "trak" and result.trainings == 20
    assert d["tool"] == "traker" and d["version"].startswith("0.3")
    assert d["checkpoints"] + d["calibration_trainings"] == d["trainings"] == 20
    assert d["settings"]["proj_dim"] == 64 and d["settings"]["lambda_reg"] == 0.01
    assert d["settings"]["checkpoints"] == 4 and d["settings"]["calibration"] == 16
    assert d["calibration_trainings"] == 16 and "median_r2" in d  # the calibration's quality
    assert any("small calibration budget" in w for w in d["warnings"])
    assert result.datamodel.weights.shape == (task.n_targets, task.n_train)
    assert np.all(np.isfinite(result.datamodel.weights))


@pytest.mark.parametrize(
    ("method", "budget", "error", "says"),
    [
        ("trak:projdim=128", 80, InvalidParameterError, "no setting projdim"),
        ("trak:proj_dim", 80, InvalidParameterError, "key=value"),
        ("trak:proj_dim=100", 80, InvalidParameterError, "multiple of 8"),
        ("trak:proj_dim=abc", 80, InvalidParameterError, "multiple of 8"),
        ("trak:lambda_reg=-1", 80, InvalidParameterError, "lambda_reg"),
        ("trak:checkpoints=0", 80, InvalidParameterError, "checkpoints"),
        ("trak:checkpoints=32", 34, BudgetError, "at least 35"),
        ("trak:checkpoints=8,calibration=8", 80, BudgetError, "must equal the budget"),
        ("trak:subset=1.5", 80, InvalidParameterError, "subset"),
        ("ridge:proj_dim=8", 80, InvalidParameterError, "no setting proj_dim"),
    ],
)
def test_bad_settings_are_refused_before_any_training(
    logreg: tuple[DigitsLogReg, np.ndarray, np.ndarray],
    method: str,
    budget: int,
    error: type[Exception],
    says: str,
) -> None:
    with pytest.raises(error, match=says):
        attribute(logreg[0], method, budget, seed=bytes(32))


def test_trak_refuses_a_task_without_a_model() -> None:
    task = PlantedTask(n_train=20, n_targets=2, seed=1)
    with pytest.raises(InvalidParameterError, match="differentiable"):
        attribute(task, "trak", 100, seed=bytes(32))
