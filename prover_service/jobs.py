"""Training jobs: admission under quotas, fair scheduling, cancellation and resume.

A job is a row of ``jobs`` (kind ``attribution`` or ``challenge``) owned by the Verifier key that
asked for it. :meth:`Jobs.add` admits it under the quotas (settings module doc) in one critical
section, so a burst cannot slip past them, and writes it; a refused request writes nothing.

**Scheduling.** Two lanes, one thread each, so that no job starves another:

- *challenges* advance one chunk at a time, round robin: each step serves the unfinished
  challenge served least recently, so a 12-subset challenge finishes within one chunk of a
  2-million-subset one;
- *attributions* run one at a time on their own lane, so a large budget never blocks a challenge.

**Resume.** A challenge job records every completed chunk (``chunks``) and continues from there
after a restart; a chunk whose arrays are damaged is trained again. An attribution job keeps
its trained chunks the same way (:mod:`prover_service.ledger`) and re-trains only the missing
ones (its method is deterministic in its seed, so the result is the same). Jobs
without an owner (from before authentication) are never resumed: they are marked failed.

**Where.** Trainings run on :attr:`Jobs.executor` (``settings.executor``, local or Ray): a
challenge step hands it up to ``executor.slots`` missing chunks at once and persists each as it
arrives, in any order; an attribution job runs with it as the current executor
(:func:`prover_service.executor.use_executor`). Progress counts the trainings of finished chunks.

**Cancel.** :meth:`Jobs.cancel` marks a job ``cancelled``; a challenge stops before its next chunk
and an attribution at its next progress report. A cancelled job's partial arrays (its chunks)
are deleted, by the cancel and again by its worker once it has stopped (a chunk that was in
flight), unless the job was resumed meanwhile; an array another chunk or a response still
names is kept. :meth:`Jobs.resume` (the owner's ``POST /v1/jobs/{id}/resume``, what
``vda-verifier verify --resume`` sends for a cancelled session) queues it again, within the
admission quotas, from its first chunk.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import sessionmaker

from prover_service.errors import Conflict, InsufficientStorage, NotFound, TooManyRequests
from prover_service.executor import Executor, executor_from_settings, use_executor
from prover_service.ledger import JobLedger, use_ledger
from prover_service.settings import Settings
from prover_service.store import ArrayStore, ChunkRow, JobRow, SessionArrayRow, SessionRow, now

__all__ = ["ACTIVE", "JobCancelled", "Jobs"]

ACTIVE = ("queued", "running")
DAY_S = 86_400.0


class JobCancelled(Exception):
    """Raised inside a running job once it has been cancelled (never leaves this package)."""


StepFn = Callable[[JobRow], bool]  # run one chunk of a challenge; True when the job is finished
RunFn = Callable[[JobRow], None]  # run a whole attribution


class Jobs:
    """The job table, its quotas, and the two worker lanes (module doc)."""

    def __init__(self, settings: Settings, db: sessionmaker, arrays: ArrayStore) -> None:  # type: ignore[type-arg]
        self.settings, self.db, self.arrays = settings, db, arrays
        self._admit = threading.Lock()
        self._wake = {"challenge": threading.Event(), "attribution": threading.Event()}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.step_challenge: StepFn | None = None
        self.run_attribution: RunFn | None = None
        self.executor: Executor = executor_from_settings(settings)
        self._fail_ownerless()

    # -- admission --------------------------------------------------------------------------
    def add(
        self, job: JobRow, extra: list[Any], owner: str, est_bytes: int,
        then: Callable[[Any], object] | None = None,
    ) -> None:  # fmt: skip
        """Write ``job`` (and ``extra`` rows) if the owner and the Prover are within quota;
        ``then(session)`` runs in the same transaction (the transparency log's append)."""
        s_ = self.settings
        with self._admit, self.db.begin() as s:
            queued = s.scalar(select(func.count()).where(JobRow.status.in_(ACTIVE))) or 0
            if queued >= s_.max_queued_jobs:
                raise TooManyRequests(f"the Prover's queue is full ({queued} jobs)", 60)
            mine = s.scalar(
                select(func.count()).where(JobRow.status.in_(ACTIVE), JobRow.owner == owner)
            )
            if (mine or 0) >= s_.max_active_jobs_per_key:
                raise TooManyRequests(
                    f"this key already has {mine} unfinished jobs (at most "
                    f"{s_.max_active_jobs_per_key}); wait for one or cancel it", 30
                )  # fmt: skip
            since = now() - DAY_S
            rows = s.execute(
                select(JobRow.total, JobRow.created_at).where(
                    JobRow.owner == owner, JobRow.created_at > since
                )
            ).all()
            spent = sum(int(r.total) for r in rows)
            if spent + job.total > s_.trainings_per_day:
                oldest = min((float(r.created_at) for r in rows), default=now())
                raise TooManyRequests(
                    f"this key asked for {spent} trainings in 24 h; {job.total} more would pass "
                    f"its quota of {s_.trainings_per_day}", int(oldest + DAY_S - now()) + 1
                )  # fmt: skip
            if self.arrays.used_bytes + est_bytes > s_.max_disk_bytes:
                raise InsufficientStorage(
                    f"the array store holds {self.arrays.used_bytes} bytes; this job's "
                    f"~{est_bytes} more would pass the quota of {s_.max_disk_bytes}"
                )
            job.owner = owner
            s.add_all([job, *extra])
            if then is not None:
                then(s)
        self._wake[job.kind].set()

    # -- state ------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRow:
        with self.db() as s:
            row = s.get(JobRow, job_id)
        if row is None:
            raise NotFound(f"unknown job {job_id!r}")
        return row

    def set(self, job_id: str, **fields: Any) -> bool:
        """Update a job unless it was cancelled or failed meanwhile; False if it was."""
        with self.db.begin() as s:
            result = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status.in_(("queued", "running", "done")))
                .values(**fields, updated_at=now())
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def check_cancelled(self, job_id: str) -> None:
        """Raise :class:`JobCancelled` if the job has been cancelled."""
        if self.get(job_id).status == "cancelled":
            raise JobCancelled(job_id)

    def cancel(self, job_id: str, owner: str) -> JobRow:
        """Cancel an unfinished job of ``owner``; 404 for another key's job."""
        row = self.get(job_id)
        if row.owner != owner:
            raise NotFound(f"unknown job {job_id!r}")
        with self.db.begin() as s:
            s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status.in_(ACTIVE))
                .values(status="cancelled", error="cancelled by its owner", updated_at=now())
            )
            s.execute(
                update(SessionRow)
                .where(SessionRow.job_id == job_id, SessionRow.status == "training")
                .values(status="cancelled")
            )
        self.discard_partial(job_id)
        return self.get(job_id)

    def resume(self, job_id: str, owner: str) -> JobRow:
        """Queue a cancelled job of ``owner`` again (its session back to ``training``), within
        the queue and per-key quotas; an unfinished job is left as it is; 404 for another key's
        job, 409 for a finished or failed one."""
        row = self.get(job_id)
        if row.owner != owner:
            raise NotFound(f"unknown job {job_id!r}")
        if row.status in ACTIVE:
            return row
        if row.status != "cancelled":
            raise Conflict(f"job {job_id!r} is {row.status}: only a cancelled job resumes")
        s_ = self.settings
        with self._admit, self.db.begin() as s:
            queued = s.scalar(select(func.count()).where(JobRow.status.in_(ACTIVE))) or 0
            if queued >= s_.max_queued_jobs:
                raise TooManyRequests(f"the Prover's queue is full ({queued} jobs)", 60)
            mine = s.scalar(
                select(func.count()).where(JobRow.status.in_(ACTIVE), JobRow.owner == owner)
            )
            if (mine or 0) >= s_.max_active_jobs_per_key:
                raise TooManyRequests(
                    f"this key already has {mine} unfinished jobs (at most "
                    f"{s_.max_active_jobs_per_key}); wait for one or cancel it", 30
                )  # fmt: skip
            s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == "cancelled")
                .values(status="queued", error=None, done=0, updated_at=now())
            )
            s.execute(
                update(SessionRow)
                .where(SessionRow.job_id == job_id, SessionRow.status == "cancelled")
                .values(status="training")
            )
        self._wake[row.kind].set()
        return self.get(job_id)

    def discard_partial(self, job_id: str) -> int:
        """Delete a cancelled job's chunks and the arrays no one else names; how many chunks.

        Nothing is deleted unless the job is still cancelled (read under a row lock, so a
        resume racing this keeps its chunks)."""
        with self.db.begin() as s:
            status = s.scalar(select(JobRow.status).where(JobRow.id == job_id).with_for_update())
            if status != "cancelled":
                return 0
            chunks = list(s.scalars(select(ChunkRow).where(ChunkRow.job_id == job_id)))
            shas = {sha for c in chunks for sha in (c.values_sha, c.probes_sha)}
            s.execute(delete(ChunkRow).where(ChunkRow.job_id == job_id))
        with self.db() as s:
            named = set(s.scalars(select(ChunkRow.values_sha).where(ChunkRow.values_sha.in_(shas))))
            named |= set(
                s.scalars(select(ChunkRow.probes_sha).where(ChunkRow.probes_sha.in_(shas)))
            )
            named |= set(
                s.scalars(select(SessionArrayRow.sha).where(SessionArrayRow.sha.in_(shas)))
            )
        for sha in shas - named:
            self.arrays.discard(sha)
        return len(chunks)

    def _fail_ownerless(self) -> None:
        with self.db.begin() as s:
            s.execute(
                update(JobRow)
                .where(JobRow.status.in_(ACTIVE), JobRow.owner.is_(None))
                .values(status="failed", error="interrupted; unauthenticated jobs never resume")
            )

    def _next(self, kind: str) -> JobRow | None:
        order = JobRow.updated_at if kind == "challenge" else JobRow.created_at
        with self.db() as s:
            return s.scalars(
                select(JobRow)
                .where(JobRow.status.in_(ACTIVE), JobRow.kind == kind)
                .order_by(order)
                .limit(1)
            ).first()

    # -- running ----------------------------------------------------------------------------
    def _run_one(self, kind: str) -> bool:
        """Advance the next job of a lane by one step; False if the lane is empty."""
        job = self._next(kind)
        if job is None:
            return False
        try:
            if kind == "challenge":
                assert self.step_challenge is not None  # noqa: S101 - wired by the service
                self.set(job.id, status="running")
                self.step_challenge(job)
            else:
                assert self.run_attribution is not None  # noqa: S101
                self.set(job.id, status="running")
                kept = JobLedger(self.db, self.arrays, job.id)
                with use_executor(self.executor), use_ledger(kept):
                    self.run_attribution(job)
        except JobCancelled:
            self.discard_partial(job.id)  # what was in flight when it was cancelled
        except Exception as exc:  # noqa: BLE001 - a failed job is recorded, not fatal
            self.set(job.id, status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
        return True

    def run_pending(self, max_chunks: int | None = None) -> bool:
        """Run every queued job to the end here (tests, tools); True if any work was done.

        ``max_chunks`` stops the challenge lane after that many chunks (a simulated kill).
        """
        worked = False
        while self._run_one("attribution"):
            worked = True
        chunks = 0
        while max_chunks is None or chunks < max_chunks:
            if not self._run_one("challenge"):
                break
            worked, chunks = True, chunks + 1
        return worked

    def _lane(self, kind: str) -> None:
        while not self._stop.is_set():
            if not self._run_one(kind):
                self._wake[kind].wait(timeout=1.0)
                self._wake[kind].clear()

    def start(self) -> None:
        if not self._threads:
            for kind in ("challenge", "attribution"):
                t = threading.Thread(target=self._lane, args=(kind,), name=f"prover-{kind}")
                t.daemon = True
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for event in self._wake.values():
            event.set()
        for t in self._threads:
            t.join(timeout=60)
        self.executor.close()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()
