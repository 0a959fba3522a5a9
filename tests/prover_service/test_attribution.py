"""Attribution methods against the truth: exact err on planted tasks, LDS and agreement on
digits-logreg, calibration, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from typer.testing import CliRunner

from protocol.datamodel import Datamodel
from protocol.errors import BudgetError, InvalidParameterError, NonFiniteError, ShapeError
from protocol.sampling import sample_masks, training_seeds
from protocol.tasks import PlantedTask
from protocol.tasks.digits import DigitsLogReg
from prover_service.attribution import attribute, calibrate, load_scores
from prover_service.cli import app

torch.set_num_threads(1)
PLANTED = PlantedTask(n_train=40, n_targets=3, b0=0.2, b1=1.0, b2=0.3, noise=0.2, seed=2)


@pytest.mark.parametrize(
    ("method", "bound_at_4000"), [("influence", 0.06), ("ridge", 0.02), ("lasso", 0.02)]
)
def test_consistent_methods_converge_to_phi(method: str, bound_at_4000: float) -> None:
    # err(g) must fall as the budget grows, and reach the stated bound at 4,000 trainings
    # (measured: influence 0.02, ridge and lasso 0.005; the bounds leave 3-4x room).
    errs = [
        PLANTED.err(attribute(PLANTED, method, b, seed=bytes(32)).datamodel).mean()
        for b in (250, 1000, 4000)
    ]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < bound_at_4000


def test_loo_costs_n_plus_one_and_is_a_different_quantity() -> None:
    result = attribute(PLANTED, "loo", 1000, seed=bytes(32))
    assert result.trainings == PLANTED.n_train + 1
    assert "not Phi" in result.details["note"]
    # Exact for the linear part: at the full pool, removing i changes f by w_i - pair terms.
    assert PLANTED.err(result.datamodel).mean() > 0.1


@pytest.fixture(scope="module")
def digits() -> tuple[DigitsLogReg, np.ndarray, np.ndarray]:
    task = DigitsLogReg()
    key = bytes([9]) * 32
    masks = sample_masks(key, task.n_train, 0.5, range(256), domain="test")
    return task, masks, task.evaluate(masks, training_seeds(key, range(256)))


@pytest.mark.slow
def test_daunce_agrees_with_regression_and_predicts_fresh_subsets(
    digits: tuple[DigitsLogReg, np.ndarray, np.ndarray],
) -> None:
    task, masks, values = digits
    ridge = attribute(task, "ridge", 2000, seed=bytes(32)).datamodel
    for method in ("daunce", "daunce-blackbox"):
        dm = attribute(task, method, 300, seed=bytes(32)).datamodel
        rho = [spearmanr(ridge.weights[z], dm.weights[z]).statistic for z in range(0, 300, 10)]
        # Under no agreement the mean of 30 Spearman coefficients over 1,497 weights has sd
        # ~0.005; measured 0.12. 0.06 is 12 null sd above chance.
        assert np.mean(rho) > 0.06, method
        assert np.nanmean(dm.lds(masks, values)) > 0.3, method  # measured 0.50


def test_calibration_recovers_a_known_scale() -> None:
    phi = PLANTED.optimal_datamodel()
    model = calibrate(PLANTED, phi.weights / 7.0, 400, 0.5, bytes(32))
    np.testing.assert_allclose(model.weights, phi.weights, rtol=0.05, atol=0.02)
    assert PLANTED.err(model).max() < 0.02


def test_import_from_csv_and_npy(tmp_path: Path) -> None:
    phi = PLANTED.optimal_datamodel()
    np.savetxt(tmp_path / "s.csv", phi.weights * 3.0, delimiter=",")
    np.save(tmp_path / "s.npy", -phi.weights)
    for name in ("s.csv", "s.npy"):
        dm = attribute(PLANTED, "import", 300, seed=bytes(32), scores=tmp_path / name).datamodel
        assert PLANTED.err(dm).max() < 0.03


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="unknown method"):
        attribute(PLANTED, "shapley", 100)
    with pytest.raises(BudgetError, match="at least 41"):
        attribute(PLANTED, "loo", 10)
    with pytest.raises(BudgetError, match="at least"):
        attribute(PLANTED, "ridge", 5)
    with pytest.raises(InvalidParameterError, match="differentiable"):
        attribute(PLANTED, "daunce", 500)
    with pytest.raises(InvalidParameterError, match="--scores"):
        attribute(PLANTED, "import", 100)
    np.save(tmp_path / "wrong.npy", np.zeros((2, 40)))
    with pytest.raises(ShapeError, match=r"\(Z, N\) = \(3, 40\)"):
        load_scores(tmp_path / "wrong.npy", PLANTED)
    np.save(tmp_path / "nan.npy", np.full((3, 40), np.nan))
    with pytest.raises(NonFiniteError, match="NaN"):
        load_scores(tmp_path / "nan.npy", PLANTED)
    with pytest.raises(BudgetError, match="Daunce needs"):
        attribute(DigitsLogReg(chunk_size=4), "daunce", 12)


def test_cli_writes_a_datamodel_file(tmp_path: Path) -> None:
    out = tmp_path / "dm.npz"
    result = CliRunner().invoke(
        app,
        [
            "attribute",
            "--task",
            "planted:n_train=40,seed=2",
            "--method",
            "ridge",
            "--budget",
            "300",
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.stderr
    with np.load(out) as z:
        dm = Datamodel(z["intercept"], z["weights"])
        assert str(z["content_hash"]) == dm.content_hash
        assert z["weights"].shape == (3, 40)
    bad = CliRunner().invoke(
        app,
        [
            "attribute",
            "--task",
            "planted",
            "--method",
            "import",
            "--budget",
            "10",
            "--scores",
            "missing.npy",
        ],
    )
    assert bad.exit_code == 2 and "does not exist" in bad.stderr


def test_daunce_on_the_mlp_predicts_fresh_subsets() -> None:
    # The non-convex task has the same differentiable extension (flattened parameters,
    # per-example gradients, weighted SGD fine-tunes). Measured at full size: LDS 0.26 with
    # 300 trainings (ridge 0.40 with 1,000); here a smaller recipe (measured 0.12) must give > 0.05.
    from protocol.tasks.digits import DigitsMLP

    task = DigitsMLP(steps=120, finetune_steps=40, chunk_size=32)
    key = bytes([5]) * 32
    masks = sample_masks(key, task.n_train, 0.5, range(96), domain="test")
    values = task.evaluate(masks, training_seeds(key, range(96)))
    dm = attribute(task, "daunce", 120, seed=bytes(32)).datamodel
    assert np.nanmean(dm.lds(masks, values)) > 0.05
