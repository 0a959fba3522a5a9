"""The parameters of a queued job, typed: what a worker needs to run it, written when the job is
admitted and read back (validated) when it runs, in the ``jobs.params_json`` column.

A challenge job names its session (whose row holds the signed challenge); an attribution job
holds the request (task, method, budget, p, seed) and, for an upload of scores (method
``import``), the stored scores' SHA-256, their orientation and the provenance to sign.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field

from protocol.messages import Provenance
from prover_service.tables import JobRow

__all__ = ["AttributionJob", "ChallengeJob"]


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def of(cls, job: JobRow) -> Self:
        """The parameters of ``job``, validated."""
        return cls.model_validate_json(job.params_json)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


class ChallengeJob(_Params):
    """Train a challenge's subsets and sign its response."""

    session_id: str = Field(min_length=1)


class AttributionJob(_Params):
    """Compute (or calibrate uploaded scores into) an attribution and publish it."""

    task_hash: str
    method: str
    budget: int = Field(ge=1)
    p: float = Field(gt=0, lt=1)
    seed: str = ""  # hex; empty: 32 zero bytes
    scores: str | None = None  # an upload: the SHA-256 of the stored scores
    orientation: str | None = None
    orientation_inferred: bool = False
    provenance: Provenance | None = None

    @property
    def seed_bytes(self) -> bytes:
        return bytes.fromhex(self.seed) if self.seed else bytes(32)
