"""Scores to datamodels: reading an outside tool's scores, a per-target scale and intercept fitted
on a few trainings, and how well that fit went.

Daunce and outside tools (TRAK, dattri, influence functions) give scores s_z (N,) per target whose
scale is unknown. The datamodel is g_z(x) = a_z + c_z s_z . x with (a_z, c_z) the least-squares
fit of f_z on the one feature u_z = s_z . x over M freshly trained subsets x ~ B_p: M trainings,
two parameters per target, so a few dozen samples suffice.

**Reading** (:func:`read_scores`): ``.npy``, ``.npz`` (one array, or ``key``), ``.pt`` (a tensor or
a dict holding one, loaded with ``weights_only=True``), TRAK's ``scores/*.mmap`` (a ``.npy``
file, memory-mapped), ``.csv``, or an array / tensor in memory. The project's orientation is
(Z, N), targets by training examples (:attr:`Orientation.TARGET_BY_TRAIN`); TRAK and dattri
write (N, Z) (:attr:`Orientation.TRAIN_BY_TARGET`). Without an orientation it is inferred from
the shape and said so; when N = Z the shape cannot tell, and the scores are refused. Every check
(format, shape, orientation, finite values) runs before a training is spent.

**Quality** (:class:`CalibrationQuality`): the per-target R^2 of the fit on the calibration set
(with one feature, the squared correlation of u_z and f_z) and the count of negative scales.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protocol.checks import as_finite_matrix
from protocol.datamodel import Datamodel
from protocol.errors import BudgetError, InvalidParameterError, ProtocolError, ShapeError
from protocol.tasks import Task
from prover_service.attribution.base import AttributionResult, Progress, train_samples

__all__ = [
    "MIN_CALIBRATION",
    "RECOMMENDED_CALIBRATION",
    "CalibrationQuality",
    "LoadedScores",
    "Orientation",
    "ScoreSource",
    "calibrate",
    "calibrate_with_quality",
    "calibration_quality",
    "fit_scale",
    "import_scores",
    "load_scores",
    "orient_scores",
    "quality_warnings",
    "read_array",
    "read_scores",
    "scores_from_npy_bytes",
]

MIN_CALIBRATION = 3
#: Calibration trainings that work (measured; :func:`calibration_quality`). Fewer are allowed but
#: warned about: the fit's R^2 on M trainings is biased up (pure noise has a median R^2 of about
#: 0.455 / (M - 2)), so poor scores look acceptable, and a target with a weak signal gets the
#: wrong sign.
RECOMMENDED_CALIBRATION = 64
#: Warn when the median per-target R^2 is below this, or below twice pure noise's median at M
#: (see :func:`calibration_quality`).
MIN_MEDIAN_R2 = 0.05
#: Warn when more than this fraction of the scales disagree with the majority's sign.
MAX_SIGN_DISAGREEMENT = 0.2

#: What scores may come from: a file path or an array (numpy, or anything with ``.numpy()``).
ScoreSource = Path | str | NDArray[Any] | Any


class Orientation(StrEnum):
    """How a score array is laid out: the project's (Z, N) or TRAK's and dattri's (N, Z)."""

    TARGET_BY_TRAIN = "target-by-train"
    TRAIN_BY_TARGET = "train-by-target"


@dataclass(frozen=True)
class LoadedScores:
    """Scores as (Z, N) float64, the orientation they came in and whether it was inferred."""

    scores: NDArray[np.float64]
    orientation: Orientation
    inferred: bool
    source: str

    def note(self) -> str:
        """One line saying what was read (and which orientation was inferred, if it was)."""
        how = "inferred from the shape" if self.inferred else "as given"
        z, n = self.scores.shape
        return (
            f"scores from {self.source}: orientation {self.orientation.value} ({how}); "
            f"(Z, N) = ({z}, {n})"
        )


# -- reading ---------------------------------------------------------------------------------
def _from_npz(path: Path, key: str | None) -> NDArray[Any]:
    with np.load(path, allow_pickle=False) as npz:
        names = list(npz.files)
        if key is None:
            if len(names) != 1:
                raise InvalidParameterError(
                    f"{str(path)!r} holds {len(names)} arrays ({', '.join(names)}); name one "
                    "with --array-key (a datamodel with intercept and weights goes to publish "
                    "--datamodel)"
                )
            key = names[0]
        if key not in names:
            raise InvalidParameterError(f"{str(path)!r} has no array {key!r}; it has {names}")
        return np.asarray(npz[key])


def _from_torch(obj: Any, where: str, key: str | None) -> NDArray[Any]:
    import torch

    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if key is not None:
            if key not in tensors:
                have = list(tensors)
                raise InvalidParameterError(f"{where} has no tensor {key!r}; it has {have}")
            obj = tensors[key]
        elif len(tensors) == 1:
            obj = next(iter(tensors.values()))
        else:
            raise InvalidParameterError(
                f"{where} is a dict with {len(tensors)} tensors ({', '.join(map(str, tensors))}); "
                "name one with --array-key"
            )
    if not isinstance(obj, torch.Tensor):
        raise InvalidParameterError(f"{where} must hold a tensor or a dict of tensors")
    return np.asarray(obj.detach().to("cpu", torch.float64).numpy())


def read_array(source: ScoreSource, key: str | None = None) -> tuple[NDArray[Any], str]:
    """The raw array of ``source`` (module doc) and a name for it; nothing is checked yet but
    the format. Raises :class:`InvalidParameterError` for an unreadable source."""
    if isinstance(source, np.ndarray):
        return source, "an array"
    if hasattr(source, "detach") and hasattr(source, "numpy"):
        return _from_torch(source, "the tensor", key), "a tensor"
    if not isinstance(source, str | Path):
        raise InvalidParameterError(
            "scores must be a file path, a numpy array or a torch tensor; "
            f"got {type(source).__name__}"
        )
    path = Path(source)
    if not path.is_file():
        raise InvalidParameterError(f"score file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".npy", ".mmap"):
            return np.load(path, mmap_mode="r", allow_pickle=False), str(path)
        if suffix == ".npz":
            return _from_npz(path, key), str(path)
        if suffix == ".csv":
            return np.loadtxt(path, delimiter=",", ndmin=2), str(path)
        if suffix in (".pt", ".pth"):
            import pickle

            import torch

            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                what = f"cannot read {str(path)!r} as a tensor: {first}"
                raise InvalidParameterError(what) from None
            return _from_torch(obj, repr(str(path)), key), str(path)
    except ProtocolError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ShapeError(f"cannot read scores from {str(path)!r}: {exc}") from None
    raise InvalidParameterError(
        f"score file must be .npy, .npz, .pt, .mmap (TRAK) or .csv; got {suffix or 'no suffix'!r}"
    )


def orient_scores(
    raw: NDArray[Any],
    n_targets: int,
    n_train: int,
    orientation: Orientation | str | None = None,
    source: str = "an array",
) -> LoadedScores:
    """Check ``raw``'s shape against (Z, N) = (``n_targets``, ``n_train``), turn it to (Z, N) and
    check it is finite. ``orientation`` None infers it; refused when N = Z (ambiguous)."""
    want = None if orientation is None else _orientation(orientation)
    if raw.dtype.kind not in "biuf":
        raise ShapeError(f"scores from {source} must be numbers; got dtype {raw.dtype}")
    shape = tuple(raw.shape)
    zn, nz = (n_targets, n_train), (n_train, n_targets)
    if shape not in (zn, nz):
        raise ShapeError(
            f"scores from {source} must be (Z, N) = {zn} (target-by-train) or (N, Z) = {nz} "
            f"(train-by-target, as TRAK and dattri write); got {shape}"
        )
    if want is None:
        if n_targets == n_train:
            raise ShapeError(
                f"scores from {source} are square ({n_train} x {n_train}, N = Z), so the shape "
                "cannot tell which axis is the targets: give --orientation train-by-target "
                "(TRAK, dattri) or target-by-train (this project)"
            )
        want = Orientation.TARGET_BY_TRAIN if shape == zn else Orientation.TRAIN_BY_TARGET
        inferred = True
    else:
        expected = zn if want is Orientation.TARGET_BY_TRAIN else nz
        if shape != expected:
            raise ShapeError(
                f"--orientation {want.value} expects {expected} for scores from {source}; got "
                f"{shape}, which is the other orientation: drop --orientation or change it"
            )
        inferred = False
    arr = np.asarray(raw, dtype=np.float64)
    if want is Orientation.TRAIN_BY_TARGET:
        arr = arr.T
    scores = as_finite_matrix("scores", np.ascontiguousarray(arr), zn)
    return LoadedScores(scores, want, inferred, source)


def _orientation(value: Orientation | str) -> Orientation:
    try:
        return Orientation(value)
    except ValueError:
        known = " or ".join(o.value for o in Orientation)
        raise InvalidParameterError(f"--orientation must be {known}; got {value!r}") from None


def read_scores(
    source: ScoreSource,
    task: Task,
    orientation: Orientation | str | None = None,
    key: str | None = None,
) -> LoadedScores:
    """Read and check scores for ``task`` from a file or an array (module doc)."""
    raw, name = read_array(source, key)
    return orient_scores(raw, task.n_targets, task.n_train, orientation, name)


def load_scores(
    path: ScoreSource, task: Task, orientation: Orientation | str | None = None
) -> NDArray[np.float64]:
    """Scores (Z, N), finite, from any source :func:`read_scores` takes."""
    return read_scores(path, task, orientation).scores


def scores_from_npy_bytes(
    data: bytes, shapes: Collection[tuple[int, ...]] | None = None
) -> NDArray[Any]:
    """An array sent as ``.npy`` bytes (the upload endpoint); never unpickles. ``shapes``: the
    allowed shapes, for scores [(Z, N), (N, Z)].

    The header is read first: a version other than 1.0 or 2.0, a dtype that is not a number, a
    shape outside ``shapes`` (when given) or a body whose length is not what the header's shape
    and dtype need is a :class:`ShapeError` before anything is allocated, so a header that
    claims a huge shape costs nothing.
    """
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ShapeError(f"the body is .npy version {version}; send 1.0 or 2.0 (numpy.save)")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ShapeError(f"the body is not a .npy array: {exc}") from None
    if dtype.kind not in "biuf" or dtype.hasobject:
        raise ShapeError(f"the .npy array must hold numbers; its header says dtype {dtype}")
    shape = tuple(int(d) for d in shape)
    if shapes is not None and shape not in {tuple(s) for s in shapes}:
        named = [tuple(s) for s in shapes]
        want = (f"(Z, N) = {named[0]} or (N, Z) = {named[1]}" if len(named) == 2
                else " or ".join(map(str, named)))  # fmt: skip
        raise ShapeError(f"the .npy header says shape {shape}; this task needs {want}")
    need = fp.tell() + math.prod(shape) * dtype.itemsize
    if len(data) != need:
        raise ShapeError(
            f"the .npy body is {len(data)} bytes; its header (shape {shape}, dtype {dtype}) "
            f"needs {need}"
        )
    try:
        return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))
    except (ValueError, OSError, EOFError) as exc:
        raise ShapeError(f"the body is not a .npy array: {exc}") from None


# -- fitting ---------------------------------------------------------------------------------
def fit_scale(
    scores: NDArray[np.float64], masks: NDArray[np.bool_], f: NDArray[np.float64]
) -> Datamodel:
    """Least-squares (a_z, c_z) of f_z on s_z . x, per target (module doc)."""
    u = masks.astype(np.float64) @ scores.T  # (M, Z)
    uc, fc = u - u.mean(0), f - f.mean(0)
    var = np.sum(uc * uc, axis=0)
    scale = np.where(var > 0, np.sum(uc * fc, axis=0) / np.where(var > 0, var, 1.0), 0.0)
    intercept = f.mean(0) - scale * u.mean(0)
    return Datamodel(intercept, scale[:, None] * scores)


@dataclass(frozen=True)
class CalibrationQuality:
    """How well the scores explain the calibration trainings, per target, and the warnings.

    ``r2`` (Z,): R^2 of the fit a_z + c_z u_z on the M calibration trainings (the squared
    correlation of u_z = s_z . x and f_z; 0 for a constant u_z or f_z). ``scales`` (Z,): c_z.
    """

    r2: NDArray[np.float64]
    scales: NDArray[np.float64]
    trainings: int
    warnings: tuple[str, ...]

    @property
    def negative_scales(self) -> int:
        """Targets whose fitted scale is negative."""
        return int(np.sum(self.scales < 0))

    @property
    def sign_disagreements(self) -> int:
        """Targets whose scale has the minority's sign (0 when all agree, whatever the sign)."""
        return min(self.negative_scales, int(np.sum(self.scales > 0)))

    def summary(self) -> dict[str, Any]:
        """The figures as plain JSON values (for details, the CLI and the manifest)."""
        q = np.quantile(self.r2, [0.1, 0.5, 0.9]) if self.r2.size else np.zeros(3)
        return {
            "calibration_trainings": self.trainings,
            "median_r2": round(float(q[1]), 4),
            "r2_p10": round(float(q[0]), 4),
            "r2_p90": round(float(q[2]), 4),
            "negative_scales": self.negative_scales,
            "sign_disagreements": self.sign_disagreements,
            "n_targets": int(self.r2.size),
            "warnings": list(self.warnings),
        }


def quality_warnings(
    median_r2: float, sign_disagreements: int, n_targets: int, trainings: int
) -> list[str]:
    """The warnings :func:`calibration_quality` gives for these figures (also recomputed from a
    signed manifest's ``provenance.calibration``)."""
    warnings: list[str] = []
    floor = max(MIN_MEDIAN_R2, 2 * 0.455 / max(trainings - 2, 1))
    if median_r2 < floor:
        warnings.append(
            f"poor calibration: the median R^2 of the scores on the {trainings} calibration "
            f"trainings is {median_r2:.3f} (< {floor:.3f}); these scores barely predict the "
            "trainings, so the datamodel will be close to constant and its certified error large"
        )
    if n_targets and sign_disagreements > MAX_SIGN_DISAGREEMENT * n_targets:
        warnings.append(
            f"unstable signs: {sign_disagreements} of {n_targets} targets got a scale of the "
            "minority's sign; the scores or the calibration are too noisy for those targets"
        )
    if trainings < RECOMMENDED_CALIBRATION:
        warnings.append(
            f"small calibration budget: {trainings} trainings (recommended: at least "
            f"{RECOMMENDED_CALIBRATION}); with few trainings the fitted scales are noisy, weak "
            "targets flip sign, and poor scores look better than they are"
        )
    return warnings


def calibration_quality(
    scores: NDArray[np.float64], masks: NDArray[np.bool_], f: NDArray[np.float64]
) -> CalibrationQuality:
    """R^2 per target and the scales' signs on the calibration set, with warnings when poor.

    The thresholds come from a measurement on digits-logreg and digits-mlp (300 targets each):
    honest scores (ridge on 1,000 trainings, Daunce on 150, ridge plus noise of its own size)
    against bad ones (ridge drowned in 3 to 30 times its size of noise, random scores), each
    calibrated on M = 8 to 128 trainings and scored by LDS on 200 fresh subsets. At M >= 32 the
    usable scores (LDS >= 0.22) had a median R^2 of 0.058 to 0.38 and the weak ones (LDS < 0.19)
    0.004 to 0.043; pure noise sits near 0.455 / (M - 2) (0.035 at M = 16, 0.0085 at 64). So the
    median R^2 must reach ``MIN_MEDIAN_R2`` = 0.05 and twice noise's median at this M (which
    decides below M = 20). A sign warning fires past ``MAX_SIGN_DISAGREEMENT`` = 20 % of the
    targets on the minority's sign: honest scores had at most 18 % (Daunce on digits-mlp, at
    M = 64; ridge 1 %), random ones 50 %. A tool whose convention is the opposite of ours has every
    scale negative, which is fine. Below ``RECOMMENDED_CALIBRATION`` = 64 trainings the budget
    itself is warned about (ridge on digits-mlp flipped 16 targets at M = 16, 2 at M = 64).
    """
    m = masks.shape[0]
    u = masks.astype(np.float64) @ scores.T
    uc, fc = u - u.mean(0), f - f.mean(0)
    suu, sff, suf = (uc * uc).sum(0), (fc * fc).sum(0), (uc * fc).sum(0)
    ok = (suu > 0) & (sff > 0)
    r2 = np.where(ok, suf**2 / np.where(ok, suu * sff, 1.0), 0.0)
    scales = np.where(suu > 0, suf / np.where(suu > 0, suu, 1.0), 0.0)
    median = float(np.median(r2)) if r2.size else 0.0
    minority = min(int(np.sum(scales < 0)), int(np.sum(scales > 0)))
    warnings = quality_warnings(median, minority, int(r2.size), m)
    return CalibrationQuality(r2, scales, m, tuple(warnings))


def calibrate_with_quality(
    task: Task,
    scores: NDArray[np.float64],
    samples: int,
    p: float,
    seed: bytes,
    progress: Progress | None = None,
    offset: int = 0,
    total: int | None = None,
) -> tuple[Datamodel, CalibrationQuality]:
    """:func:`calibrate` and the :class:`CalibrationQuality` of its fit."""
    if samples < MIN_CALIBRATION:
        raise BudgetError(f"calibration needs at least {MIN_CALIBRATION} trainings; got {samples}")
    if scores.shape != (task.n_targets, task.n_train):
        raise ShapeError(
            f"scores must be (Z, N) = ({task.n_targets}, {task.n_train}); got {scores.shape}"
        )
    masks, f = train_samples(task, samples, p, seed, "calibration", progress, offset, total)
    return fit_scale(scores, masks, f), calibration_quality(scores, masks, f)


def calibrate(
    task: Task,
    scores: NDArray[np.float64],
    samples: int,
    p: float,
    seed: bytes,
    progress: Progress | None = None,
    offset: int = 0,
    total: int | None = None,
) -> Datamodel:
    """Train ``samples`` subsets and fit the scale and intercept of ``scores`` (Z, N)."""
    return calibrate_with_quality(task, scores, samples, p, seed, progress, offset, total)[0]


def import_scores(
    task: Task,
    scores: NDArray[np.float64] | LoadedScores,
    budget: int,
    p: float,
    seed: bytes,
    progress: Progress | None = None,
) -> AttributionResult:
    """An outside tool's scores, calibrated with ``budget`` trainings; ``details`` holds the
    calibration quality (:meth:`CalibrationQuality.summary`, its ``warnings`` list included)."""
    loaded = scores if isinstance(scores, LoadedScores) else None
    array = scores.scores if isinstance(scores, LoadedScores) else scores
    model, quality = calibrate_with_quality(task, array, budget, p, seed, progress)
    details: dict[str, Any] = quality.summary()
    if loaded is not None:
        details["orientation"] = loaded.orientation.value
        details["orientation_inferred"] = loaded.inferred
    return AttributionResult("import", model, budget, details)
