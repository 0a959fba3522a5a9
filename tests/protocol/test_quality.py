"""Held-out quality (LDS, MSE, exact err) against the planted task's ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from protocol.datamodel import Datamodel
from protocol.errors import InvalidParameterError, ShapeError
from protocol.quality import held_out_quality
from protocol.sampling import sample_masks
from protocol.tasks import load_task
from protocol.tasks.planted import PlantedTask

TASK = "planted:n_train=20,n_targets=2"


def test_the_optimal_datamodel_scores_its_planted_truth() -> None:
    task = load_task(TASK)
    assert isinstance(task, PlantedTask) and task.bound >= task.supremum
    phi = task.optimal_datamodel()
    spec = task.spectrum(0.5)
    q = held_out_quality(task, phi, 4000, bytes(32))
    assert q.err is not None and q.err == pytest.approx(0.0, abs=1e-12)
    # MSE(Phi) = B_{>=2} in expectation: within 5 standard errors on 4,000 subsets
    masks = sample_masks(bytes(32), task.n_train, 0.5, range(4000), domain="held-out")
    sq = (task.evaluate(masks, np.zeros(4000, dtype=np.uint64)) - phi.predict(masks)) ** 2
    se = float(sq.mean(axis=1).std(ddof=1) / np.sqrt(4000))
    assert q.mse == pytest.approx(float(spec.residual.mean()), abs=5 * se)
    # a random datamodel ranks the subsets no better than chance; Phi does much better
    noise = Datamodel(np.zeros(2), np.random.default_rng(3).normal(size=(2, 20)))
    worse = held_out_quality(task, noise, 4000, bytes(32))
    assert worse.err is not None and worse.err > 1.0
    assert abs(worse.lds) < 0.5 < q.lds


def test_held_out_subsets_are_fresh_and_seeded() -> None:
    task = load_task(TASK)
    phi = task.optimal_datamodel()
    a = held_out_quality(task, phi, 50, bytes(32))
    assert a == held_out_quality(task, phi, 50, bytes(32))  # same seed, same figures
    assert a.lds != held_out_quality(task, phi, 50, bytes([1]) * 32).lds
    fitted = sample_masks(bytes(32), task.n_train, 0.5, range(50))  # an attribution's domain
    held = sample_masks(bytes(32), task.n_train, 0.5, range(50), domain="held-out")
    assert not (fitted == held).all(axis=1).all()


def test_bad_requests_are_refused() -> None:
    task = load_task(TASK)
    with pytest.raises(InvalidParameterError, match="at least 3"):
        held_out_quality(task, task.optimal_datamodel(), 2, bytes(32))
    with pytest.raises(ShapeError):
        held_out_quality(task, Datamodel(np.zeros(3), np.zeros((3, 20))), 10, bytes(32))


def test_attribute_and_publish_report_it_with_evaluate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from protocol.signing import generate_key, save_private_key
    from prover_service.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["attribute", "--task", TASK, "--method", "ridge", "--budget",
                              "200", "--evaluate", "100", "--no-progress",
                              "--out", str(tmp_path / "dm.npz")])  # fmt: skip
    assert out.exit_code == 0, out.stderr
    q = json.loads(out.stdout)["details"]["quality"]
    assert q["held_out"] == 100 and 0 < q["lds"] <= 1 and q["err"] is not None
    assert "fresh held-out subsets: LDS" in out.stderr and "(exact)" in out.stderr
    key = tmp_path / "p.pem"
    save_private_key(generate_key(), key)
    pub = runner.invoke(app, ["publish", "--task", TASK, "--datamodel", str(tmp_path / "dm.npz"),
                              "--evaluate", "100", "--key", str(key), "--no-progress",
                              "--db", f"sqlite:///{tmp_path}/p.db"])  # fmt: skip
    assert pub.exit_code == 0, pub.stderr
    # the same datamodel on the same held-out subsets: the same figures
    assert json.loads(pub.stdout)["details"]["quality"] == q
