"""Training jobs: admission under quotas, fair scheduling, cancellation and resume.

A job is a row of ``jobs`` (kind ``attribution`` or ``challenge``) owned by the Verifier key that
asked for it. :meth:`Jobs.add` admits it under the quotas (settings module doc) in one critical
section, so a burst cannot slip past them, and writes it; a refused request writes nothing.

**Fair share.** The queue holds ``max_queued_jobs`` unfinished jobs and ``max_queued_trainings``
unfinished trainings. A job that fits is admitted; one that does not is still admitted while its
key stays within its fair share: its first unfinished job, and beyond it 1/A of each (A: the
keys with unfinished work, its own included). Many keys that filled the queue therefore never
lock out another key's small challenge, and the overshoot is bounded by the number of keys,
whose creation is rate-limited per address (:meth:`prover_service.auth.Gate.admit`).

**Disk.** A job reserves the bytes it will write (``reserved_bytes``, the caller's estimate)
until it ends, in proportion to the trainings it has left; the quota ``max_disk_bytes`` counts
the store's bytes plus every unfinished job's reservation, so admitted jobs cannot overrun it.

**Claims.** A lane claims a job before it runs a step of it: one conditional ``UPDATE`` sets
``lease_owner`` (this process: host, pid, a random tag) and ``lease_until`` (``LEASE_S`` ahead)
only if the lease seen is still the one in the row, free, expired, or held by a process of this
host that no longer runs; a heartbeat thread (with the lanes) and every progress report renew
the leases held. So two Prover processes on one
database never run the same step at once, and a killed process's job is taken over (at once on
its host after a restart, elsewhere when its lease expires). A chunk row that already exists
counts as done (another process trained it), and a response is signed once
(:mod:`prover_service.sessions`). A challenge's lease is released after every step, so the
processes share a job's chunks.

**Failures.** A job that fails is ``failed`` with a reason for its owner: the protocol's or the
service's own message, else ``internal error (TypeName)``; a database error leaves the job
queued for another try. Neither ever carries SQL or a traceback (they go to the log).

**Scheduling.** Two lanes, one thread each, so that no job starves another:

- *challenges* advance one chunk at a time, round robin over keys: each step serves the key
  served least recently, and its job served least recently, so a 12-subset challenge finishes
  within one chunk per active key of a 2-million-subset one;
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

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from protocol.errors import ProtocolError
from prover_service.arrays import ArrayStore
from prover_service.errors import (
    Conflict,
    InsufficientStorage,
    NotFound,
    ServiceError,
    TooManyRequests,
)
from prover_service.executor import Executor, use_executor
from prover_service.ledger import JobLedger, use_ledger
from prover_service.settings import Settings
from prover_service.tables import ChunkRow, JobRow, SessionArrayRow, SessionRow, now

__all__ = ["ACTIVE", "Handler", "JobCancelled", "Jobs", "Lanes"]

ACTIVE = ("queued", "running")
DAY_S = 86_400.0
LEASE_S = 120.0  # a claim lasts this long unless renewed (the heartbeat renews every third)
log = logging.getLogger("prover_service")
_HOST = socket.gethostname()[:40]
_LIVE: set[str] = set()  # the worker ids of this process's Jobs (several in one process: tests)


def _left(row: Any) -> int:
    """The bytes an unfinished job has still to write: its reservation times its work left."""
    reserved, total = int(row.reserved_bytes or 0), int(row.total)
    if total <= 0:
        return reserved
    return reserved * max(0, total - int(row.done)) // total


class JobCancelled(Exception):
    """Raised inside a running job once it has been cancelled (never leaves this package)."""


#: One step of a job: a challenge's next chunk (True when finished), or a whole attribution.
Handler = Callable[[JobRow], object]
# An unfinished job as the quota checks read it: (owner, total, done, reserved_bytes).
_ActiveRow = Row[str | None, int, int, int | None]


class Jobs:
    """The job table, its quotas, and the two worker lanes (module doc)."""

    def __init__(self, settings: Settings, db: sessionmaker[Session], arrays: ArrayStore) -> None:
        self.settings, self.db, self.arrays = settings, db, arrays
        self._admit = threading.Lock()
        self._wake = {"challenge": threading.Event(), "attribution": threading.Event()}
        self._stop = threading.Event()
        self.worker_id = f"{_HOST}:{os.getpid()}:{os.urandom(4).hex()}"
        _LIVE.add(self.worker_id)
        self._held: set[str] = set()  # jobs whose lease this process holds
        self._held_lock = threading.Lock()
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
            active = s.execute(
                select(JobRow.owner, JobRow.total, JobRow.done, JobRow.reserved_bytes)
                .where(JobRow.status.in_(ACTIVE))
            ).all()  # fmt: skip
            mine = [r for r in active if r.owner == owner]
            if len(mine) >= s_.max_active_jobs_per_key:
                raise TooManyRequests(
                    f"this key already has {len(mine)} unfinished jobs (at most "
                    f"{s_.max_active_jobs_per_key}); wait for one or cancel it", 30
                )  # fmt: skip
            self._fair_share(active, mine, owner, job.total)
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
            reserved = sum(_left(r) for r in active)
            used = self.arrays.used_bytes
            if used + reserved + est_bytes > s_.max_disk_bytes:
                raise InsufficientStorage(
                    f"the array store holds {used} bytes and unfinished jobs will write "
                    f"~{reserved} more; this job's ~{est_bytes} would pass the quota of "
                    f"{s_.max_disk_bytes}"
                )
            job.reserved_bytes = est_bytes
            job.owner = owner
            s.add_all([job, *extra])
            if then is not None:
                then(s)
        self._wake[job.kind].set()

    def _fair_share(
        self, active: Sequence[_ActiveRow], mine: Sequence[_ActiveRow], owner: str, total: int
    ) -> None:
        """429 unless the job fits the queue, or its key stays within its fair share (module
        doc): one job, else 1/A of ``max_queued_jobs`` and of ``max_queued_trainings``."""
        s_ = self.settings
        work = sum(int(r.total) - int(r.done) for r in active)
        if len(active) < s_.max_queued_jobs and work + total <= s_.max_queued_trainings:
            return
        if not mine:
            return  # every key may have one job waiting (within max_subsets, max_budget)
        keys = len({r.owner for r in active} | {owner})
        my_work = sum(int(r.total) - int(r.done) for r in mine)
        jobs_share = max(1, s_.max_queued_jobs // keys)
        work_share = s_.max_queued_trainings // keys
        if len(mine) < jobs_share and my_work + total <= work_share:
            return
        raise TooManyRequests(
            f"the Prover's queue is full ({len(active)} jobs, {work} trainings) and this key "
            f"holds its fair share of it ({len(mine)} jobs, {my_work} trainings of "
            f"{jobs_share} and {work_share}, with {keys} keys waiting)", 60
        )  # fmt: skip

    # -- state ------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRow:
        with self.db() as s:
            row = s.get(JobRow, job_id)
        if row is None:
            raise NotFound(f"unknown job {job_id!r}")
        return row

    def set(self, job_id: str, **fields: Any) -> bool:
        """Update a job unless it was cancelled or failed meanwhile; False if it was. A job
        whose lease this process holds has it renewed (progress is a heartbeat too)."""
        t = now()
        with self._held_lock:
            if job_id in self._held and "lease_until" not in fields:
                fields["lease_until"] = t + LEASE_S
        with self.db.begin() as s:
            result = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status.in_(("queued", "running", "done")))
                .values(**fields, updated_at=t)
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]  # Session.execute is typed Result; DML gives a CursorResult

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

    def _stale(self, lease_owner: str | None, lease_until: float | None, t: float) -> bool:
        """Whether a lease may be taken: none, expired, ours, or of a dead process here."""
        if lease_owner is None or lease_until is None or lease_until < t:
            return True
        if lease_owner == self.worker_id:
            return True
        host, _, rest = lease_owner.partition(":")
        pid = rest.partition(":")[0]
        if host != _HOST or not pid.isdigit():
            return False
        if int(pid) == os.getpid():  # this process, or one that had our pid (a container's 1)
            return lease_owner not in _LIVE
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def claim(self, kind: str) -> JobRow | None:
        """Claim the next job of a lane (module doc): the least recently served key's least
        recently served challenge, or the oldest attribution; None if none is free."""
        t = now()
        with self.db() as s:
            rows = s.execute(
                select(JobRow.id, JobRow.owner, JobRow.updated_at, JobRow.created_at,
                       JobRow.lease_owner, JobRow.lease_until)
                .where(JobRow.status.in_(ACTIVE), JobRow.kind == kind)
            ).all()  # fmt: skip
        free = [r for r in rows if self._stale(r.lease_owner, r.lease_until, t)]
        if kind == "challenge":
            served: dict[str | None, float] = {}
            for r in rows:
                served[r.owner] = max(served.get(r.owner, 0.0), float(r.updated_at))
            free.sort(key=lambda r: (served[r.owner], float(r.updated_at)))
        else:
            free.sort(key=lambda r: float(r.created_at))
        c = JobRow
        for r in free:
            seen = (c.lease_owner.is_(None) if r.lease_owner is None
                    else c.lease_owner == r.lease_owner)  # fmt: skip
            until = (
                c.lease_until.is_(None) if r.lease_until is None else c.lease_until == r.lease_until
            )
            with self.db.begin() as s:
                result: Any = s.execute(
                    update(JobRow)
                    .where(c.id == r.id, c.status.in_(ACTIVE), seen, until)
                    .values(lease_owner=self.worker_id, lease_until=t + LEASE_S,
                            status="running", updated_at=t)
                )  # fmt: skip
            if result.rowcount == 1:
                with self._held_lock:
                    self._held.add(r.id)
                with self.db() as s:
                    return s.get(JobRow, r.id)
        return None

    def release(self, job_id: str) -> None:
        with self._held_lock:
            self._held.discard(job_id)
        with self.db.begin() as s:
            s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.lease_owner == self.worker_id)
                .values(lease_owner=None, lease_until=None)
            )

    def renew(self) -> None:
        """Extend every lease this process holds (the heartbeat)."""
        with self._held_lock:
            held = list(self._held)
        if held:
            with self.db.begin() as s:
                s.execute(
                    update(JobRow)
                    .where(JobRow.id.in_(held), JobRow.lease_owner == self.worker_id)
                    .values(lease_until=now() + LEASE_S)
                )

    def fail(self, job: JobRow, reason: str) -> None:
        """Mark a job failed with ``reason`` (and its challenge's session)."""
        self.set(job.id, status="failed", error=reason[:500])
        if job.kind == "challenge":
            with self.db.begin() as s:
                s.execute(
                    update(SessionRow)
                    .where(SessionRow.job_id == job.id, SessionRow.status == "training")
                    .values(status="failed")
                )

    # -- the lanes' side -------------------------------------------------------------------
    def wait_for_work(self, kind: str, timeout: float) -> None:
        """Block until a job of lane ``kind`` is added or resumed (or ``timeout`` s pass)."""
        self._wake[kind].wait(timeout=timeout)
        self._wake[kind].clear()

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` unless shutting down meanwhile; True if shutting down."""
        return self._stop.wait(seconds)

    def close(self) -> None:
        """Shutting down: running jobs stop at their next progress report, waits end."""
        self._stop.set()
        for event in self._wake.values():
            event.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()


class Lanes:
    """The worker lanes of one process (module doc, "Scheduling"): one thread per kind of job,
    each claiming the next job of its kind from ``jobs`` and running one step of it with its
    handler (``handlers[kind]``), on ``executor``; and a heartbeat that renews the leases held."""

    KINDS = ("challenge", "attribution")

    def __init__(self, jobs: Jobs, executor: Executor, handlers: Mapping[str, Handler]) -> None:
        if set(handlers) != set(self.KINDS):
            raise ValueError(
                f"Lanes need a handler for each of {self.KINDS}; got {sorted(handlers)}"
            )
        self.jobs, self.executor, self.handlers = jobs, executor, dict(handlers)
        self._threads: list[threading.Thread] = []
        self._heartbeat: threading.Thread | None = None

    def run_one(self, kind: str) -> bool:
        """Claim the next job of a lane and advance it by one step; False if none is free."""
        jobs = self.jobs
        job = jobs.claim(kind)
        if job is None:
            return False
        try:
            if kind == "challenge":
                self.handlers[kind](job)
            else:
                kept = JobLedger(jobs.db, jobs.arrays, job.id)
                with use_executor(self.executor), use_ledger(kept):
                    self.handlers[kind](job)
        except JobCancelled:
            jobs.discard_partial(job.id)  # what was in flight when it was cancelled
        except SQLAlchemyError as exc:  # infrastructure: the job stays queued for another try
            log.error("job %s: database error (%s); it will be retried", job.id,
                      str(exc).splitlines()[0][:200])  # fmt: skip
            jobs.pause(1.0)
        except (ProtocolError, ServiceError) as exc:
            detail = exc.detail if isinstance(exc, ServiceError) else str(exc)
            jobs.fail(job, f"{type(exc).__name__}: {detail}")
        except Exception as exc:  # noqa: BLE001 - a failed job is recorded, not fatal
            log.exception("job %s failed", job.id)
            jobs.fail(job, f"internal error ({type(exc).__name__})")
        finally:
            try:
                jobs.release(job.id)
            except SQLAlchemyError:
                log.warning("job %s: could not release its lease; it expires", job.id)
        return True

    def run_pending(self, max_chunks: int | None = None) -> bool:
        """Run every queued job to the end here (tests, tools); True if any work was done.

        ``max_chunks`` stops the challenge lane after that many chunks (a simulated kill).
        """
        worked = False
        while self.run_one("attribution"):
            worked = True
        chunks = 0
        while max_chunks is None or chunks < max_chunks:
            if not self.run_one("challenge"):
                break
            worked, chunks = True, chunks + 1
        return worked

    def _lane(self, kind: str) -> None:
        while not self.jobs.stopping:
            if not self.run_one(kind):
                self.jobs.wait_for_work(kind, timeout=1.0)

    def _beat(self) -> None:
        while not self.jobs.pause(LEASE_S / 3):
            try:
                self.jobs.renew()
            except SQLAlchemyError as exc:
                log.warning("could not renew job leases: %s", type(exc).__name__)

    def start(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(target=self._beat, name="prover-leases")
            self._heartbeat.daemon = True
            self._heartbeat.start()
        if not self._threads:
            for kind in self.KINDS:
                t = threading.Thread(target=self._lane, args=(kind,), name=f"prover-{kind}")
                t.daemon = True
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
        self.jobs.close()
        for t in self._threads:
            t.join(timeout=60)
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=10)
        self.executor.close()
