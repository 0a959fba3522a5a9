"""The Prover's composition root: one object that builds the parts and holds the key.

No HTTP here (``api/`` maps these methods and :mod:`prover_service.errors` to routes). Each part
is built with what it needs, and none holds a reference back to this object:

- :mod:`prover_service.registry` -- the served tasks and their start-up checks;
- :mod:`prover_service.auth` -- who is asking (signed requests), the allow-list, request rates;
- :mod:`prover_service.jobs` -- admission under quotas, cancel, resume, the leases, and the two
  worker lanes (:class:`~prover_service.jobs.Lanes`, given their handlers when built);
- :mod:`prover_service.published` -- attribution jobs, imports and the signed manifests;
- :mod:`prover_service.sessions` -- challenges, training chunks, responses, verdicts, reads;
- this module -- the wiring, ``info``, jobs for their owner, the workers' start and stop. The
  API, the CLI and the tests call the parts themselves (``service.sessions.submit``,
  ``service.attributions.submit``, ...).

All state is in the database and the array store, so a new :class:`ProverService` on the same
database continues where a killed one stopped. A cheating Prover (``settings.adversary``, for
tests and demos) is hooks, on the published datamodel, on the values and on the witnesses:
the honest path calls the identity and never branches on it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from protocol.datamodel import Datamodel
from protocol.messages import LIMITS, ResponseManifest, array_from_npy
from protocol.sampling import ChallengeDesign, SharedBaseDesign
from protocol.signing import load_private_key, public_key_hex
from protocol.tasks import TaskBase
from prover_service.arrays import ArrayStore
from prover_service.audit_cache import AuditCache
from prover_service.audit_page import SessionAudit, audit_session
from prover_service.auth import LOCAL, Gate
from prover_service.cheating import Adversary, parse_adversary
from prover_service.errors import Forbidden, Unauthorized
from prover_service.executor import executor_from_settings
from prover_service.jobs import Jobs, Lanes
from prover_service.log import TransparencyLog
from prover_service.published import Attributions
from prover_service.registry import TaskRegistry
from prover_service.sessions import Sessions, ValuesHook
from prover_service.settings import Settings
from prover_service.tables import JobRow, SessionRow, check_database, make_engine

__all__ = ["LOCAL", "ProverService"]


def _earlier_values(
    db: sessionmaker[Session], arrays: ArrayStore, session_id: str
) -> NDArray[np.float64] | None:
    """The values of the oldest other session served (the replaying adversary's)."""
    with db() as s:
        prev = s.scalars(
            select(SessionRow)
            .where(SessionRow.response_json.is_not(None), SessionRow.id != session_id)
            .order_by(SessionRow.created_at)
        ).first()
    if prev is None or prev.response_json is None:
        return None
    ref = ResponseManifest.model_validate(json.loads(prev.response_json)["payload"]).values
    return array_from_npy(ref, arrays.get(ref.sha256)).astype(np.float64)


def _values_hook(
    adversary: Adversary, attributions: Attributions, db: sessionmaker[Session],
    arrays: ArrayStore,
) -> ValuesHook:  # fmt: skip
    """The cheating Prover's hook on a response's values (``settings.adversary``)."""

    def values(
        v: NDArray[np.float64],
        row: SessionRow,
        task: TaskBase,
        design: ChallengeDesign | SharedBaseDesign,
    ) -> NDArray[np.float64]:
        _, dm_bytes = attributions.attribution(row.attribution_hash)
        predictions = Datamodel.from_bytes(dm_bytes).predict(design.masks())
        earlier = _earlier_values(db, arrays, row.id) if adversary.has("replay") else None
        aggregate = json.loads(row.challenge_json)["payload"].get("aggregate", "mean")
        return adversary.tamper_values(v, task.bound, predictions, earlier, row.id,
                                       design=design, aggregate=aggregate)  # fmt: skip

    return values


class ProverService:
    """One Prover: the composition root (module doc). It builds each part with what it needs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key = load_private_key(settings.key_file, settings.key_env)
        self.public_key = public_key_hex(self.key)
        self.registry = TaskRegistry(settings.tasks, check=settings.check_tasks)
        self.tasks, self.checks = self.registry.tasks, self.registry.checks
        self.engine, self.db = make_engine(settings.db)
        check_database(self.engine)
        self.log = TransparencyLog(self.db, self.key)
        self.arrays = ArrayStore(settings.resolved_array_dir())
        self.gate = Gate(settings)
        self.jobs = Jobs(settings, self.db, self.arrays)
        executor = executor_from_settings(settings)
        adversary = parse_adversary(settings.adversary) if settings.adversary else None
        self.attributions = Attributions(
            settings=settings, db=self.db, arrays=self.arrays, key=self.key, log=self.log,
            gate=self.gate, tasks=self.registry, jobs=self.jobs,
            tamper=adversary.tamper_attribution if adversary else None,
        )  # fmt: skip
        self.sessions = Sessions(
            settings=settings, db=self.db, arrays=self.arrays, key=self.key, log=self.log,
            gate=self.gate, tasks=self.registry, attributions=self.attributions, jobs=self.jobs,
            executor=executor,
            values_hook=_values_hook(adversary, self.attributions, self.db, self.arrays)
            if adversary else None,
            witness_hook=adversary.tamper_witness if adversary and adversary.has("witness")
            else None,
        )  # fmt: skip
        self.lanes = Lanes(self.jobs, executor, {"challenge": self.sessions.step,
                                                 "attribution": self.attributions.run})  # fmt: skip
        self.audits: AuditCache[ProverService, SessionAudit] = AuditCache(audit_session)

    # -- info -------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        # No task that trains with torch has imported it: they all train on the CPU, and the
        # first /v1/info need not pay torch's import (seconds, 200+ MB).
        torch = sys.modules.get("torch")
        cuda = torch is not None and bool(torch.cuda.is_available())
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
            "device": "cuda" if cuda else "cpu",
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
        """A served task (:meth:`prover_service.registry.TaskRegistry.task`)."""
        return self.registry.task(task_hash, wait)

    # -- jobs -------------------------------------------------------------------------------

    def job(self, job_id: str, requester: str | None = LOCAL) -> JobRow:
        """A job, for its owner (or anyone if transcripts are public)."""
        row = self.jobs.get(job_id)
        if requester == LOCAL or self.settings.public_transcripts or requester == row.owner:
            return row
        if requester is None:
            raise Unauthorized("jobs are visible to their owner only: sign the request")
        raise Forbidden("this job belongs to another key")

    def start_worker(self) -> None:
        self.lanes.start()

    def stop_worker(self) -> None:
        self.lanes.stop()

    def run_pending(self, max_chunks: int | None = None) -> bool:
        """Run queued or interrupted jobs here; True if any work was done."""
        return self.lanes.run_pending(max_chunks)

    # -- attributions -----------------------------------------------------------------------

    def check_integrity(self) -> list[str]:
        """Re-hash every stored array: the names of the damaged ones (for ``serve``)."""
        return self.arrays.verify_all()
