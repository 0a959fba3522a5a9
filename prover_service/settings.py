"""Settings of the Prover service: one pydantic-settings class, built by the caller.

Every field can come from the environment with the prefix ``VDA_PROVER_`` (e.g.
``VDA_PROVER_DB=postgresql+psycopg://...``). The signing key comes from ``key_file`` or from the
PEM text in the environment variable named by ``key_env``; there is no default key.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Configuration of one Prover service."""

    model_config = SettingsConfigDict(env_prefix="VDA_PROVER_", extra="forbid")

    db: str = "sqlite:///prover.db"
    key_file: Path | None = None
    key_env: str | None = None
    tasks: list[str] = Field(default_factory=lambda: ["planted"])
    adversary: str | None = None
    public_transcripts: bool = False
    timestamp_window_s: int = Field(default=600, ge=1)
    max_body_bytes: int = Field(default=8 * 2**20, ge=1024)
    array_dir: Path | None = None
    run_worker: bool = True
    check_tasks: bool = True  # refuse a task that breaks its declared tau (task_check.quick_check)

    def resolved_array_dir(self) -> Path:
        """Arrays live next to a SQLite database, else in ./arrays, unless set."""
        if self.array_dir is not None:
            return self.array_dir
        if self.db.startswith("sqlite:///") and self.db != "sqlite:///:memory:":
            return Path(self.db.removeprefix("sqlite:///")).resolve().parent / "arrays"
        return Path("arrays").resolve()
