"""``python -m prover_service train``: reproducible files, masks from files, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from protocol.sampling import unpack_masks
from prover_service.cli import app

runner = CliRunner()
TASK = "digits-logreg:chunk_size=8"


def _train(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["train", "--no-progress", *args])
    return result.exit_code, result.stdout, result.stderr


def test_training_twice_gives_identical_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for out in (a, b):
        code, stdout, _ = _train("--task", TASK, "--count", "10", "--seed", "3", "--out", str(out))
        assert code == 0
        assert json.loads(stdout)["count"] == 10
    assert a.read_bytes() == b.read_bytes()
    with np.load(a) as z:
        masks = unpack_masks(z["masks_packed"], int(z["n_train"]))
        assert masks.shape == (10, 1497) and z["values"].shape == (10, 300)
        assert z["seeds"].dtype == np.uint64 and z["probes"].shape == (10, 160)
        assert len(str(z["task_hash"])) == 64 and len(z["fingerprints"]) == 10


def test_masks_from_a_file_reproduce_the_same_rows(tmp_path: Path) -> None:
    first = tmp_path / "first.npz"
    assert _train("--task", TASK, "--count", "6", "--seed", "1", "--out", str(first))[0] == 0
    with np.load(first) as z:
        masks = unpack_masks(z["masks_packed"], 1497)
        values = z["values"]
    np.save(tmp_path / "masks.npy", masks[2:5])
    again = tmp_path / "again.npz"
    code = _train(
        "--task", TASK, "--masks", str(tmp_path / "masks.npy"), "--seed", "1", "--out", str(again)
    )[0]
    assert code == 0
    with np.load(again) as z:
        # digits-logreg is convex: the values depend on the masks only, whatever the seeds,
        # up to rounding (other batch, other GEMM blocking) within its declared tau.
        np.testing.assert_allclose(z["values"], values[2:5], rtol=0, atol=1e-9)
    code = _train("--task", TASK, "--masks", str(first), "--out", str(tmp_path / "c.npz"))[0]
    assert code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--task", TASK, "--count", "-3"), "positive integer"),
        (("--task", "nosuch", "--count", "3"), "unknown task"),
        (("--task", TASK, "--count", "2", "--seed", "abc"), "seed"),
        (("--task", TASK, "--masks", "missing.npy"), "does not exist"),
    ],
)
def test_bad_input_exits_2_with_a_clear_line(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    code, out, err = _train(*args, "--out", str(tmp_path / "x.npz"))
    assert code == 2 and message in err and "Traceback" not in out + err


def test_mask_file_of_wrong_width_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "m.npy", np.ones((2, 10), dtype=bool))
    code, _, err = _train(
        "--task", TASK, "--masks", str(tmp_path / "m.npy"), "--out", str(tmp_path / "x.npz")
    )
    assert code == 2 and "N = 1497" in err
