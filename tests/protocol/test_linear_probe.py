"""linear-probe:features=FILE.npz on features made from scikit-learn's bundled wine data.

The file's content hash is in the spec; malformed files are clear TaskErrors; the values are the
outputs at the optimum, certified by their witnesses; a user's own convex task (ridge
regression) declared through the adapter is checked the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_wine

from protocol.errors import TaskError
from protocol.sampling import sample_masks
from protocol.tasks import load_task, spec_hash
from protocol.tasks.adapter import TorchTask
from protocol.tasks.certifiable import certifiable_of
from protocol.tasks.linear_probe import write_features
from protocol.witness import check_witnesses, witness_limit

LIMIT = witness_limit(0.05, 16.0, (0.0, 0.2, 0.4))


def wine_features(path: Path, seed: int = 0) -> str:
    x, y = load_wine(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(x))
    return write_features(path, x[perm[:128]], y[perm[:128]], x[perm[128:]], y[perm[128:]])


def test_spec_names_the_file_by_content(tmp_path: Path) -> None:
    digest = wine_features(tmp_path / "a.npz")
    task = load_task(f"linear-probe:features={tmp_path / 'a.npz'},l2=0.5")
    assert (task.n_train, task.n_targets) == (128, 50)
    assert task.spec()["features_sha256"] == digest and task.spec()["mu"] == 0.5
    wine_features(tmp_path / "b.npz", seed=1)
    other = load_task(f"linear-probe:features={tmp_path / 'b.npz'},l2=0.5")
    assert spec_hash(other) != spec_hash(task)


def test_bad_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="does not exist"):
        load_task(f"linear-probe:features={tmp_path / 'none.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(TaskError, match="not a valid"):
        load_task(f"linear-probe:features={tmp_path / 'junk.npz'}")
    np.savez(tmp_path / "short.npz", x_pool=np.zeros((4, 2)))
    with pytest.raises(TaskError, match="lacks"):
        load_task(f"linear-probe:features={tmp_path / 'short.npz'}")
    x = np.ones((5, 2))
    x[0, 0] = np.nan
    write_features(tmp_path / "nan.npz", x, np.zeros(5), np.ones((2, 2)), np.zeros(2))
    with pytest.raises(TaskError, match="finite"):
        load_task(f"linear-probe:features={tmp_path / 'nan.npz'}")


def test_values_are_certified_by_their_witnesses(tmp_path: Path) -> None:
    wine_features(tmp_path / "w.npz")
    task = load_task(f"linear-probe:features={tmp_path / 'w.npz'}")
    cert = certifiable_of(task)
    assert cert is not None and cert.mu == 1.0
    masks = sample_masks(b"\x06" * 32, task.n_train, 0.5, range(40))
    values = task.evaluate(masks, np.zeros(40, dtype=np.uint64))
    theta = cert.witnesses(masks, np.zeros(40, dtype=np.uint64), LIMIT / 4)
    check = check_witnesses(cert, theta, masks, values, LIMIT)
    assert check.rejected == ()
    assert np.all(np.abs(check.values - values) <= check.tau)
    assert 0.1 < float(np.mean(values > 0)) < 1.0  # margins of both signs: a real task


class RidgeProblem:
    """A user's convex task: ridge regression, L_S = 0.5 sum_S (x.theta - y)^2 + 0.5 lam |theta|^2,
    mu = lam, f_z = x_z . theta (Lipschitz ||x_z||), solved in closed form."""

    def __init__(self, x: np.ndarray, y: np.ndarray, xt: np.ndarray, lam: float) -> None:
        self.x, self.y, self.xt, self.mu, self.n_params = x, y, xt, lam, x.shape[1]

    def gradients(self, theta: np.ndarray, masks: np.ndarray) -> np.ndarray:
        resid = (theta @ self.x.T - self.y) * masks
        return resid @ self.x + self.mu * theta

    def outputs(self, theta: np.ndarray) -> np.ndarray:
        return np.clip(theta @ self.xt.T, -50, 50)

    def output_lipschitz(self) -> np.ndarray:
        return np.linalg.norm(self.xt, axis=1)

    def witnesses(self, masks: np.ndarray, seeds: np.ndarray, value_bound: float) -> np.ndarray:
        eye = self.mu * np.eye(self.n_params)
        return np.stack([np.linalg.solve(self.x[m].T @ self.x[m] + eye, self.x[m].T @ self.y[m])
                         for m in np.asarray(masks, dtype=bool)])  # fmt: skip


def test_a_users_convex_task_through_the_adapter() -> None:
    x, y = load_wine(return_X_y=True)
    x = np.hstack([(x - x.mean(0)) / x.std(0), np.ones((len(x), 1))])
    ridge = RidgeProblem(x[:128], y[:128].astype(float), x[128:], lam=2.0)

    def train(indices: np.ndarray, seed: int) -> torch.Tensor:
        mask = np.zeros(128, dtype=bool)
        mask[indices] = True
        return torch.tensor(ridge.witnesses(mask[None], np.zeros(1), 0.0)[0])

    task = TorchTask(name="wine-ridge", n_train=128, n_targets=50, bound=50.0, train=train,
                     outputs=lambda th: torch.tensor(ridge.outputs(th.numpy()[None])[0]),
                     spec={"model": "ridge"}, certifiable=ridge)  # fmt: skip
    cert = certifiable_of(load_task_like(task))
    assert cert is ridge
    masks = sample_masks(b"\x07" * 32, 128, 0.5, range(8))
    values = task.evaluate(masks, np.zeros(8, dtype=np.uint64))
    theta = ridge.witnesses(masks, np.zeros(8), LIMIT)
    assert check_witnesses(ridge, theta, masks, values, LIMIT).rejected == ()
    moved = check_witnesses(ridge, theta * 1.001, masks, ridge.outputs(theta * 1.001), LIMIT)
    assert len(moved.rejected) == 8


def load_task_like(task: TorchTask) -> TorchTask:
    """The adapter's object as the services see it (declared())."""
    from protocol.tasks.base import declared

    out = declared(task)
    assert isinstance(out, TorchTask)
    return out
