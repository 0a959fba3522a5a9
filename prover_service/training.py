"""Training runs on demand: K subsets (drawn from a seed or read from a file) -> one .npz file.

The file holds ``masks_packed`` (K, ceil(N/8)) uint8 (``protocol.sampling.pack_masks``),
``n_train``, ``seeds`` (K,) uint64, ``values`` (K, Z) float64, ``probes`` (K, P) float32,
``fingerprints`` (K,) hex strings, ``task_hash`` and ``spec`` (canonical JSON). It is written
as a zip with fixed timestamps and a fixed member order, so the same inputs give the same bytes.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from protocol.checkequiv import fingerprint
from protocol.checks import as_mask_matrix
from protocol.codec import canonical_json
from protocol.errors import InvalidParameterError, ShapeError
from protocol.sampling import pack_masks, sample_masks, training_seeds, unpack_masks
from protocol.tasks import Task, spec_hash
from prover_service.executor import current_executor

__all__ = ["draw_training_set", "read_masks", "train_to_file", "write_npz"]


def draw_training_set(
    task: Task, count: int, seed: bytes, p: float
) -> tuple[NDArray[np.bool_], NDArray[np.uint64]]:
    """``count`` masks from ``stream(seed, "train", i)`` and seeds from ``"train-seed"``."""
    if count < 1:
        raise InvalidParameterError(f"--count must be a positive integer; got {count}")
    return sample_masks(seed, task.n_train, p, range(count), domain="train"), training_seeds(
        seed, range(count)
    )


def read_masks(path: Path, n_train: int) -> NDArray[np.bool_]:
    """Masks from a .npy (K, N) 0/1 array or an .npz holding ``masks_packed`` and ``n_train``."""
    if not path.is_file():
        raise InvalidParameterError(f"mask file {str(path)!r} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ShapeError(f"{str(path)!r} is not a .npy or .npz array file: {exc}") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if "masks_packed" not in loaded:
                raise ShapeError(f"{str(path)!r} has no 'masks_packed' array")
            if int(loaded["n_train"]) != n_train:
                raise ShapeError(f"{str(path)!r} holds masks for N = {int(loaded['n_train'])}")
            return unpack_masks(loaded["masks_packed"], n_train)
    return as_mask_matrix(loaded, n_train)


def write_npz(path: Path, arrays: dict[str, NDArray[np.generic]]) -> None:
    """Write arrays as an uncompressed .npz whose bytes depend only on the arrays."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.save(buf, arrays[name], allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())


def train_to_file(
    task: Task,
    masks: NDArray[np.bool_],
    seeds: NDArray[np.uint64],
    out: Path,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, object]:
    """Train one model per row on the current executor, write the file (module doc), return a
    short summary."""
    outputs = current_executor().run(task, masks, seeds, progress)
    values, probes = outputs.values, outputs.probes
    prints = np.array([fingerprint(values[i], probes[i]) for i in range(len(values))])
    write_npz(
        out,
        {
            "masks_packed": pack_masks(masks),
            "n_train": np.array(task.n_train),
            "seeds": np.asarray(seeds, dtype=np.uint64),
            "values": values,
            "probes": probes,
            "fingerprints": prints,
            "task_hash": np.array(spec_hash(task)),
            "spec": np.array(canonical_json(task.spec()).decode()),
        },
    )
    return {"count": len(values), "values_mean": float(values.mean()), "file": str(out)}
