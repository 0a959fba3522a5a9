"""Storage: SQLAlchemy 2.0 tables (SQLite by default, any SQLAlchemy URL) and a
content-addressed directory for the binary arrays.

Tables: ``attributions`` (signed manifests), ``jobs`` (training work with progress),
``sessions`` (one verification each: challenge, response, verdict), ``chunks`` (the completed
chunks of a challenge job, which is how a restarted service resumes), ``nonces`` (every
challenge nonce ever accepted). Arrays are files named by the SHA-256 of their bytes, written
atomically (temporary file + rename), so a crash never leaves a half-written array behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

from sqlalchemy import Float, Integer, String, Text, create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

__all__ = [
    "ArrayStore",
    "AttributionRow",
    "Base",
    "ChunkRow",
    "JobRow",
    "NonceRow",
    "SessionRow",
    "make_engine",
    "now",
]


def now() -> float:
    """Wall-clock seconds (the one clock of the service)."""
    return time.time()


class Base(DeclarativeBase):
    """Declarative base of the Prover's tables."""


class AttributionRow(Base):
    __tablename__ = "attributions"
    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_hash: Mapped[str] = mapped_column(String(64), index=True)
    method: Mapped[str] = mapped_column(String(32))
    signed_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    params_json: Mapped[str] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now)


class SessionRow(Base):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    verifier_key: Mapped[str] = mapped_column(String(64), index=True)
    task_hash: Mapped[str] = mapped_column(String(64), index=True)
    attribution_hash: Mapped[str] = mapped_column(String(64))
    challenge_json: Mapped[str] = mapped_column(Text)
    challenge_digest: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True, default="training")
    job_id: Mapped[str] = mapped_column(String(32))
    response_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    verdict_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    verdict: Mapped[str | None] = mapped_column(String(8), nullable=True, index=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class ChunkRow(Base):
    __tablename__ = "chunks"
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    start: Mapped[int] = mapped_column(Integer, primary_key=True)
    stop: Mapped[int] = mapped_column(Integer)
    values_sha: Mapped[str] = mapped_column(String(64))
    probes_sha: Mapped[str] = mapped_column(String(64))


class NonceRow(Base):
    __tablename__ = "nonces"
    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    verifier_key: Mapped[str] = mapped_column(String(64))
    seen_at: Mapped[float] = mapped_column(Float, default=now)


def make_engine(url: str) -> tuple[Engine, sessionmaker]:  # type: ignore[type-arg]
    """Engine and session factory; creates the tables if missing."""
    kwargs = {"connect_args": {"check_same_thread": False}} if url.startswith("sqlite") else {}
    engine = create_engine(url, **kwargs)  # type: ignore[arg-type]
    Base.metadata.create_all(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)


class ArrayStore:
    """Content-addressed files: ``root/ab/abcdef...`` named by the SHA-256 of their bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha: str) -> Path:
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise KeyError(sha)
        return self.root / sha[:2] / sha

    def put(self, data: bytes) -> str:
        """Store bytes (idempotent); return their SHA-256."""
        sha = hashlib.sha256(data).hexdigest()
        path = self._path(sha)
        if path.exists():
            return sha
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return sha

    def get(self, sha: str) -> bytes:
        """The bytes stored under ``sha``; KeyError if absent."""
        path = self._path(sha)
        if not path.is_file():
            raise KeyError(sha)
        return path.read_bytes()
