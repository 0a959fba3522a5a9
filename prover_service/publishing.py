"""The Prover's Python API: :func:`attribute` and :func:`publish`, what the ``attribute`` and
``publish`` commands run (the commands call these), re-exported as
``from prover_service import attribute, publish``.

``attribute`` computes a datamodel in this process and returns it; ``publish`` signs an
attribution into a Prover's database (the one ``serve --db`` serves) -- an outside tool's
complete datamodel as it is, or its scores calibrated here on a few trainings -- with the tool's
provenance in the signed manifest. Every input check (format, shape, orientation, finite
values, provenance) runs before any training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from protocol.datamodel import Datamodel
from protocol.errors import InvalidParameterError, ShapeError
from protocol.messages import Provenance
from protocol.quality import held_out_quality
from protocol.sampling import seed_from_text
from protocol.signing import SignedMessage
from protocol.tasks import Task, declared, load_task, spec_hash
from prover_service.attribution import AttributionResult
from prover_service.attribution import attribute as run_attribution
from prover_service.attribution.base import Progress
from prover_service.attribution.calibration import (
    RECOMMENDED_CALIBRATION,
    Orientation,
    ScoreSource,
    orient_scores,
    read_scores,
)

if TYPE_CHECKING:
    from prover_service.service import ProverService

__all__ = ["Published", "attribute", "publish", "read_datamodel"]

TaskRef = str | Task
Seed = str | int | bytes


def _task(task: TaskRef) -> Task:
    return load_task(task) if isinstance(task, str) else task


def _seed(seed: Seed) -> bytes:
    if isinstance(seed, bytes):
        if len(seed) != 32:
            raise InvalidParameterError(f"a seed given as bytes must be 32 long; got {len(seed)}")
        return seed
    return seed_from_text(str(seed))


def attribute(
    task: TaskRef,
    method: str,
    budget: int,
    *,
    p: float = 0.5,
    seed: Seed = "0",
    scores: ScoreSource | None = None,
    orientation: Orientation | str | None = None,
    key: str | None = None,
    progress: Progress | None = None,
    evaluate: int = 0,
) -> AttributionResult:
    """Compute an attribution of ``task`` (a name like ``"digits-logreg"``, ``FILE.py:FACTORY``
    or a :class:`Task`) with ``budget`` trainings; the same result as ``vda-prover attribute``
    with the same arguments (``seed`` as on the command line: an int or hex text).

    For ``method="import"``: ``scores`` is a file (.npy, .npz, .pt, TRAK .mmap, .csv) or an array
    or tensor in memory, (Z, N) or (N, Z) (``orientation``; ``key`` names the array of an .npz or
    .pt); ``result.details`` holds the calibration quality and its ``warnings`` list.

    ``evaluate=N`` also trains N fresh held-out subsets and puts the datamodel's LDS and MSE on
    them (and its exact err where known) in ``result.details["quality"]``
    (:func:`protocol.quality.held_out_quality`; the subsets come from ``seed`` in their own
    domain, never those it was fitted on).

    >>> result = attribute("planted", "ridge", 300, seed=0)  # doctest: +SKIP
    >>> result.datamodel.content_hash  # doctest: +SKIP
    """
    t = _task(task)
    result = run_attribution(
        t, method, budget, p, _seed(seed), scores, progress, orientation=orientation, key=key
    )
    if evaluate:
        quality = held_out_quality(t, result.datamodel, evaluate, _seed(seed), p)
        result.details["quality"] = quality.as_dict()
    return result


@dataclass(frozen=True)
class Published:
    """A published attribution: its content hash, the signed manifest (provenance included),
    the trainings it counts (outside ones included) and what the calibration said."""

    content_hash: str
    task_hash: str
    trainings: int
    manifest: SignedMessage
    provenance: Provenance
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (what the ``publish`` command prints)."""
        return {
            "content_hash": self.content_hash, "task_hash": self.task_hash,
            "trainings": self.trainings, "provenance": self.provenance.model_dump(mode="json",
                                                                                 exclude_none=True),
            "warnings": self.warnings, "notes": self.notes, "details": self.details,
        }  # fmt: skip


def read_datamodel(
    source: Datamodel | str | Path | tuple[Any, Any],
    task: Task,
    orientation: Orientation | str | None = None,
) -> Datamodel:
    """A complete outside datamodel: a :class:`Datamodel`, an (intercept, weights) pair, an
    ``.npz`` with ``intercept`` (Z,) and ``weights`` (Z, N) or (N, Z), or the binary form
    (``Datamodel.to_bytes()``). Checked against the task's (Z, N)."""
    if isinstance(source, Datamodel):
        intercept, weights, name = source.intercept, source.weights, "the datamodel"
    elif isinstance(source, tuple):
        intercept, weights, name = np.asarray(source[0]), np.asarray(source[1]), "the pair"
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidParameterError(f"datamodel file {str(path)!r} does not exist")
        name = str(path)
        try:
            if path.suffix.lower() == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    if "intercept" not in z.files or "weights" not in z.files:
                        raise InvalidParameterError(
                            f"{name!r} must hold 'intercept' and 'weights' (it has {z.files}); "
                            "scores without an intercept go to --scores, to be calibrated"
                        )
                    intercept, weights = np.asarray(z["intercept"]), np.asarray(z["weights"])
            else:
                dm = Datamodel.from_bytes(path.read_bytes())
                intercept, weights = dm.intercept, dm.weights
        except (ValueError, OSError) as exc:
            raise ShapeError(f"cannot read a datamodel from {name!r}: {exc}") from None
    oriented = orient_scores(weights, task.n_targets, task.n_train, orientation, name)
    if np.asarray(intercept).shape != (task.n_targets,):
        raise ShapeError(
            f"the intercept of {name} must be (Z,) = ({task.n_targets},); got "
            f"{np.asarray(intercept).shape}"
        )
    return Datamodel(np.asarray(intercept, dtype=np.float64), oriented.scores)


def publish(
    task: TaskRef,
    *,
    datamodel: Datamodel | str | Path | tuple[Any, Any] | None = None,
    scores: ScoreSource | None = None,
    budget: int = RECOMMENDED_CALIBRATION,
    p: float = 0.5,
    seed: Seed = "0",
    orientation: Orientation | str | None = None,
    key: str | None = None,
    tool: str = "unknown",
    tool_version: str = "",
    settings: dict[str, Any] | None = None,
    outside_trainings: int = 0,
    db: str = "sqlite:///prover.db",
    prover_key: str | Path | None = None,
    prover_key_env: str | None = None,
    service: ProverService | None = None,
    progress: Progress | None = None,
    evaluate: int = 0,
) -> Published:
    """Sign an outside attribution into the Prover's database (``db``, key ``prover_key``), or
    into ``service`` (a running :class:`~prover_service.service.ProverService`); the same as
    ``vda-prover publish``. Give exactly one of ``datamodel`` (published as it is) or ``scores``
    (calibrated here with ``budget`` trainings; 64 or more advised). The tool, its version,
    settings and ``outside_trainings`` (its checkpoints) go into the signed manifest, whose
    ``trainings`` count them too. ``evaluate=N`` reports the published datamodel's LDS and MSE
    on N fresh held-out subsets in ``details["quality"]`` (as :func:`attribute`).

    >>> out = publish("digits-logreg", scores="trak/scores/exp.mmap", tool="traker",
    ...               outside_trainings=20, prover_key="prover.pem")  # doctest: +SKIP
    >>> out.content_hash, out.warnings  # doctest: +SKIP
    """
    if (datamodel is None) == (scores is None):
        raise InvalidParameterError("publish needs exactly one of --datamodel or --scores")
    if service is None and prover_key is None and prover_key_env is None:
        raise InvalidParameterError(
            "publish signs with the Prover's key: give --key FILE (see keygen) or --key-env VAR"
        )
    t = _task(task)
    task_hash = spec_hash(t)
    # Every check before a database is opened or a training spent.
    loaded = read_scores(scores, t, orientation, key) if scores is not None else None
    model = read_datamodel(datamodel, t, orientation) if datamodel is not None else None
    key_seed = _seed(seed)
    svc = service if service is not None else _open_service(task, t, db, prover_key,
                                                            prover_key_env)  # fmt: skip
    if task_hash not in svc.tasks:
        svc.tasks[task_hash] = declared(t)
    fields = {"tool": tool, "tool_version": tool_version, "settings": settings or {},
              "outside_trainings": outside_trainings}  # fmt: skip
    prov = svc.attributions.provenance(fields)
    notes: list[str] = []
    details: dict[str, Any] = {}
    warnings: list[str] = []
    if model is not None:
        content_hash = svc.attributions.publish_datamodel(task_hash, model, prov)
    elif loaded is not None:
        if loaded.inferred:
            notes.append(loaded.note())
        content_hash, result = svc.attributions.publish_scores(
            task_hash, loaded, budget, p, key_seed, prov, progress
        )
        details = dict(result.details)
        warnings = list(details.pop("warnings", []))
    signed, dm_bytes = svc.attributions.attribution(content_hash)
    if evaluate:
        published = Datamodel.from_bytes(dm_bytes)
        details["quality"] = held_out_quality(t, published, evaluate, key_seed, p).as_dict()
    asked = {k: v for k, v in prov.model_dump().items() if k in fields}
    asked |= {"calibration_trainings": budget} if loaded is not None else {}
    reused = reuse_warning(signed.payload, asked)
    if reused:
        warnings.append(reused)
    return Published(content_hash, task_hash, int(signed.payload["trainings"]), signed,
                     Provenance.model_validate(signed.payload["provenance"]), warnings, notes,
                     details)  # fmt: skip


def reuse_warning(manifest: dict[str, Any], asked: dict[str, Any]) -> str:
    """ "" when the signed manifest says what was asked, else the sentence that says it was
    reused: a manifest is bound to its datamodel's content hash, so publishing the same
    datamodel again returns the earlier manifest (which keeps its own provenance)."""
    prov = manifest.get("provenance") or {}
    differ = [f"{k} {prov.get(k)!r} (you gave {v!r})" for k, v in asked.items()
              if prov.get(k, "" if isinstance(v, str) else None) != v]  # fmt: skip
    if not differ:
        return ""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(int(manifest.get("created_at", 0))))
    return (f"this datamodel was published before ({str(manifest.get('content_hash'))[:16]}, "
            f"{when}): its earlier signed manifest is reused, and it says " + ", ".join(differ)
            + "; a manifest is bound to its datamodel's hash, so other scores (or a fresh "
            "calibration seed) are needed for a manifest with these fields")  # fmt: skip


def _open_service(
    ref: TaskRef, task: Task, db: str, key_file: str | Path | None, key_env: str | None
) -> ProverService:
    from prover_service.service import ProverService
    from prover_service.settings import Settings

    settings = Settings(db=db, key_file=None if key_file is None else Path(key_file),
                        key_env=key_env, tasks=[ref] if isinstance(ref, str) else [],
                        run_worker=False, check_tasks=False)  # fmt: skip
    service = ProverService(settings)
    service.tasks.setdefault(spec_hash(task), declared(task))
    return service
