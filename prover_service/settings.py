"""Settings of the Prover service: one pydantic-settings class, built by the caller.

Every field can come from the environment with the prefix ``VDA_PROVER_`` (e.g.
``VDA_PROVER_DB=postgresql+psycopg://...``, ``VDA_PROVER_VERIFIER_KEYS='["ab12..."]'``). The
signing key comes from ``key_file`` or from the PEM text in the environment variable named by
``key_env``; there is no default key.

**Who may spend the Prover's compute.** Every expensive request (a challenge, an attribution job)
is signed by a Verifier key. With an allow-list (``verifier_keys`` and/or ``verifier_keys_file``,
one hex public key per line, ``#`` comments) only those keys may; without one, registration is
open: any key may, within its quotas. Either way each key is held to ``rate_per_minute``
expensive requests, ``max_active_jobs_per_key`` unfinished jobs and ``trainings_per_day`` (429
with ``Retry-After``), the whole Prover to ``max_queued_jobs`` unfinished jobs (429) and
``max_disk_bytes`` of arrays (507), and each job to ``max_subsets`` |E| and ``max_budget``
trainings (413). Every reader (GET) is held to ``read_rate_per_minute``, counted per key when
the request is signed, else per client address (429 with ``Retry-After``). Nonces and rate
buckets live in the database, shared by every Prover process on it (:mod:`prover_service.auth`).

**Where trainings run** (``executor``): ``local`` (default) trains in this process; ``ray`` sends
chunks to Ray (``ray_address``: a cluster to join, else ``RAY_ADDRESS`` or a local instance;
``ray_workers`` chunks in flight, 0 for as many as the cluster's CPUs; each chunk asks for
``ray_num_cpus`` / ``ray_num_gpus`` and is retried ``ray_max_retries`` times if its worker dies).
See :mod:`prover_service.executor` and docs/scale-out.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Configuration of one Prover service."""

    model_config = SettingsConfigDict(env_prefix="VDA_PROVER_", extra="forbid")

    db: str = "sqlite:///prover.db"  # a SQLAlchemy URL, or a bare file path (taken as SQLite)
    key_file: Path | None = None
    key_env: str | None = None
    tasks: list[str] = Field(default_factory=lambda: ["planted"])
    adversary: str | None = None
    public_transcripts: bool = False  # anyone may read sessions, responses, arrays, transcripts
    timestamp_window_s: int = Field(default=600, ge=1)  # challenges
    request_window_s: int = Field(default=60, ge=1)  # signed requests (nonces kept this long)
    max_body_bytes: int = Field(default=8 * 2**20, ge=1024)
    # outside scores / datamodels from a signed caller (app.BodyLimit): float64 (Z, N) at
    # Z = 1,000 targets and N = 8,000 training examples is 61 MiB
    max_upload_bytes: int = Field(default=64 * 2**20, ge=1024)
    max_concurrent_uploads: int = Field(default=2, ge=1)  # bodies over max_body_bytes at once
    # signed messages, bounded before they are parsed: a challenge is ~1 KB; a verdict carries
    # up to LIMITS["spot_checks"] = 100,000 indices (< 1 MB)
    max_challenge_bytes: int = Field(default=16 * 2**10, ge=1024)
    max_verdict_bytes: int = Field(default=2**20, ge=1024)
    post_rate_per_minute: int = Field(default=60, ge=1)  # unsigned POSTs per client address
    # writes in the thread pool at once; the rest wait on the event loop (api.deps.write_lane)
    max_concurrent_writes: int = Field(default=4, ge=1)
    write_wait_s: float = Field(default=30.0, gt=0)  # then 503 with Retry-After
    # the server (prover_service.server, docs/service.md): time-outs and connection caps
    header_timeout_s: float = Field(default=10.0, gt=0)  # the request line and headers
    body_timeout_s: float = Field(default=30.0, gt=0)  # the whole body, from its first read
    keep_alive_s: float = Field(default=5.0, gt=0)  # an idle connection between requests
    max_connections: int = Field(default=1000, ge=1)  # open at once (and below the fd limit)
    max_connections_per_address: int = Field(default=64, ge=1)
    array_dir: Path | None = None
    run_worker: bool = True
    check_tasks: bool = True  # refuse a task that breaks its declared tau (task_check.quick_check)
    # access and quotas (module doc)
    verifier_keys: list[str] = Field(default_factory=list)
    verifier_keys_file: Path | None = None
    max_subsets: int = Field(default=250_000, ge=6)
    max_budget: int = Field(default=100_000, ge=1)
    rate_per_minute: int = Field(default=30, ge=1)
    read_rate_per_minute: int = Field(default=600, ge=1)  # GETs per key (signed) or address
    max_active_jobs_per_key: int = Field(default=2, ge=1)
    new_keys_per_hour: int = Field(default=8, ge=1)  # per client address, open registration
    max_queued_trainings: int = Field(default=4_000_000, ge=1)  # unfinished work (jobs.py)
    trainings_per_day: int = Field(default=2_000_000, ge=1)
    max_queued_jobs: int = Field(default=64, ge=1)
    max_disk_bytes: int = Field(default=50 * 2**30, ge=0)
    require_prover_key: bool = False  # refuse challenges that do not name this Prover's key
    # where trainings run (module doc)
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    ray_workers: int = Field(default=0, ge=0)
    ray_num_cpus: float = Field(default=1.0, ge=0)
    ray_num_gpus: float = Field(default=0.0, ge=0)
    ray_max_retries: int = Field(default=3, ge=0)

    @field_validator("db")
    @classmethod
    def _bare_path_is_sqlite(cls, value: str) -> str:
        if "://" in value:
            return value
        return "sqlite:///" + str(Path(value).expanduser())

    @field_validator("verifier_keys")
    @classmethod
    def _hex_keys(cls, value: list[str]) -> list[str]:
        keys = [k.strip().lower() for k in value]
        for k in keys:
            if len(k) != 64 or any(c not in "0123456789abcdef" for c in k):
                raise ValueError(f"verifier key {k[:16]!r}... is not 64 hex digits")
        return keys

    def resolved_array_dir(self) -> Path:
        """Arrays live next to a SQLite database, else in ./arrays, unless set."""
        if self.array_dir is not None:
            return self.array_dir
        if self.db.startswith("sqlite:///") and self.db != "sqlite:///:memory:":
            return Path(self.db.removeprefix("sqlite:///")).resolve().parent / "arrays"
        return Path("arrays").resolve()
