"""The Prover's domain layer: attributions, challenges, responses, verdicts, audit.

No HTTP here (``api/`` maps these methods and :mod:`prover_service.errors` to routes). All state
is in the database and the array store, so a new :class:`ProverService` on the same database
continues where a killed one stopped: a challenge job resumes from its last completed chunk
and, training being deterministic, produces the same bytes.
"""

from __future__ import annotations

import io
import json
import os
import threading
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select

from protocol.datamodel import Datamodel
from protocol.errors import ProtocolError, TaskError
from protocol.evaluation import run_task
from protocol.messages import (
    LIMITS,
    AttributionManifest,
    Challenge,
    ResponseManifest,
    Verdict,
    array_from_npy,
    array_to_npy,
    commit_spot_checks,
)
from protocol.sampling import ChallengeDesign
from protocol.signing import (
    BadSignatureError,
    SignedMessage,
    load_private_key,
    open_signed,
    public_key_hex,
    request_bytes,
    sign_message,
    verify_bytes,
)
from protocol.tasks import TaskBase, load_task, spec_hash
from prover_service.adversary import Adversary, parse_adversary
from prover_service.attribution import Method, attribute
from prover_service.errors import Conflict, Invalid, NotFound, TooLarge, Unauthorized
from prover_service.settings import Settings
from prover_service.store import (
    ArrayStore,
    AttributionRow,
    ChunkRow,
    JobRow,
    NonceRow,
    SessionRow,
    make_engine,
    now,
)
from prover_service.task_check import quick_check

__all__ = ["ProverService"]

CHUNK_MODELS = 1024


def _load_npy(data: bytes) -> NDArray[Any]:
    return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))


def _hex_id() -> str:
    return os.urandom(16).hex()


class ProverService:
    """One Prover: its key, its tasks, its database and array store, and its worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key = load_private_key(settings.key_file, settings.key_env)
        self.public_key = public_key_hex(self.key)
        self.tasks: dict[str, TaskBase] = {}
        for ref in settings.tasks:
            task = load_task(ref)
            if settings.check_tasks:
                check = quick_check(task)
                if not check.ok:
                    raise TaskError(f"refusing to serve {ref!r}: {check.advice()}")
            self.tasks[spec_hash(task)] = task
        self.adversary: Adversary | None = (
            parse_adversary(settings.adversary) if settings.adversary else None
        )
        self.engine, self.db = make_engine(settings.db)
        self.arrays = ArrayStore(settings.resolved_array_dir())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- info -------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        import torch

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
            ],
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "device_class": self._device_class(next(iter(self.tasks.values()), None)),
            "limits": LIMITS,
            "public_transcripts": self.settings.public_transcripts,
        }

    @staticmethod
    def _device_class(task: TaskBase | None) -> str:
        return task.device_class if task else "none"

    def task(self, task_hash: str) -> TaskBase:
        if task_hash not in self.tasks:
            raise NotFound(f"unknown task hash {task_hash!r}; GET /v1/info lists this Prover's")
        return self.tasks[task_hash]

    # -- jobs -------------------------------------------------------------------------------
    def submit_attribution(
        self, task_hash: str, method: str, budget: int, p: float, seed: str
    ) -> JobRow:
        self.task(task_hash)  # 404 for an unknown task
        if method not in {m.value for m in Method} - {Method.IMPORT.value}:
            raise Invalid(f"unknown method {method!r}")
        if not 1 <= budget <= 10**7:
            raise Invalid("budget must be between 1 and 10^7 trainings")
        if not 0 < p < 1:
            raise Invalid("p must lie in (0, 1)")
        job = JobRow(
            id=_hex_id(),
            kind="attribution",
            total=budget,
            params_json=json.dumps(
                {"task_hash": task_hash, "method": method, "budget": budget, "p": p, "seed": seed}
            ),
        )
        with self.db.begin() as s:
            s.add(job)
        self._wake.set()
        return job

    def job(self, job_id: str) -> JobRow:
        with self.db() as s:
            row = s.get(JobRow, job_id)
        if row is None:
            raise NotFound(f"unknown job {job_id!r}")
        return row

    # -- attributions -----------------------------------------------------------------------
    def attribution(self, content_hash: str) -> tuple[SignedMessage, bytes]:
        with self.db() as s:
            row = s.get(AttributionRow, content_hash)
        if row is None:
            raise NotFound(f"unknown attribution {content_hash!r}")
        return SignedMessage.model_validate_json(row.signed_json), self.arrays.get(content_hash)

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

    def _publish(self, task_hash: str, method: str, trainings: int, model: Datamodel) -> str:
        if self.adversary:
            model = self.adversary.tamper_attribution(model, f"{task_hash}:{method}")
        data = model.to_bytes()
        content_hash = self.arrays.put(data)
        manifest = AttributionManifest(
            task_hash=task_hash,
            method=method,
            trainings=trainings,
            n_train=model.n_train,
            n_targets=model.n_targets,
            content_hash=content_hash,
            created_at=int(now()),
        )
        signed = sign_message(self.key, manifest)
        with self.db.begin() as s:
            if s.get(AttributionRow, content_hash) is None:
                s.add(
                    AttributionRow(
                        content_hash=content_hash,
                        task_hash=task_hash,
                        method=method,
                        signed_json=signed.model_dump_json(),
                    )
                )
        return content_hash

    # -- challenges -------------------------------------------------------------------------
    def submit_challenge(self, signed: SignedMessage) -> SessionRow:
        try:
            challenge = open_signed(signed, Challenge)
        except BadSignatureError as exc:
            raise Unauthorized(str(exc)) from None
        if signed.signer != challenge.verifier_key:
            raise Unauthorized("the challenge must be signed by the key it names")
        if abs(now() - challenge.timestamp) > self.settings.timestamp_window_s:
            raise Unauthorized(
                f"stale time stamp: outside +-{self.settings.timestamp_window_s} s of the "
                "Prover's clock"
            )
        task = self.task(challenge.task_hash)
        with self.db() as s:
            arow = s.get(AttributionRow, challenge.attribution_hash)
        if arow is None or arow.task_hash != challenge.task_hash:
            raise NotFound(f"unknown attribution {challenge.attribution_hash!r} for this task")
        if 6 * challenge.pairs_per_level > LIMITS["n_subsets"]:
            raise TooLarge(f"|E| = {6 * challenge.pairs_per_level} exceeds {LIMITS['n_subsets']}")
        if abs(challenge.bound - task.bound) > 1e-12 * max(1.0, task.bound):
            raise Invalid(f"challenge bound {challenge.bound} differs from the task's {task.bound}")
        session = SessionRow(
            id=_hex_id(),
            verifier_key=challenge.verifier_key,
            task_hash=challenge.task_hash,
            attribution_hash=challenge.attribution_hash,
            challenge_json=signed.model_dump_json(),
            challenge_digest=signed.digest,
            status="training",
            job_id=_hex_id(),
        )
        job = JobRow(
            id=session.job_id,
            kind="challenge",
            total=6 * challenge.pairs_per_level,
            params_json=json.dumps({"session_id": session.id}),
        )
        with self.db.begin() as s:
            if s.get(NonceRow, challenge.nonce) is not None:
                raise Conflict("nonce already used: a challenge is never accepted twice")
            s.add_all(
                [NonceRow(nonce=challenge.nonce, verifier_key=challenge.verifier_key), session, job]
            )
        self._wake.set()
        return session

    def session(self, session_id: str) -> SessionRow:
        with self.db() as s:
            row = s.get(SessionRow, session_id)
        if row is None:
            raise NotFound(f"unknown session {session_id!r}")
        return row

    def response(self, session_id: str) -> SignedMessage:
        row = self.session(session_id)
        if row.response_json is None:
            job = self.job(row.job_id)
            raise Conflict(f"response not ready: {job.done}/{job.total} trainings ({job.status})")
        return SignedMessage.model_validate_json(row.response_json)

    def array(self, sha: str) -> bytes:
        try:
            return self.arrays.get(sha)
        except KeyError:
            raise NotFound(f"unknown array {sha!r}") from None

    def post_verdict(self, session_id: str, signed: SignedMessage) -> SessionRow:
        row = self.session(session_id)
        try:
            verdict = open_signed(signed, Verdict, signer=row.verifier_key)
        except BadSignatureError as exc:
            raise Unauthorized(str(exc)) from None
        if row.response_json is None:
            raise Conflict("no response has been served for this session yet")
        response = SignedMessage.model_validate_json(row.response_json)
        if (verdict.session_id, verdict.challenge_digest, verdict.response_digest) != (
            session_id,
            row.challenge_digest,
            response.digest,
        ):
            raise Invalid("the verdict names another session, challenge or response")
        challenge = Challenge.model_validate(json.loads(row.challenge_json)["payload"])
        try:
            opened = commit_spot_checks(verdict.spot_check_indices, bytes.fromhex(verdict.salt))
        except ProtocolError as exc:
            raise Invalid(str(exc)) from None
        if opened != challenge.spot_check_commitment:
            raise Invalid("the spot-check set and salt do not open the challenge's commitment")
        with self.db.begin() as s:
            live = s.get(SessionRow, session_id)
            assert live is not None  # noqa: S101 - fetched above in this request
            if live.verdict_json is not None:
                raise Conflict("a verdict was already recorded for this session")
            live.verdict_json = signed.model_dump_json()
            live.verdict = verdict.verdict
            live.status = "decided"
        return self.session(session_id)

    # -- audit ------------------------------------------------------------------------------
    def authorise(
        self, key: str | None, timestamp: str | None, signature: str | None, method: str, path: str
    ) -> str | None:
        """The requester's key if its request signature verifies; None if unsigned."""
        if key is None and signature is None:
            return None
        if not (key and timestamp and signature):
            raise Unauthorized("send X-VDA-Key, X-VDA-Timestamp and X-VDA-Signature together")
        try:
            ts = int(timestamp)
            verify_bytes(key, signature, request_bytes(method, path, ts))
        except (ValueError, BadSignatureError):
            raise Unauthorized("request signature does not verify") from None
        if abs(now() - ts) > self.settings.timestamp_window_s:
            raise Unauthorized("stale request time stamp")
        return key

    def _visible(self, row: SessionRow, requester: str | None) -> bool:
        return self.settings.public_transcripts or requester == row.verifier_key

    def list_sessions(
        self, requester: str | None, task: str | None, status: str | None, verdict: str | None
    ) -> list[SessionRow]:
        q = select(SessionRow).order_by(SessionRow.created_at)
        if task:
            q = q.where(SessionRow.task_hash == task)
        if status:
            q = q.where(SessionRow.status == status)
        if verdict:
            q = q.where(SessionRow.verdict == verdict)
        with self.db() as s:
            rows = list(s.scalars(q))
        return [r for r in rows if self._visible(r, requester)]

    def transcript(self, session_id: str, requester: str | None) -> dict[str, Any]:
        row = self.session(session_id)
        if not self._visible(row, requester):
            raise Unauthorized("transcripts are visible to their verifier only (sign the request)")
        attribution, _ = self.attribution(row.attribution_hash)
        return {
            "session_id": row.id,
            "status": row.status,
            "verdict": row.verdict,
            "prover_key": self.public_key,
            "attribution": attribution.model_dump(),
            "challenge": json.loads(row.challenge_json),
            "response": json.loads(row.response_json) if row.response_json else None,
            "verdict_message": json.loads(row.verdict_json) if row.verdict_json else None,
        }

    # -- the worker -------------------------------------------------------------------------
    def start_worker(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="prover-worker", daemon=True)
            self._thread.start()

    def stop_worker(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.run_pending():
                self._wake.wait(timeout=1.0)
                self._wake.clear()

    def run_pending(self, max_chunks: int | None = None) -> bool:
        """Run queued or interrupted jobs; True if any work was done."""
        with self.db() as s:
            jobs = list(
                s.scalars(
                    select(JobRow)
                    .where(JobRow.status.in_(("queued", "running")))
                    .order_by(JobRow.created_at)
                )
            )
        for job in jobs:
            if self._stop.is_set():
                return True
            try:
                if job.kind == "attribution":
                    self._run_attribution(job)
                else:
                    if not self._run_challenge(job, max_chunks):
                        return True
            except Exception as exc:  # noqa: BLE001 - a failed job is recorded, not fatal
                self._update(job.id, status="failed", error=f"{type(exc).__name__}: {exc}")
        return bool(jobs)

    def _update(self, job_id: str, **fields: Any) -> None:
        with self.db.begin() as s:
            row = s.get(JobRow, job_id)
            if row is not None:
                for k, v in fields.items():
                    setattr(row, k, v)
                row.updated_at = now()

    def _run_attribution(self, job: JobRow) -> None:
        params = json.loads(job.params_json)
        task = self.task(params["task_hash"])
        self._update(job.id, status="running")
        seed = bytes.fromhex(params["seed"]) if params["seed"] else bytes(32)
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if now() - last[0] > 0.5 or done == total:
                last[0] = now()
                self._update(job.id, done=done, total=total)

        result = attribute(
            task, params["method"], params["budget"], params["p"], seed, progress=progress
        )
        content_hash = self._publish(
            params["task_hash"], params["method"], result.trainings, result.datamodel
        )
        self._update(job.id, status="done", result=content_hash, done=job.total)

    def _design(self, challenge: Challenge, task: TaskBase) -> ChallengeDesign:
        return challenge.design(task.n_train)

    def _run_challenge(self, job: JobRow, max_chunks: int | None) -> bool:
        """Train the remaining chunks; False if stopped early (``max_chunks``)."""
        session_id = json.loads(job.params_json)["session_id"]
        row = self.session(session_id)
        challenge = Challenge.model_validate(json.loads(row.challenge_json)["payload"])
        task = self.task(row.task_hash)
        design = self._design(challenge, task)
        self._update(job.id, status="running")
        with self.db() as s:
            done = {
                c.start: c for c in s.scalars(select(ChunkRow).where(ChunkRow.job_id == job.id))
            }
        step = max(CHUNK_MODELS, task.chunk_size)
        step -= step % 2
        ran = 0
        for start, stop in design.chunks(step):
            if start in done:
                continue
            if (max_chunks is not None and ran >= max_chunks) or self._stop.is_set():
                return False
            values, probes = self._train(task, design, start, stop)
            vsha = self.arrays.put(array_to_npy("values", values)[1])
            psha = self.arrays.put(array_to_npy("probes", probes)[1])
            with self.db.begin() as s:
                s.add(
                    ChunkRow(
                        job_id=job.id, start=start, stop=stop, values_sha=vsha, probes_sha=psha
                    )
                )
                live = s.get(JobRow, job.id)
                assert live is not None  # noqa: S101
                live.done, live.updated_at = stop, now()
            ran += 1
        self._finish_challenge(job, row, task, design)
        return True

    @staticmethod
    def _train(
        task: TaskBase, design: ChallengeDesign, start: int, stop: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
        out = run_task(task, design.masks(start, stop), design.seeds(start, stop))
        return out.values, out.probes

    def _finish_challenge(
        self,
        job: JobRow,
        row: SessionRow,
        task: TaskBase,
        design: ChallengeDesign,
    ) -> None:
        with self.db() as s:
            chunks = list(
                s.scalars(
                    select(ChunkRow).where(ChunkRow.job_id == job.id).order_by(ChunkRow.start)
                )
            )
        values = np.concatenate([_load_npy(self.arrays.get(c.values_sha)) for c in chunks])
        probes = np.concatenate([_load_npy(self.arrays.get(c.probes_sha)) for c in chunks])
        if self.adversary:
            values = self._cheat(values, row, task, design)
        vref, vdata = array_to_npy("values", values)
        pref, pdata = array_to_npy("probes", probes.astype(np.float32))
        self.arrays.put(vdata)
        self.arrays.put(pdata)
        manifest = ResponseManifest(
            session_id=row.id,
            challenge_digest=row.challenge_digest,
            values=vref,
            probes=pref,
            device_class=self._device_class(task),
            timestamp=int(now()),
        )
        signed = sign_message(self.key, manifest)
        with self.db.begin() as s:
            live = s.get(SessionRow, row.id)
            jrow = s.get(JobRow, job.id)
            assert live is not None and jrow is not None  # noqa: S101
            live.response_json, live.status = signed.model_dump_json(), "ready"
            jrow.status, jrow.result, jrow.done, jrow.updated_at = (
                "done",
                vref.sha256,
                jrow.total,
                now(),
            )

    def _cheat(
        self, values: NDArray[np.float64], row: SessionRow, task: TaskBase, design: ChallengeDesign
    ) -> NDArray[np.float64]:
        assert self.adversary is not None  # noqa: S101
        _, dm_bytes = self.attribution(row.attribution_hash)
        predictions = Datamodel.from_bytes(dm_bytes).predict(design.masks())
        earlier = None
        if self.adversary.has("replay"):
            with self.db() as s:
                prev = s.scalars(
                    select(SessionRow)
                    .where(SessionRow.response_json.is_not(None), SessionRow.id != row.id)
                    .order_by(SessionRow.created_at)
                ).first()
            if prev is not None and prev.response_json is not None:
                ref = ResponseManifest.model_validate(
                    json.loads(prev.response_json)["payload"]
                ).values
                earlier = array_from_npy(ref, self.arrays.get(ref.sha256)).astype(np.float64)
        return self.adversary.tamper_values(values, task.bound, predictions, earlier, row.id)
