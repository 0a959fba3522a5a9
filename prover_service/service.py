"""The Prover's domain layer: one object that holds the key, the tasks, the stores and the parts.

No HTTP here (``api/`` maps these methods and :mod:`prover_service.errors` to routes). The parts:

- :mod:`prover_service.auth` -- who is asking (signed requests), the allow-list, request rates;
- :mod:`prover_service.jobs` -- admission under quotas, the two worker lanes, cancel, resume;
- :mod:`prover_service.sessions` -- challenges, training chunks, responses, verdicts, reads;
- this module -- info, tasks, and published attributions (the commit step).

All state is in the database and the array store, so a new :class:`ProverService` on the same
database continues where a killed one stopped. A cheating Prover (``settings.adversary``, for
tests and demos) is two hooks, on the published datamodel and on the values: the honest path
calls the identity and never branches on it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from protocol.codec import sha256_hex
from protocol.datamodel import Datamodel
from protocol.errors import ProtocolError
from protocol.messages import (
    LIMITS,
    AttributionManifest,
    Provenance,
    ResponseManifest,
    array_from_npy,
    array_to_npy,
)
from protocol.sampling import ChallengeDesign, SharedBaseDesign
from protocol.signing import SignedMessage, load_private_key, public_key_hex, sign_message
from protocol.tasks import TaskBase, load_task, spec_hash
from prover_service.adversary import parse_adversary
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
from prover_service.audit_cache import AuditCache
from prover_service.audit_page import audit_session
from prover_service.auth import Gate
from prover_service.errors import Forbidden, Invalid, NotFound, TooLarge, Unauthorized
from prover_service.jobs import JobCancelled, Jobs
from prover_service.log import TransparencyLog
from prover_service.sessions import LOCAL, Sessions, ValuesHook
from prover_service.settings import Settings
from prover_service.tables import (
    AttributionRow,
    JobRow,
    SessionRow,
    check_database,
    make_engine,
    now,
)
from prover_service.task_check import StartupChecks

__all__ = ["LOCAL", "ProverService"]

ModelHook = Callable[[Datamodel, str], Datamodel]
#: The calibration figures signed into an imported attribution's provenance.
CALIBRATION_FIGURES = ("median_r2", "r2_p10", "r2_p90", "negative_scales", "sign_disagreements")


class ProverService:
    """One Prover: its key, its tasks, its database and array store, and its workers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key = load_private_key(settings.key_file, settings.key_env)
        self.public_key = public_key_hex(self.key)
        self.tasks: dict[str, TaskBase] = {}
        labels: dict[str, str] = {}
        for ref in settings.tasks:
            task = load_task(ref)
            self.tasks[spec_hash(task)] = task
            labels[spec_hash(task)] = ref
        # Checked in the background (task_check.StartupChecks): /v1/info answers at once, work
        # on a task is refused with 503 until its check has passed.
        self.checks = StartupChecks(self.tasks if settings.check_tasks else {}, labels)
        self.engine, self.db = make_engine(settings.db)
        check_database(self.engine)
        self.log = TransparencyLog(self.db, self.key)
        self.arrays = ArrayStore(settings.resolved_array_dir())
        self.gate = Gate(settings)
        self.jobs = Jobs(settings, self.db, self.arrays)
        self.jobs.run_attribution = self._run_attribution
        model_hook, values_hook = self._hooks(settings.adversary)
        self.tamper_attribution: ModelHook = model_hook
        witness_hook = None  # the witness route's cheats (prover_service.adversary)
        if settings.adversary and parse_adversary(settings.adversary).has("witness"):
            witness_hook = parse_adversary(settings.adversary).tamper_witness
        self.sessions = Sessions(self, self.jobs, values_hook, witness_hook)
        self.audits = AuditCache(audit_session)

    def _hooks(self, spec: str | None) -> tuple[ModelHook, ValuesHook | None]:
        if not spec:
            return (lambda model, _label: model), None
        adversary = parse_adversary(spec)

        def values(
            v: NDArray[np.float64],
            row: SessionRow,
            task: TaskBase,
            design: ChallengeDesign | SharedBaseDesign,
        ) -> NDArray[np.float64]:
            _, dm_bytes = self.attribution(row.attribution_hash)
            predictions = Datamodel.from_bytes(dm_bytes).predict(design.masks())
            earlier = self._earlier_values(row.id) if adversary.has("replay") else None
            aggregate = json.loads(row.challenge_json)["payload"].get("aggregate", "mean")
            return adversary.tamper_values(v, task.bound, predictions, earlier, row.id,
                                           design=design, aggregate=aggregate)  # fmt: skip

        return adversary.tamper_attribution, values

    def _earlier_values(self, session_id: str) -> NDArray[np.float64] | None:
        with self.db() as s:
            prev = s.scalars(
                select(SessionRow)
                .where(SessionRow.response_json.is_not(None), SessionRow.id != session_id)
                .order_by(SessionRow.created_at)
            ).first()
        if prev is None or prev.response_json is None:
            return None
        ref = ResponseManifest.model_validate(json.loads(prev.response_json)["payload"]).values
        return array_from_npy(ref, self.arrays.get(ref.sha256)).astype(np.float64)

    # -- info -------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        import torch

        s = self.settings
        first = next(iter(self.tasks.values()), None)
        return {
            "protocol_version": 1,
            "public_key": self.public_key,
            "tasks": [
                {
                    "task_hash": h,
                    "name": t.name,
                    "n_train": t.n_train,
                    "n_targets": t.n_targets,
                    "bound": t.bound,
                    "tau": t.tau,
                    "spec": t.spec(),
                }
                for h, t in self.tasks.items()
            ],  # fmt: skip
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "device_class": first.device_class if first else "none",
            "limits": LIMITS
            | {
                "max_subsets": s.max_subsets,
                "max_budget": s.max_budget,
                "rate_per_minute": s.rate_per_minute,
                "max_active_jobs_per_key": s.max_active_jobs_per_key,
                "trainings_per_day": s.trainings_per_day,
            },  # fmt: skip
            "access": "allow-list" if self.gate.allow else "open registration",
            "public_transcripts": s.public_transcripts,
        }

    def close(self) -> None:
        """Close the database's pooled connections (a service replaced in the same process,
        e.g. a restart in a test; the app's own process exit closes them otherwise)."""
        self.engine.dispose()

    def task(self, task_hash: str, wait: bool = False) -> TaskBase:
        """A served task; 404 if unknown, 503 while its start-up check runs or if it failed.
        ``wait`` (the job workers: a job resumed at start-up) first waits for the checks."""
        if task_hash not in self.tasks:
            raise NotFound(f"unknown task hash {task_hash!r}; GET /v1/info lists this Prover's")
        if wait:
            self.checks.wait()
        self.checks.require(task_hash)
        return self.tasks[task_hash]

    # -- jobs -------------------------------------------------------------------------------
    def submit_attribution(
        self, task_hash: str, method: str, budget: int, p: float, seed: str, owner: str = LOCAL,
        address: str = LOCAL,
    ) -> JobRow:  # fmt: skip
        """Queue an attribution job for ``owner`` (a Verifier key, or the operator)."""
        task = self.task(task_hash)  # 404 for an unknown task
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
        params = {"task_hash": task_hash, "method": method, "budget": budget, "p": p, "seed": seed}
        job = JobRow(id=os.urandom(16).hex(), kind="attribution", total=budget,
                     params_json=json.dumps(params))  # fmt: skip
        self.jobs.add(job, [], owner, task.n_train * task.n_targets * 8 + 4096)
        return job

    # -- imported attributions (an outside tool's scores or datamodel) -------------------------
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
        task = self.task(task_hash)
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
        params = {"task_hash": task_hash, "method": Method.IMPORT.value, "budget": budget, "p": p,
                  "seed": seed, "scores": sha, "orientation": loaded.orientation.value,
                  "orientation_inferred": loaded.inferred,
                  "provenance": prov.model_dump(mode="json", exclude_none=True)}  # fmt: skip
        job = JobRow(id=os.urandom(16).hex(), kind="attribution", total=budget,
                     params_json=json.dumps(params))  # fmt: skip
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
        task = self.task(task_hash)
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
        model = self.tamper_attribution(model, f"{task_hash}:{Method.IMPORT.value}")
        return self._publish(task_hash, Method.IMPORT.value, prov.outside_trainings, model, prov)

    def publish_scores(
        self, task_hash: str, scores: LoadedScores, budget: int, p: float, seed: bytes,
        provenance: Provenance, progress: Callable[[int, int], None] | None = None,
    ) -> tuple[str, AttributionResult]:  # fmt: skip
        """Calibrate ``scores`` with ``budget`` trainings here and publish them with their
        provenance (the CLI's ``publish --scores`` and the job of an upload)."""
        task = self.task(task_hash)
        result = import_scores(task, scores, budget, p, seed, progress)
        prov = provenance.model_copy(update={
            "calibration_trainings": budget, "orientation": scores.orientation.value,
            "calibration": {k: float(result.details[k]) for k in CALIBRATION_FIGURES},
            "scores_sha256": sha256_hex(array_to_npy("scores", scores.scores)[1]),
        })  # fmt: skip
        model = self.tamper_attribution(result.datamodel, f"{task_hash}:{Method.IMPORT.value}")
        trainings = result.trainings + prov.outside_trainings
        return self._publish(task_hash, Method.IMPORT.value, trainings, model, prov), result

    def _check_budget(self, budget: int, p: float, least: int = 1) -> None:
        if not least <= budget:
            raise Invalid(f"budget must be at least {least} training(s)")
        if budget > self.settings.max_budget:
            raise TooLarge(f"budget {budget} exceeds this Prover's {self.settings.max_budget}")
        if not 0 < p < 1:
            raise Invalid("p must lie in (0, 1)")

    def job(self, job_id: str, requester: str | None = LOCAL) -> JobRow:
        """A job, for its owner (or anyone if transcripts are public)."""
        row = self.jobs.get(job_id)
        if requester == LOCAL or self.settings.public_transcripts or requester == row.owner:
            return row
        if requester is None:
            raise Unauthorized("jobs are visible to their owner only: sign the request")
        raise Forbidden("this job belongs to another key")

    def start_worker(self) -> None:
        self.jobs.start()

    def stop_worker(self) -> None:
        self.jobs.stop()

    def run_pending(self, max_chunks: int | None = None) -> bool:
        """Run queued or interrupted jobs here; True if any work was done."""
        return self.jobs.run_pending(max_chunks)

    # -- attributions -----------------------------------------------------------------------
    def attribution(self, content_hash: str) -> tuple[SignedMessage, bytes]:
        with self.db() as s:
            row = s.get(AttributionRow, content_hash)
        if row is None:
            raise NotFound(f"unknown attribution {content_hash!r}")
        return SignedMessage.model_validate_json(row.signed_json), self.arrays.get(content_hash)

    def attribution_row(self, content_hash: str, task_hash: str) -> AttributionRow:
        with self.db() as s:
            row = s.get(AttributionRow, content_hash)
        if row is None or row.task_hash != task_hash:
            raise NotFound(f"unknown attribution {content_hash!r} for this task")
        return row

    def latest_attribution(self, task_hash: str) -> str:
        with self.db() as s:
            row = s.scalars(
                select(AttributionRow)
                .where(AttributionRow.task_hash == task_hash)
                .order_by(AttributionRow.created_at.desc())
            ).first()
        if row is None:
            raise NotFound(f"no attribution for task {task_hash!r} yet; POST /v1/attributions")
        return row.content_hash

    def _run_attribution(self, job: JobRow) -> None:
        params = json.loads(job.params_json)
        task = self.task(params["task_hash"], wait=True)
        seed = bytes.fromhex(params["seed"]) if params["seed"] else bytes(32)
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if self.jobs.stopping:
                raise JobCancelled(job.id)  # shutting down: the job restarts with the service
            if now() - last[0] > 0.5 or done == total:
                last[0] = now()
                if not self.jobs.set(job.id, done=done, total=total):
                    raise JobCancelled(job.id)

        if params["method"] == Method.IMPORT.value:
            raw = np.load(io.BytesIO(self.arrays.get(params["scores"])), allow_pickle=False)
            inferred = bool(params.get("orientation_inferred"))
            how = Orientation(params["orientation"])
            loaded = LoadedScores(np.asarray(raw, dtype=np.float64), how, inferred, "the upload")
            prov = Provenance.model_validate(params["provenance"])
            content_hash, _ = self.publish_scores(
                params["task_hash"], loaded, params["budget"], params["p"], seed, prov, progress
            )
            self.jobs.set(job.id, status="done", result=content_hash, done=job.total)
            return
        result = attribute(
            task, params["method"], params["budget"], params["p"], seed, progress=progress
        )
        label = f"{params['task_hash']}:{params['method']}"
        model = self.tamper_attribution(result.datamodel, label)
        content_hash = self._publish(params["task_hash"], params["method"], result.trainings, model)
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

    # -- sessions (delegated; ``requester`` is a verified key, None, or LOCAL) ----------------
    def submit_challenge(self, signed: SignedMessage, address: str = LOCAL) -> SessionRow:
        return self.sessions.submit(signed, address)

    def session(self, session_id: str, requester: str | None = LOCAL) -> SessionRow:
        return self.sessions.read(session_id, requester)

    def response(self, session_id: str, requester: str | None = LOCAL) -> SignedMessage:
        return self.sessions.response(session_id, requester)

    def array(self, sha: str, requester: str | None = LOCAL) -> bytes:
        return self.sessions.array(sha, requester)

    def post_verdict(self, session_id: str, signed: SignedMessage) -> SessionRow:
        return self.sessions.post_verdict(session_id, signed)

    def list_sessions(
        self, requester: str | None, task: str | None, status: str | None, verdict: str | None
    ) -> list[SessionRow]:
        return self.sessions.list(requester, task, status, verdict)

    def transcript(self, session_id: str, requester: str | None) -> dict[str, Any]:
        return self.sessions.transcript(session_id, requester)

    def check_integrity(self) -> list[str]:
        """Re-hash every stored array: the names of the damaged ones (for ``serve``)."""
        return self.arrays.verify_all()
