"""Published attributions: the jobs that compute them, the uploads and outside datamodels
that are imported, and the signed manifests (the protocol's commit step).

An attribution is a datamodel stored in the array store under its content hash, with a signed
:class:`~protocol.messages.AttributionManifest` in ``attributions`` and in the transparency log.
It is computed by an attribution job (:meth:`Attributions.submit`, run on the attribution lane
by :meth:`Attributions.run`), calibrated from uploaded scores (:meth:`Attributions.submit_import`)
or published as given (:meth:`Attributions.publish_datamodel`). A cheating Prover's hook
(``tamper``, :mod:`prover_service.cheating`) sees each datamodel before it is signed; the honest
path calls the identity.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from protocol.codec import sha256_hex
from protocol.datamodel import Datamodel
from protocol.errors import ProtocolError
from protocol.messages import AttributionManifest, Provenance, array_to_npy
from protocol.signing import SignedMessage, sign_message
from prover_service.arrays import ArrayStore
from prover_service.attribution import AttributionResult, Method, attribute, check_method
from prover_service.attribution.calibration import (
    MIN_CALIBRATION,
    RECOMMENDED_CALIBRATION,
    LoadedScores,
    Orientation,
    import_scores,
    orient_scores,
    scores_from_npy_bytes,
)
from prover_service.auth import LOCAL, Gate
from prover_service.errors import Invalid, NotFound, TooLarge
from prover_service.job_params import AttributionJob
from prover_service.jobs import JobCancelled, Jobs
from prover_service.log import TransparencyLog
from prover_service.registry import TaskRegistry
from prover_service.settings import Settings
from prover_service.tables import AttributionRow, JobRow, now

__all__ = ["CALIBRATION_FIGURES", "Attributions", "ModelHook"]

ModelHook = Callable[[Datamodel, str], Datamodel]
#: The calibration figures signed into an imported attribution's provenance.
CALIBRATION_FIGURES = ("median_r2", "r2_p10", "r2_p90", "negative_scales", "sign_disagreements")


def _identity(model: Datamodel, _label: str) -> Datamodel:
    return model


class Attributions:
    """Attribution jobs, imports and the published manifests (module doc)."""

    def __init__(
        self, *, settings: Settings, db: sessionmaker[Session], arrays: ArrayStore,
        key: Ed25519PrivateKey, log: TransparencyLog, gate: Gate, tasks: TaskRegistry,
        jobs: Jobs, tamper: ModelHook | None = None,
    ) -> None:  # fmt: skip
        self.settings, self.db, self.arrays, self.key = settings, db, arrays, key
        self.log, self.gate, self.tasks, self.jobs = log, gate, tasks, jobs
        self.tamper: ModelHook = tamper or _identity

    def submit(
        self, task_hash: str, method: str, budget: int, p: float, seed: str, owner: str = LOCAL,
        address: str = LOCAL,
    ) -> JobRow:  # fmt: skip
        """Queue an attribution job for ``owner`` (a Verifier key, or the operator)."""
        task = self.tasks.task(task_hash)  # 404 for an unknown task
        if method.split(":", 1)[0] == Method.IMPORT.value:
            raise Invalid(
                "method 'import' takes the scores themselves: POST them as .npy bytes "
                "(application/octet-stream) to /v1/attributions/import?task_hash=...&budget=..., "
                "or a complete datamodel to /v1/attributions/datamodel"
            )
        try:  # the name and the settings (trak:checkpoints=32,proj_dim=128), before any job
            check_method(method)
        except ProtocolError as exc:
            raise Invalid(str(exc)) from None
        self._check_budget(budget, p)
        if owner != LOCAL:
            self.gate.admit(owner, address)
        params = AttributionJob(task_hash=task_hash, method=method, budget=budget, p=p, seed=seed)
        job = JobRow(id=os.urandom(16).hex(), kind="attribution", total=budget,
                     params_json=params.to_json())  # fmt: skip
        self.jobs.add(job, [], owner, task.n_train * task.n_targets * 8 + 4096)
        return job

    def provenance(self, fields: dict[str, Any] | None, owner: str = LOCAL) -> Provenance:
        """Validate the caller's provenance (tool, tool_version, settings, outside_trainings);
        the uploader is the signing key. 422 with the first bad field."""
        data = dict(fields or {})
        if not data.get("tool"):
            data["tool"] = "unknown"
        if owner != LOCAL:
            data["uploader"] = owner
        try:
            return Provenance.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "provenance"
            raise Invalid(f"bad provenance {where}: {first['msg']}") from None

    def submit_import(
        self, task_hash: str, body: bytes, budget: int, p: float = 0.5, seed: str = "",
        orientation: str | None = None, provenance: dict[str, Any] | None = None,
        owner: str = LOCAL, address: str = LOCAL,
    ) -> tuple[JobRow, LoadedScores, list[str]]:  # fmt: skip
        """Queue the calibration of uploaded scores (``.npy`` bytes, (Z, N) or (N, Z)) with
        ``budget`` trainings. Format, shape, orientation, finite values and provenance are all
        checked here, before any training; returns the job, the scores read and the notes
        known now (the inferred orientation, a small budget)."""
        task = self.tasks.task(task_hash)
        self._check_budget(budget, p, MIN_CALIBRATION)
        shapes = [(task.n_targets, task.n_train), (task.n_train, task.n_targets)]
        loaded = orient_scores(scores_from_npy_bytes(body, shapes), task.n_targets, task.n_train,
                               orientation, "the upload")  # fmt: skip
        prov = self.provenance(provenance, owner)
        if owner != LOCAL:
            self.gate.admit(owner, address)
        notes = [loaded.note()] if loaded.inferred else []
        if budget < RECOMMENDED_CALIBRATION:
            notes.append(f"small calibration budget: {budget} trainings (recommended: at least "
                         f"{RECOMMENDED_CALIBRATION})")  # fmt: skip
        data = array_to_npy("scores", loaded.scores)[1]
        already = self.arrays.has(hashlib.sha256(data).hexdigest())
        sha = self.arrays.put(data)
        params = AttributionJob(task_hash=task_hash, method=Method.IMPORT.value, budget=budget,
                                p=p, seed=seed, scores=sha, orientation=loaded.orientation.value,
                                orientation_inferred=loaded.inferred, provenance=prov)  # fmt: skip
        job = JobRow(id=os.urandom(16).hex(), kind="attribution", total=budget,
                     params_json=params.to_json())  # fmt: skip
        try:
            self.jobs.add(job, [], owner, task.n_train * task.n_targets * 8 + 4096)
        except BaseException:
            if not already:  # a refused upload (over quota) leaves nothing behind
                self.arrays.discard(sha)
            raise
        return job, loaded, notes

    def publish_datamodel(
        self, task_hash: str, model: Datamodel, provenance: dict[str, Any] | Provenance | None,
        owner: str = LOCAL, address: str = LOCAL,
    ) -> str:  # fmt: skip
        """Publish a complete outside datamodel as it is (no training here); its content hash."""
        task = self.tasks.task(task_hash)
        if (model.n_targets, model.n_train) != (task.n_targets, task.n_train):
            raise Invalid(
                f"the datamodel is (Z, N) = ({model.n_targets}, {model.n_train}); this task "
                f"needs ({task.n_targets}, {task.n_train})"
            )
        prov = (
            provenance if isinstance(provenance, Provenance) else self.provenance(provenance, owner)
        )
        if owner != LOCAL:
            self.gate.admit(owner, address)
        model = self.tamper(model, f"{task_hash}:{Method.IMPORT.value}")
        return self._publish(task_hash, Method.IMPORT.value, prov.outside_trainings, model, prov)

    def publish_scores(
        self, task_hash: str, scores: LoadedScores, budget: int, p: float, seed: bytes,
        provenance: Provenance, progress: Callable[[int, int], None] | None = None,
    ) -> tuple[str, AttributionResult]:  # fmt: skip
        """Calibrate ``scores`` with ``budget`` trainings here and publish them with their
        provenance (the CLI's ``publish --scores`` and the job of an upload)."""
        task = self.tasks.task(task_hash)
        result = import_scores(task, scores, budget, p, seed, progress)
        prov = provenance.model_copy(update={
            "calibration_trainings": budget, "orientation": scores.orientation.value,
            "calibration": {k: float(result.details[k]) for k in CALIBRATION_FIGURES},
            "scores_sha256": sha256_hex(array_to_npy("scores", scores.scores)[1]),
        })  # fmt: skip
        model = self.tamper(result.datamodel, f"{task_hash}:{Method.IMPORT.value}")
        trainings = result.trainings + prov.outside_trainings
        return self._publish(task_hash, Method.IMPORT.value, trainings, model, prov), result

    def _check_budget(self, budget: int, p: float, least: int = 1) -> None:
        if not least <= budget:
            raise Invalid(f"budget must be at least {least} training(s)")
        if budget > self.settings.max_budget:
            raise TooLarge(f"budget {budget} exceeds this Prover's {self.settings.max_budget}")
        if not 0 < p < 1:
            raise Invalid("p must lie in (0, 1)")

    def attribution(self, content_hash: str) -> tuple[SignedMessage, bytes]:
        with self.db() as s:
            row = s.get(AttributionRow, content_hash)
        if row is None:
            raise NotFound(f"unknown attribution {content_hash!r}")
        return SignedMessage.model_validate_json(row.signed_json), self.arrays.get(content_hash)

    def row(self, content_hash: str, task_hash: str) -> AttributionRow:
        with self.db() as s:
            row = s.get(AttributionRow, content_hash)
        if row is None or row.task_hash != task_hash:
            raise NotFound(f"unknown attribution {content_hash!r} for this task")
        return row

    def latest(self, task_hash: str) -> str:
        with self.db() as s:
            row = s.scalars(
                select(AttributionRow)
                .where(AttributionRow.task_hash == task_hash)
                .order_by(AttributionRow.created_at.desc())
            ).first()
        if row is None:
            raise NotFound(f"no attribution for task {task_hash!r} yet; POST /v1/attributions")
        return row.content_hash

    def run(self, job: JobRow) -> None:
        """Run an attribution job (the attribution lane's handler) and publish its result."""
        params = AttributionJob.of(job)
        task = self.tasks.task(params.task_hash, wait=True)
        seed = params.seed_bytes
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if self.jobs.stopping:
                raise JobCancelled(job.id)  # shutting down: the job restarts with the service
            if now() - last[0] > 0.5 or done == total:
                last[0] = now()
                if not self.jobs.set(job.id, done=done, total=total):
                    raise JobCancelled(job.id)

        if params.method == Method.IMPORT.value:
            if params.scores is None or params.orientation is None or params.provenance is None:
                raise Invalid("an import job names its scores, their orientation and provenance")
            raw = np.load(io.BytesIO(self.arrays.get(params.scores)), allow_pickle=False)
            how = Orientation(params.orientation)
            loaded = LoadedScores(np.asarray(raw, dtype=np.float64), how,
                                  params.orientation_inferred, "the upload")  # fmt: skip
            content_hash, _ = self.publish_scores(
                params.task_hash, loaded, params.budget, params.p, seed, params.provenance,
                progress,
            )  # fmt: skip
            self.jobs.set(job.id, status="done", result=content_hash, done=job.total)
            return
        result = attribute(task, params.method, params.budget, params.p, seed, progress=progress)
        model = self.tamper(result.datamodel, f"{params.task_hash}:{params.method}")
        content_hash = self._publish(params.task_hash, params.method, result.trainings, model)
        self.jobs.set(job.id, status="done", result=content_hash, done=job.total)

    def _publish(
        self, task_hash: str, method: str, trainings: int, model: Datamodel,
        provenance: Provenance | None = None,
    ) -> str:  # fmt: skip
        content_hash = self.arrays.put(model.to_bytes())
        manifest = AttributionManifest(
            task_hash=task_hash, method=method, trainings=trainings, n_train=model.n_train,
            n_targets=model.n_targets, content_hash=content_hash, created_at=int(now()),
            provenance=provenance,
        )  # fmt: skip
        signed = sign_message(self.key, manifest)
        try:
            with self.db.begin() as s:
                if s.get(AttributionRow, content_hash) is None:
                    row = AttributionRow(content_hash=content_hash, task_hash=task_hash,
                                         method=method,
                                         signed_json=signed.model_dump_json())  # fmt: skip
                    s.add(row)
                    self.log.append(s, signed, content_hash)
        except IntegrityError:  # another process published the same datamodel meanwhile
            with self.db() as s:
                if s.get(AttributionRow, content_hash) is None:
                    raise
        return content_hash
