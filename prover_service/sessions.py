"""Verification sessions: challenges in, training chunk by chunk, responses out, verdicts in.

Every state change is a conditional write, so concurrent requests race safely:

- a challenge's nonce is inserted in the transaction that creates its session; a second insert
  of the nonce fails on the primary key and the request gets 409 (never 500). The nonce is
  looked up *before* the time stamp is checked, so a Verifier resuming after the time window
  still learns that its challenge is held (409 naming the session) rather than "stale". While
  a challenge is being admitted its nonce is held in memory too, so copies racing it get 409
  at once and never spend the key's rate quota (429) on a replay;
- a verdict is recorded by ``UPDATE ... WHERE verdict_json IS NULL``: of two racing verdicts
  exactly one changes the row; the other gets 409, or 200 if it is the very same signed verdict
  (an idempotent re-post after a lost reply).

Reads (session, response, arrays, transcript) are for the session's own Verifier (a signed
request) unless the operator made transcripts public. Values are checked (finite, within
[-b, b], the right shape) before the response is signed, and every array read is re-hashed.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray
from pydantic import ValidationError
from sqlalchemy import Table, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from protocol.errors import ProtocolError
from protocol.messages import (
    Challenge,
    ResponseManifest,
    Verdict,
    array_to_npy,
    commit_spot_checks,
)
from protocol.sampling import ChallengeDesign, SharedBaseDesign
from protocol.signing import (
    BadSignatureError,
    SignedMessage,
    open_signed,
    public_key_hex,
    sign_message,
)
from protocol.tasks import TaskBase, TrainingOutputs
from prover_service.arrays import ArrayStore
from prover_service.auth import LOCAL, Gate
from prover_service.errors import (
    Conflict,
    CorruptArray,
    Forbidden,
    Invalid,
    Malformed,
    NotFound,
    TooLarge,
    Unauthorized,
)
from prover_service.executor import Chunk, Executor
from prover_service.job_params import ChallengeJob
from prover_service.jobs import JobCancelled, Jobs
from prover_service.log import TransparencyLog
from prover_service.published import Attributions
from prover_service.registry import TaskRegistry
from prover_service.settings import Settings
from prover_service.tables import (
    ChunkRow,
    JobRow,
    NonceRow,
    SessionArrayRow,
    SessionRow,
    insert_once,
    now,
)
from prover_service.witnesses import WitnessHook, WitnessOutputs, require_certifiable, solve_chunk

__all__ = ["LOCAL", "Sessions", "ValuesHook"]

CHUNK_MODELS = 1024
_CHUNKS = cast(Table, ChunkRow.__table__)
_SESSION_ARRAYS = cast(Table, SessionArrayRow.__table__)
ValuesHook = Callable[
    [NDArray[np.float64], SessionRow, TaskBase, ChallengeDesign | SharedBaseDesign], NDArray[Any]
]


def _load_npy(data: bytes) -> NDArray[Any]:
    return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))


def _schema(signed: SignedMessage, model: type[Challenge] | type[Verdict]) -> None:
    """422 unless the payload is a well-formed ``model`` (no extra fields): checked before the
    signature, whose canonical encoding costs time in the payload's size."""
    want = model.model_fields["type"].default
    if signed.type != want:
        raise Malformed(f"expected a {want} message; got {signed.type}")
    try:
        model.model_validate(signed.payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise Malformed(f"{want} payload: {where}: {first['msg']}") from None


def _identity(values: NDArray[np.float64], *_: Any) -> NDArray[np.float64]:
    return values


class Sessions:
    """Challenges, responses, verdicts and the reads of them (module doc)."""

    def __init__(
        self, *, settings: Settings, db: sessionmaker[Session], arrays: ArrayStore,
        key: Ed25519PrivateKey, log: TransparencyLog, gate: Gate, tasks: TaskRegistry,
        attributions: Attributions, jobs: Jobs, executor: Executor,
        values_hook: ValuesHook | None = None, witness_hook: WitnessHook | None = None,
    ) -> None:  # fmt: skip
        self.settings, self.db, self.arrays, self.key = settings, db, arrays, key
        self.public_key = public_key_hex(key)
        self.log, self.gate, self.tasks = log, gate, tasks
        self.attributions, self.jobs, self.executor = attributions, jobs, executor
        self.values_hook: ValuesHook = values_hook or _identity
        self.witness_hook = witness_hook
        self._pending: set[str] = set()  # nonces of challenges being admitted right now
        self._pending_lock = threading.Lock()

    # -- challenges -------------------------------------------------------------------------
    def submit(self, signed: SignedMessage, address: str = LOCAL) -> SessionRow:
        """Accept a signed challenge from ``address`` and queue its training job (module doc
        for the order): the schema first, then the signature, then anything that costs."""
        _schema(signed, Challenge)
        try:
            challenge = open_signed(signed, Challenge)
        except BadSignatureError as exc:
            raise Unauthorized(str(exc)) from None
        if signed.signer != challenge.verifier_key:
            raise Unauthorized("the challenge must be signed by the key it names")
        if challenge.prover_key is not None and challenge.prover_key != self.public_key:
            raise Forbidden("this challenge names another Prover's key")
        with self._pending_lock:  # a copy racing the first gets 409 before it spends any quota
            if challenge.nonce in self._pending:
                raise Conflict("nonce already used: a challenge is never accepted twice")
            self._pending.add(challenge.nonce)
        try:
            return self._submit(signed, challenge, address)
        finally:
            with self._pending_lock:
                self._pending.discard(challenge.nonce)

    def _submit(self, signed: SignedMessage, challenge: Challenge, address: str) -> SessionRow:
        settings = self.settings
        with self.db() as s:
            held = s.get(NonceRow, challenge.nonce)
            if held is not None:
                mine = s.scalars(
                    select(SessionRow.id).where(SessionRow.challenge_digest == signed.digest)
                ).first()
                where = f" (session {mine})" if mine else ""
                raise Conflict(f"nonce already used: a challenge is never accepted twice{where}")
        if abs(now() - challenge.timestamp) > settings.timestamp_window_s:
            raise Unauthorized(
                f"stale time stamp: outside +-{settings.timestamp_window_s} s of the Prover's clock"
            )
        if challenge.prover_key is None and settings.require_prover_key:
            raise Invalid("this Prover requires the challenge to name its key (prover_key)")
        self.gate.admit(challenge.verifier_key, address)
        task = self.tasks.task(challenge.task_hash)
        self.attributions.row(challenge.attribution_hash, challenge.task_hash)
        n_subsets = challenge.n_subsets  # 4 n on the shared-base layout, 6 n on pairs
        if n_subsets > settings.max_subsets:
            raise TooLarge(f"|E| = {n_subsets} exceeds this Prover's {settings.max_subsets}")
        if abs(challenge.bound - task.bound) > 1e-12 * max(1.0, task.bound):
            raise Invalid(f"challenge bound {challenge.bound} differs from the task's {task.bound}")
        if challenge.witness_limit is not None:
            require_certifiable(task)
        session = SessionRow(
            id=os.urandom(16).hex(), verifier_key=challenge.verifier_key,
            task_hash=challenge.task_hash, attribution_hash=challenge.attribution_hash,
            challenge_json=signed.model_dump_json(), challenge_digest=signed.digest,
            status="training", job_id=os.urandom(16).hex(),
        )  # fmt: skip
        job = JobRow(id=session.job_id, kind="challenge", total=n_subsets,
                     params_json=ChallengeJob(session_id=session.id).to_json())  # fmt: skip
        nonce = NonceRow(nonce=challenge.nonce, verifier_key=challenge.verifier_key)
        est = n_subsets * (task.n_targets * 8 + 64) * 2
        try:
            self.jobs.add(job, [nonce, session], challenge.verifier_key, est,
                          then=lambda s: self.log.append(s, signed, session.id))  # fmt: skip
        except IntegrityError:
            raise Conflict("nonce already used: a challenge is never accepted twice") from None
        return session

    # -- training ---------------------------------------------------------------------------
    def step(self, job: JobRow) -> bool:
        """Train the next missing chunk of a challenge job (or finish it); True when done."""
        row = self.get(ChallengeJob.of(job).session_id)
        challenge = Challenge.model_validate(json.loads(row.challenge_json)["payload"])
        task = self.tasks.task(row.task_hash, wait=True)  # a resumed job waits for the check
        design = challenge.design(task.n_train)
        with self.db() as s:
            done = {c.start for c in s.scalars(select(ChunkRow).where(ChunkRow.job_id == job.id))}
        step = max(CHUNK_MODELS, task.chunk_size)
        step -= step % 2
        todo = [(a, b) for a, b in design.chunks(step) if a not in done]
        if todo:
            self.jobs.check_cancelled(job.id)
            executor = self.executor
            wave = [Chunk(a, b, design.masks(a, b), design.seeds(a, b))
                    for a, b in todo[: executor.slots]]  # fmt: skip
            trained = [sum(b - a for a, b in design.chunks(step) if a in done)]

            def persist(
                chunk: Chunk, out: TrainingOutputs | WitnessOutputs
            ) -> None:  # as each arrives
                vsha = self.arrays.put(array_to_npy("values", out.values)[1])
                psha = self.arrays.put(array_to_npy("probes", out.probes)[1])
                wsha = None
                if isinstance(out, WitnessOutputs):
                    wsha = self.arrays.put(array_to_npy("witness", out.theta)[1])
                with self.db.begin() as s:  # a row another process wrote counts as done
                    insert_once(s, _CHUNKS, {"job_id": job.id, "start": chunk.start,
                                             "stop": chunk.stop, "values_sha": vsha,
                                             "probes_sha": psha, "witness_sha": wsha})  # fmt: skip
                trained[0] += chunk.stop - chunk.start
                if not self.jobs.set(job.id, done=trained[0]):
                    raise JobCancelled(job.id)

            if challenge.witness_limit is not None:  # the witness route: solved here
                for chunk in wave:
                    persist(chunk, solve_chunk(task, chunk.masks, chunk.seeds,
                                               challenge.witness_limit, self.witness_hook,
                                               f"{row.id}:{chunk.start}"))  # fmt: skip
            else:
                executor.map_chunks(task, wave, persist)
            if len(todo) > len(wave):
                return False
        self.jobs.check_cancelled(job.id)
        return self._finish(job, row, task, design)

    def _chunks(self, job_id: str) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any] | None] | None:
        """The chunks' arrays joined (witnesses None unless every chunk has them); None (and
        the damaged chunk forgotten) if one is damaged."""
        with self.db() as s:
            q = select(ChunkRow).where(ChunkRow.job_id == job_id).order_by(ChunkRow.start)
            chunks = list(s.scalars(q))
        parts: list[tuple[NDArray[Any], NDArray[Any], NDArray[Any] | None]] = []
        for c in chunks:
            try:
                wit = None if c.witness_sha is None else _load_npy(self.arrays.get(c.witness_sha))
                parts.append((_load_npy(self.arrays.get(c.values_sha)),
                              _load_npy(self.arrays.get(c.probes_sha)), wit))  # fmt: skip
            except (CorruptArray, KeyError, ValueError):
                with self.db.begin() as s:
                    s.delete(s.get(ChunkRow, (c.job_id, c.start)))
                return None
        wits = [p[2] for p in parts if p[2] is not None]
        joined = np.concatenate(wits) if wits and len(wits) == len(parts) else None
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), joined

    def _finish(
        self,
        job: JobRow,
        row: SessionRow,
        task: TaskBase,
        design: ChallengeDesign | SharedBaseDesign,
    ) -> bool:
        joined = self._chunks(job.id)
        if joined is None:
            return False  # a damaged chunk: it is trained again on the next step
        values = self.values_hook(joined[0], row, task, design)
        probes = joined[1].astype(np.float32)
        if values.shape != (len(design), task.n_targets) or len(probes) != len(design):
            raise ProtocolError(f"values of shape {values.shape}: not (|E|, Z)")
        if not np.all(np.isfinite(values)) or np.abs(values).max(initial=0.0) > task.bound:
            raise ProtocolError("values are not finite or lie outside [-b, b]; nothing signed")
        if not np.all(np.isfinite(probes)):
            raise ProtocolError("probes are not finite; nothing signed")
        vref, vdata = array_to_npy("values", values)
        pref, pdata = array_to_npy("probes", probes)
        self.arrays.put(vdata)
        self.arrays.put(pdata)
        wref, wbytes = None, None
        if joined[2] is not None:  # the witness route: theta(S) of every subset, bound here
            wref, wdata = array_to_npy("witness", joined[2].astype(np.float64))
            self.arrays.put(wdata)
            wbytes = len(wdata)
        manifest = ResponseManifest(session_id=row.id, challenge_digest=row.challenge_digest,
                                    values=vref, probes=pref, device_class=task.device_class,
                                    timestamp=int(now()), witness=wref,
                                    witness_bytes=wbytes)  # fmt: skip
        signed = sign_message(self.key, manifest)
        with self.db.begin() as s:
            live = s.get(JobRow, job.id)
            if live is None or live.status == "cancelled":
                raise JobCancelled(job.id)
            served: Any = s.execute(
                update(SessionRow)
                .where(SessionRow.id == row.id, SessionRow.response_json.is_(None))
                .values(response_json=signed.model_dump_json(), status="ready")
            )  # the first signed response wins; a second process's is dropped
            if served.rowcount != 1:
                return True
            shas = [vref.sha256, pref.sha256] + ([wref.sha256] if wref is not None else [])
            for sha in shas:
                insert_once(s, _SESSION_ARRAYS, {"sha": sha, "session_id": row.id})
            live.status, live.result, live.done = "done", vref.sha256, live.total
            live.updated_at = now()
            self.log.append(s, signed, row.id)  # logged in the same transaction
        return True

    # -- reads ------------------------------------------------------------------------------
    def get(self, session_id: str) -> SessionRow:
        with self.db() as s:
            row = s.get(SessionRow, session_id)
        if row is None:
            raise NotFound(f"unknown session {session_id!r}")
        return row

    def visible(self, verifier_key: str, requester: str | None) -> bool:
        return self.settings.public_transcripts or requester in (verifier_key, LOCAL)

    def read(self, session_id: str, requester: str | None = LOCAL) -> SessionRow:
        """The session, for its own Verifier (401 unsigned, 403 another key) or if public."""
        row = self.get(session_id)
        if not self.visible(row.verifier_key, requester):
            if requester is None:
                raise Unauthorized("sessions are visible to their Verifier only: sign the request")
            raise Forbidden("this session belongs to another Verifier")
        return row

    def response(self, session_id: str, requester: str | None = LOCAL) -> SignedMessage:
        row = self.read(session_id, requester)
        if row.response_json is None:
            job = self.jobs.get(row.job_id)
            raise Conflict(f"response not ready: {job.done}/{job.total} trainings ({job.status})")
        return SignedMessage.model_validate_json(row.response_json)

    def array(self, sha: str, requester: str | None = LOCAL) -> bytes:
        """A response's array, for the Verifier of a session that was served it."""
        if requester != LOCAL and not self.settings.public_transcripts:
            if requester is None:
                raise Unauthorized("arrays are visible to their Verifier only: sign the request")
            with self.db() as s:
                owners = set(s.scalars(
                    select(SessionRow.verifier_key).join(
                        SessionArrayRow, SessionArrayRow.session_id == SessionRow.id
                    ).where(SessionArrayRow.sha == sha)))  # fmt: skip
            if requester not in owners:
                raise NotFound(f"unknown array {sha!r}")
        try:
            return bytes(self.arrays.get(sha))
        except KeyError:
            raise NotFound(f"unknown array {sha!r}") from None

    # -- verdicts ---------------------------------------------------------------------------
    def post_verdict(self, session_id: str, signed: SignedMessage) -> SessionRow:
        """Record the verdict once (module doc); an identical re-post is accepted again."""
        row = self.get(session_id)
        _schema(signed, Verdict)
        try:
            verdict = open_signed(signed, Verdict, signer=row.verifier_key)
        except BadSignatureError as exc:
            raise Unauthorized(str(exc)) from None
        if row.response_json is None:
            raise Conflict("no response has been served for this session yet")
        response = SignedMessage.model_validate_json(row.response_json)
        if (verdict.session_id, verdict.challenge_digest, verdict.response_digest) != (
            session_id, row.challenge_digest, response.digest,
        ):  # fmt: skip
            raise Invalid("the verdict names another session, challenge or response")
        challenge = Challenge.model_validate(json.loads(row.challenge_json)["payload"])
        try:
            opened = commit_spot_checks(verdict.spot_check_indices, bytes.fromhex(verdict.salt))
        except ProtocolError as exc:
            raise Invalid(str(exc)) from None
        if opened != challenge.spot_check_commitment:
            raise Invalid("the spot-check set and salt do not open the challenge's commitment")
        with self.db.begin() as s:
            result = s.execute(
                update(SessionRow)
                .where(SessionRow.id == session_id, SessionRow.verdict_json.is_(None))
                .values(
                    verdict_json=signed.model_dump_json(), verdict=verdict.verdict, status="decided"
                )  # fmt: skip
            )
            if result.rowcount:  # type: ignore[attr-defined]  # Session.execute is typed Result; DML gives a CursorResult
                self.log.append(s, signed, session_id)
        if not result.rowcount:  # type: ignore[attr-defined]  # Session.execute is typed Result; DML gives a CursorResult
            held = self.get(session_id).verdict_json
            if held is None or SignedMessage.model_validate_json(held).digest != signed.digest:
                raise Conflict("a verdict was already recorded for this session")
        return self.get(session_id)

    def list(
        self, requester: str | None, task: str | None, status: str | None, verdict: str | None
    ) -> list[SessionRow]:
        q = select(SessionRow).order_by(SessionRow.created_at)
        if task:
            q = q.where(SessionRow.task_hash == task)
        if status:
            q = q.where(SessionRow.status == status)
        if verdict:
            q = q.where(SessionRow.verdict == verdict)
        if not self.settings.public_transcripts and requester != LOCAL:
            q = q.where(SessionRow.verifier_key == (requester or ""))
        with self.db() as s:
            return list(s.scalars(q))

    def transcript(self, session_id: str, requester: str | None) -> dict[str, Any]:
        return self.transcript_of(self.read(session_id, requester))

    def transcript_of(self, row: SessionRow) -> dict[str, Any]:
        """The transcript of a session row (``TranscriptOut``'s fields): what
        ``GET /v1/sessions/{id}/transcript`` answers and the ``/audit`` page audits."""
        attribution, _ = self.attributions.attribution(row.attribution_hash)
        return {
            "session_id": row.id, "status": row.status, "verdict": row.verdict,
            "prover_key": self.public_key, "attribution": attribution.model_dump(),
            "challenge": json.loads(row.challenge_json),
            "response": json.loads(row.response_json) if row.response_json else None,
            "verdict_message": json.loads(row.verdict_json) if row.verdict_json else None,
        }  # fmt: skip
