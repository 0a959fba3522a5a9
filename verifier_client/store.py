"""The Verifier's records: every session, in SQLite (or any SQLAlchemy URL).

A row is written *before* the challenge is sent (status ``incomplete``, with the secret
spot-check set and salt, which never leave this machine before the verdict), updated when the
response is checked, and completed in one transaction with the verdict (status ``decided``).
A client killed in between leaves an ``incomplete`` row that ``verify --resume`` finishes.
"""

from __future__ import annotations

import json
import logging
import os
import time
import weakref
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Float, Integer, String, Text, create_engine, inspect, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from protocol.errors import InvalidParameterError

__all__ = ["Record", "VerifierStore", "private_files"]

_log = logging.getLogger(__name__)

_SCHEMA_LOCK = 0x56444132  # PostgreSQL advisory lock key for the Verifier's schema ("VDA2")


class _Base(DeclarativeBase):
    pass


class Record(_Base):
    """One verification."""

    __tablename__ = "verifications"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # local id: the nonce
    prover_session: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    prover_url: Mapped[str] = mapped_column(String(512))
    prover_key: Mapped[str] = mapped_column(String(64))
    task_hash: Mapped[str] = mapped_column(String(64), index=True)
    task_ref: Mapped[str] = mapped_column(String(512))
    attribution_hash: Mapped[str] = mapped_column(String(64))
    protocol: Mapped[str] = mapped_column(String(16))
    estimator: Mapped[Literal["gap", "residual"]] = mapped_column(String(16))  # as validated
    challenge_json: Mapped[str] = mapped_column(Text)
    secret_json: Mapped[str] = mapped_column(Text)  # spot-check indices + salt
    status: Mapped[str] = mapped_column(String(16), index=True, default="incomplete")
    response_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    array_hashes_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    spot_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    figures_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    verdict: Mapped[str | None] = mapped_column(String(8), nullable=True, index=True)
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)  # advice on the reason
    certificate_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    posted_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # verdict delivered
    verdict_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    log_head_json: Mapped[str | None] = mapped_column(Text, nullable=True)  # signed tree head
    times_json: Mapped[str] = mapped_column(Text, default="{}")
    prover_trainings: Mapped[int] = mapped_column(Integer, default=0)
    local_trainings: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (the secret is included only once decided)."""
        out: dict[str, Any] = {
            "session": self.prover_session or self.id,
            "record": self.id,
            "prover": self.prover_url,
            "task_hash": self.task_hash,
            "attribution": self.attribution_hash,
            "protocol": self.protocol,
            "estimator": self.estimator,
            "status": self.status,
            "verdict": self.verdict,
            "reason": self.reason,
            "detail": self.detail or "",
            "spot_checks": json.loads(self.spot_json) if self.spot_json else None,
            "certificate": json.loads(self.certificate_json) if self.certificate_json else None,
            "verdict_posted": self.posted_at is not None,
            "figures": json.loads(self.figures_json or "{}"),
            "times": json.loads(self.times_json or "{}"),
            "prover_trainings": self.prover_trainings,
            "local_trainings": self.local_trainings,
            "created_at": self.created_at,
        }
        return out


def _as_url(url: str) -> str:
    """A bare path means SQLite; a new SQLite file is created 0600 (it holds the secret
    spot-check sets until each verdict), an existing one tightened (:func:`private_files`)."""
    if "://" not in url:
        url = f"sqlite:///{url}"
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                pass
        private_files(path)
    return url


def private_files(path: Path) -> list[Path]:
    """Make a SQLite database and its side files (``-wal``, ``-shm``, ``-journal``) readable
    by their owner only, as keys are: each one open to group or others is set to 0600 and a
    warning logged (SQLite gives new side files the database's mode); one this user may not
    change is refused with the command that fixes it. Returns the files tightened."""
    if os.name != "posix":
        return []
    tightened = []
    for file in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
        try:
            mode = file.stat().st_mode & 0o777
        except FileNotFoundError:
            continue
        if not mode & 0o077:
            continue
        try:
            os.chmod(file, 0o600)
        except PermissionError:
            raise InvalidParameterError(
                f"database file {str(file)!r} is readable by group or others (mode "
                f"{mode:o}) and is not yours to change: run chmod 600 {file}"
            ) from None
        _log.warning("database file %s was mode %o: set to 600 (it holds the secret "
                     "spot-checks until each verdict)", file, mode)  # fmt: skip
        tightened.append(file)
    return tightened


class VerifierStore:
    """Session factory over the records table (SQLite by default, or any SQLAlchemy URL, e.g.
    ``postgresql+psycopg://USER:PASSWORD@HOST:5432/DBNAME``).

    The table is created if missing (on PostgreSQL under an advisory lock, so several Verifiers
    may open one database at once). The pooled connections are closed by :meth:`close`, or when
    the store is dropped.
    """

    def __init__(self, url: str) -> None:
        url = _as_url(url)
        kwargs = {"connect_args": {"check_same_thread": False}} if url.startswith("sqlite") else {}
        self.engine = create_engine(url, **kwargs)
        self._closer = weakref.finalize(self, self.engine.dispose)
        try:
            self._create_schema()
        except BaseException:
            self.close()
            raise
        self.db = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        """Close the pooled database connections (the store may still be used: it reconnects)."""
        self._closer()
        self._closer = weakref.finalize(self, self.engine.dispose)

    def _create_schema(self) -> None:
        """The table and any columns added since the database was made (nullable ones only),
        in one transaction; on PostgreSQL under an advisory lock (several Verifiers at once)."""
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
            _Base.metadata.create_all(conn)
            have = {c["name"] for c in inspect(conn).get_columns(Record.__tablename__)}
            for column in Record.__table__.columns:
                if column.name not in have and column.nullable:
                    kind = column.type.compile(self.engine.dialect)
                    conn.execute(text(f"ALTER TABLE {Record.__tablename__} "
                                      f"ADD COLUMN {column.name} {kind}"))  # fmt: skip

    def add(self, record: Record) -> None:
        with self.db.begin() as s:
            s.add(record)

    def get(self, session_id: str) -> Record | None:
        """A record by its local id or by the Prover's session id."""
        with self.db() as s:
            row = s.get(Record, session_id)
            if row is None:
                row = s.scalars(select(Record).where(Record.prover_session == session_id)).first()
            return row

    def update(self, session_id: str, **fields: Any) -> None:
        """Set fields in one transaction (the verdict and its figures land together)."""
        with self.db.begin() as s:
            row = s.get(Record, session_id)
            if row is None:
                raise KeyError(session_id)
            for key, value in fields.items():
                setattr(row, key, value)

    def all(self) -> list[Record]:
        with self.db() as s:
            return list(s.scalars(select(Record).order_by(Record.created_at)))
