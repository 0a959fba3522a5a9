"""Importing an outside tool's scores: every format and orientation, the N = Z ambiguity, checks
before any training, the calibration's quality and warnings, and the converters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.format import open_memmap
from typer.testing import CliRunner

import prover_service.attribution.calibration as calibration_module
from protocol.errors import InvalidParameterError, NonFiniteError, ProtocolError, ShapeError
from protocol.tasks import PlantedTask
from prover_service.attribution import attribute
from prover_service.attribution.calibration import (
    RECOMMENDED_CALIBRATION,
    Orientation,
    read_scores,
)
from prover_service.attribution.converters import (
    indices_to_masks,
    masks_to_indices,
    trak_scores_file,
    trak_to_datamodel,
)
from prover_service.cli import app

TASK = PlantedTask(n_train=40, n_targets=12, seed=3)
PHI = TASK.optimal_datamodel().weights  # (Z, N) = (12, 40)
SQUARE = PlantedTask(n_train=6, n_targets=6)


def _write(path: Path, array: np.ndarray) -> Path:
    """``array`` in the format that ``path``'s suffix names."""
    match path.suffix:
        case ".npy":
            np.save(path, array)
        case ".npz":
            np.savez(path, scores=array)
        case ".pt":
            torch.save(torch.tensor(array), path)
        case ".mmap":  # as TRAK's MmapSaver writes scores/<experiment>.mmap
            out = open_memmap(path, mode="w+", dtype=np.float32, shape=array.shape)
            out[:] = array
            out.flush()
            del out
        case ".csv":
            np.savetxt(path, array, delimiter=",")
    return path


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt", ".mmap", ".csv"])
@pytest.mark.parametrize("orientation", list(Orientation))
def test_every_format_and_orientation_reads_the_same_scores(
    tmp_path: Path, suffix: str, orientation: Orientation
) -> None:
    array = PHI if orientation is Orientation.TARGET_BY_TRAIN else PHI.T
    path = _write(tmp_path / f"s{suffix}", array)
    inferred = read_scores(path, TASK)
    given = read_scores(path, TASK, orientation.value)
    for loaded in (inferred, given):
        assert loaded.orientation is orientation
        tol = 1e-6 if suffix == ".mmap" else 1e-12  # TRAK writes float32
        np.testing.assert_allclose(loaded.scores, PHI, rtol=tol, atol=tol)
    assert inferred.inferred and "inferred from the shape" in inferred.note()
    assert not given.inferred
    other = next(o for o in Orientation if o is not orientation)
    with pytest.raises(ShapeError, match="other orientation"):
        read_scores(path, TASK, other)


def test_arrays_and_tensors_in_memory() -> None:
    for source in (PHI.T, torch.tensor(PHI.T), torch.tensor(PHI.T, dtype=torch.float16)):
        loaded = read_scores(source, TASK)
        assert loaded.orientation is Orientation.TRAIN_BY_TARGET
        np.testing.assert_allclose(loaded.scores, PHI, atol=2e-3)  # float16 rounds


def test_npz_and_pt_with_several_arrays_need_a_key(tmp_path: Path) -> None:
    np.savez(tmp_path / "two.npz", a=PHI, b=PHI.T)
    torch.save({"a": torch.tensor(PHI), "b": torch.tensor(PHI.T)}, tmp_path / "two.pt")
    for name in ("two.npz", "two.pt"):
        with pytest.raises(InvalidParameterError, match="--array-key"):
            read_scores(tmp_path / name, TASK)
        assert read_scores(tmp_path / name, TASK, key="b").orientation.value == "train-by-target"
        with pytest.raises(InvalidParameterError, match="no (array|tensor) 'c'"):
            read_scores(tmp_path / name, TASK, key="c")


class _Evil:
    """An arbitrary object: loading it would run code, so a .pt holding it is refused."""


def test_refused_sources(tmp_path: Path) -> None:
    torch.save({"model": _Evil()}, tmp_path / "pickle.pt")  # weights_only refuses objects
    with pytest.raises(InvalidParameterError, match="cannot read"):
        read_scores(tmp_path / "pickle.pt", TASK)
    (tmp_path / "s.txt").write_text("1,2")
    with pytest.raises(InvalidParameterError, match=r"\.npy, \.npz, \.pt"):
        read_scores(tmp_path / "s.txt", TASK)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ShapeError, match="cannot read"):
        read_scores(tmp_path / "bad.npy", TASK)
    with pytest.raises(ShapeError, match=r"\(Z, N\) = \(12, 40\)"):
        read_scores(np.zeros((12, 41)), TASK)
    with pytest.raises(ShapeError, match="numbers"):
        read_scores(np.full((12, 40), "x"), TASK)
    with pytest.raises(InvalidParameterError, match="--orientation must be"):
        read_scores(PHI, TASK, "sideways")
    with pytest.raises(InvalidParameterError, match="file path, a numpy array"):
        read_scores([[1.0]], TASK)


def test_square_scores_are_refused_without_an_orientation(tmp_path: Path) -> None:
    phi = SQUARE.optimal_datamodel().weights
    path = _write(tmp_path / "sq.npy", phi.T)
    with pytest.raises(ShapeError, match="N = Z.*--orientation"):
        read_scores(path, SQUARE)
    loaded = read_scores(path, SQUARE, "train-by-target")
    np.testing.assert_array_equal(loaded.scores, phi)
    result = CliRunner().invoke(app, ["attribute", "--task", "planted:n_train=6,n_targets=6",
                                      "--method", "import", "--budget", "64", "--scores",
                                      str(path), "--no-progress"])  # fmt: skip
    assert result.exit_code == 2 and "--orientation" in result.stderr, result.stderr


class _Counter:
    """Counts the trainings :func:`train_samples` is asked for (calibration's only way to train)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.trainings = 0
        real = calibration_module.train_samples

        def counting(task, count, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.trainings += count
            return real(task, count, *args, **kwargs)

        monkeypatch.setattr(calibration_module, "train_samples", counting)


def test_every_check_runs_before_any_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = _Counter(monkeypatch)
    calls: list[tuple[int, int]] = []
    nan = PHI.copy()
    nan[3, 4] = np.nan
    bad_sources: list[tuple[object, PlantedTask, str | None, type[Exception]]] = [
        (np.zeros((12, 41)), TASK, None, ShapeError),  # wrong shape
        (PHI.T, TASK, "target-by-train", ShapeError),  # transposed against --orientation
        (nan, TASK, None, NonFiniteError),
        (_write(tmp_path / "sq.npy", SQUARE.optimal_datamodel().weights), SQUARE, None, ShapeError),
        (tmp_path / "missing.pt", TASK, None, InvalidParameterError),
    ]
    for source, task, orientation, error in bad_sources:
        with pytest.raises(error):
            attribute(task, "import", 64, scores=source, orientation=orientation,
                      progress=lambda done, total: calls.append((done, total)))  # fmt: skip
    assert counter.trainings == 0 and calls == []
    attribute(TASK, "import", 8, scores=PHI.T, progress=lambda d, t: calls.append((d, t)))
    assert counter.trainings == 8 and calls  # the control: a good import does train


def test_calibration_quality_and_its_warnings() -> None:
    rng = np.random.default_rng(7)
    good = attribute(TASK, "import", RECOMMENDED_CALIBRATION, seed=bytes(32), scores=PHI * 5)
    assert good.details["warnings"] == []
    assert good.details["median_r2"] > 0.5 and good.details["negative_scales"] == 0
    assert TASK.err(good.datamodel).max() < 0.05
    flipped = attribute(TASK, "import", RECOMMENDED_CALIBRATION, seed=bytes(32), scores=-PHI)
    # a tool whose sign convention is the opposite: every scale negative, which is no warning
    assert flipped.details["negative_scales"] == 12 and flipped.details["warnings"] == []
    noise = rng.normal(size=PHI.shape)
    bad = attribute(TASK, "import", RECOMMENDED_CALIBRATION, seed=bytes(32), scores=noise)
    assert any(w.startswith("poor calibration") for w in bad.details["warnings"])
    assert bad.details["median_r2"] < 0.1 < good.details["median_r2"]
    few = attribute(TASK, "import", 16, seed=bytes(32), scores=PHI)
    assert any(w.startswith("small calibration budget") for w in few.details["warnings"])


def test_cli_prints_the_calibration_warning_on_stderr(tmp_path: Path) -> None:
    noise = np.random.default_rng(1).normal(size=PHI.T.shape)
    path = _write(tmp_path / "noise.npy", noise)
    result = CliRunner().invoke(app, ["attribute", "--task", "planted:n_train=40,n_targets=12,"
                                      "seed=3", "--method", "import", "--budget", "64",
                                      "--scores", str(path), "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("warning: poor calibration: the median R^2") for line in lines)
    assert any(line.startswith("note: scores from") for line in lines)  # inferred, and said so
    assert "poor calibration" not in result.stdout.split('"warnings"')[0]


def test_masks_and_dattri_index_lists_round_trip() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((30, 17)) < 0.5
    masks[0] = False
    indices = masks_to_indices(masks)
    assert indices[0].size == 0 and indices[1].dtype == np.int64
    assert all(np.all(np.diff(i) > 0) for i in indices)
    np.testing.assert_array_equal(indices_to_masks(indices, 17), masks)
    np.testing.assert_array_equal(masks_to_indices(masks.astype(np.uint8))[5], indices[5])
    for bad, match in (([[0, 17]], r"\[0, 17\)"), ([[1, 1]], "twice"), ([[0.5]], "integers")):
        with pytest.raises(ShapeError, match=match):
            indices_to_masks(bad, 17)
    with pytest.raises(ShapeError, match="0 and 1"):
        masks_to_indices(np.full((2, 3), 2))


def test_trak_output_to_a_datamodel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "trak_results"
    (folder / "scores").mkdir(parents=True)
    _write(folder / "scores" / "quickstart.mmap", PHI.T * 0.01)  # TRAK's (N, Z), float32
    assert trak_scores_file(folder).name == "quickstart.mmap"
    for source in (folder, PHI.T * 0.01):
        result = trak_to_datamodel(TASK, source, RECOMMENDED_CALIBRATION)
        assert result.details["orientation"] == "train-by-target"
        assert TASK.err(result.datamodel).max() < 0.05
    _write(folder / "scores" / "other.mmap", PHI.T)
    counter = _Counter(monkeypatch)
    with pytest.raises(InvalidParameterError, match="2 TRAK score files"):
        trak_to_datamodel(TASK, folder, 64)
    with pytest.raises(InvalidParameterError, match="no TRAK experiment 'nope'"):
        trak_to_datamodel(TASK, folder, 64, experiment="nope")
    with pytest.raises(ProtocolError, match="other orientation"):
        trak_to_datamodel(TASK, PHI, 64)  # (Z, N) given where TRAK's (N, Z) is expected
    assert counter.trainings == 0
