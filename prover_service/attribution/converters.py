"""Converters between this project's arrays and what TRAK and dattri read and write.

- masks (M, N) bool <-> dattri's index lists: one int64 array of the included training indices
  per subset (what dattri's retraining and LDS helpers take);
- TRAK's output -> a datamodel: its (N, Z) score array (``TRAKer.finalize_scores()``) or a TRAKer
  save folder (``scores/<experiment>.mmap``, a ``.npy`` file), calibrated on a few trainings
  (:func:`prover_service.attribution.calibration.import_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protocol.errors import InvalidParameterError, ShapeError
from protocol.tasks import Task
from prover_service.attribution.base import AttributionResult, Progress
from prover_service.attribution.calibration import (
    Orientation,
    ScoreSource,
    import_scores,
    read_scores,
)

__all__ = ["indices_to_masks", "masks_to_indices", "trak_scores_file", "trak_to_datamodel"]


def masks_to_indices(masks: NDArray[np.bool_]) -> list[NDArray[np.int64]]:
    """(M, N) 0/1 masks -> M sorted int64 arrays of the included indices (dattri's form)."""
    arr = np.asarray(masks)
    if arr.ndim != 2:
        raise ShapeError(f"masks must be (M, N); got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise ShapeError("masks must hold only 0 and 1")
        arr = arr.astype(bool)
    return [np.flatnonzero(row).astype(np.int64) for row in arr]


def indices_to_masks(
    indices: Sequence[Sequence[int] | NDArray[Any]], n_train: int
) -> NDArray[np.bool_]:
    """M lists of included indices (dattri's form) -> (M, N) bool masks; every index must lie in
    [0, ``n_train``) and appear once per subset."""
    if n_train < 1:
        raise InvalidParameterError(f"n_train must be positive; got {n_train}")
    masks = np.zeros((len(indices), n_train), dtype=bool)
    for row, idx in enumerate(indices):
        ids = np.asarray(idx)
        if ids.size == 0:
            continue
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ShapeError(f"subset {row}: indices must be a 1-D list of integers")
        if ids.min() < 0 or ids.max() >= n_train:
            raise ShapeError(
                f"subset {row}: indices must lie in [0, {n_train}); got {ids.min()}..{ids.max()}"
            )
        if np.unique(ids).size != ids.size:
            raise ShapeError(f"subset {row}: an index appears twice")
        masks[row, ids] = True
    return masks


def trak_scores_file(folder: Path | str, experiment: str | None = None) -> Path:
    """The scores file of a TRAKer save folder: ``scores/<experiment>.mmap`` (the only one if
    ``experiment`` is None)."""
    root = Path(folder)
    scores_dir = root / "scores" if (root / "scores").is_dir() else root
    found = sorted(scores_dir.glob("*.mmap"))
    if experiment is not None:
        path = scores_dir / f"{experiment}.mmap"
        if not path.is_file():
            names = [f.stem for f in found]
            raise InvalidParameterError(
                f"no TRAK experiment {experiment!r} in {str(scores_dir)!r}; found {names}"
            )
        return path
    if len(found) != 1:
        names = [f.stem for f in found]
        raise InvalidParameterError(
            f"{str(scores_dir)!r} holds {len(found)} TRAK score files ({names}); "
            "name the experiment"
        )
    return found[0]


def trak_to_datamodel(
    task: Task,
    trak_output: ScoreSource,
    budget: int,
    p: float = 0.5,
    seed: bytes = bytes(32),
    experiment: str | None = None,
    orientation: Orientation | str = Orientation.TRAIN_BY_TARGET,
    progress: Progress | None = None,
) -> AttributionResult:
    """TRAK's scores ((N, Z) array or file, or a TRAKer save folder) calibrated with ``budget``
    trainings into a datamodel (Z, N); shapes are checked before any training."""
    source: ScoreSource = trak_output
    if isinstance(trak_output, str | Path) and Path(trak_output).is_dir():
        source = trak_scores_file(trak_output, experiment)
    loaded = read_scores(source, task, orientation)
    return import_scores(task, loaded, budget, p, seed, progress)
