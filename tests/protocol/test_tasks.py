"""Task references (built-in names, parameters, FILE.py:FACTORY) and the checked contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocol.errors import ShapeError, TaskError
from protocol.evaluation import evaluate_design
from protocol.sampling import ChallengeDesign
from protocol.tasks import PlantedTask, evaluate_checked, load_task, spec_hash

FACTORY = """
import numpy as np

class Tiny:
    name = "tiny"
    n_train = 4
    n_targets = 1
    bound = 1.0

    def spec(self):
        return {"task": "tiny"}

    def evaluate(self, masks, seeds):
        return {out}

def make():
    return Tiny()
"""


def _task_file(tmp_path: Path, out: str) -> str:
    path = tmp_path / "mytask.py"
    path.write_text(FACTORY.replace("{out}", out))
    return f"{path}:make"


def test_builtin_with_parameters() -> None:
    t = load_task("planted:n_train=12,n_targets=2,b3=0.1,seed=4")
    assert isinstance(t, PlantedTask) and t.n_train == 12 and t.n_targets == 2
    assert spec_hash(t) == spec_hash(load_task("planted: seed=4, n_train=12,b3=0.1,n_targets=2"))
    assert spec_hash(t) != spec_hash(load_task("planted:n_train=12,n_targets=2,b3=0.1,seed=5"))


def test_file_factory(tmp_path: Path) -> None:
    t = load_task(_task_file(tmp_path, "masks.sum(1, keepdims=True) / 4.0"))
    got = evaluate_checked(t, np.eye(4, dtype=bool), np.zeros(4, dtype=np.uint64))
    np.testing.assert_allclose(got, 0.25)


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        ("nosuch", "unknown task 'nosuch'"),
        ("planted:n_train", "key=value"),
        ("planted:colour=3", "bad parameters"),
        ("planted:n_train=1", "n_train"),
        ("missing/file.py:make", "does not exist"),
    ],
)
def test_bad_references(ref: str, match: str) -> None:
    with pytest.raises(TaskError, match=match):
        load_task(ref)


def test_file_without_factory_or_with_broken_code(tmp_path: Path) -> None:
    ref = _task_file(tmp_path, "0")
    with pytest.raises(TaskError, match="no callable 'other'"):
        load_task(ref.replace(":make", ":other"))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(TaskError, match="boom"):
        load_task(f"{broken}:make")


@pytest.mark.parametrize(
    ("out", "match"),
    [
        ("np.zeros((len(masks), 2))", "returned shape"),
        ("np.full((len(masks), 1), np.nan)", "NaN"),
        ("np.full((len(masks), 1), 3.0)", "outside"),
    ],
)
def test_a_task_breaking_its_contract_is_caught(tmp_path: Path, out: str, match: str) -> None:
    t = load_task(_task_file(tmp_path, out))
    with pytest.raises(TaskError, match=match):
        evaluate_checked(t, np.zeros((2, 4), dtype=bool), np.zeros(2, dtype=np.uint64))


def test_inputs_are_checked_before_the_task_runs() -> None:
    t = PlantedTask(n_train=5)
    with pytest.raises(ShapeError, match="N = 5"):
        evaluate_checked(t, np.zeros((2, 6), dtype=bool), np.zeros(2, dtype=np.uint64))
    with pytest.raises(ShapeError, match="one seed per mask"):
        evaluate_checked(t, np.zeros((2, 5), dtype=bool), np.zeros(3, dtype=np.uint64))
    with pytest.raises(ShapeError, match="non-negative"):
        evaluate_checked(t, np.zeros((1, 5), dtype=bool), np.array([-1]))


def test_evaluate_design_reports_progress_and_matches_direct_calls() -> None:
    t = PlantedTask(n_train=8, n_targets=2)
    t.chunk_size = 8
    d = ChallengeDesign.saunshi(bytes(32), 8, 0.5, 0.1, 5)
    seen: list[tuple[int, int]] = []
    got = evaluate_design(t, d, progress=lambda a, b: seen.append((a, b)))
    np.testing.assert_array_equal(got, t.evaluate(d.masks(), d.seeds()))
    assert seen == [(8, 30), (16, 30), (24, 30), (30, 30)]
    with pytest.raises(TaskError, match="N = 8"):
        evaluate_design(PlantedTask(n_train=9), d)
