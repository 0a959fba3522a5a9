"""The Prover's tables: SQLAlchemy 2.0 (SQLite by default, any SQLAlchemy URL), their engine
and the migrations run on open. The binary arrays live beside them in the content-addressed
:class:`prover_service.arrays.ArrayStore`.

Tables: ``attributions`` (signed manifests), ``jobs`` (training work with progress),
``sessions`` (one verification each: challenge, response, verdict), ``chunks`` (the completed
chunks of a challenge job, which is how a restarted service resumes), ``nonces`` (every
challenge nonce ever accepted), ``request_nonces`` and ``rate_buckets`` (the signed requests'
nonces and the per-key and per-caller token buckets, shared by every Prover process on the
database: :mod:`prover_service.auth`), ``known_keys`` (every Verifier key admitted, with the
address it first came from), ``session_arrays`` (which session's response serves
which array, for read authorisation), and the transparency log (:mod:`prover_service.log`):
``log_leaves`` (one per signed message), ``log_nodes`` (every perfect subtree's hash) and
``log_state`` (its size and compact range, one row that serialises appends).

A SQLite database file is created with mode 0600 (an existing one, and its ``-wal`` and ``-shm``,
that group or others may read is made 0600 with a warning), runs in WAL mode with a busy timeout (so
concurrent writers wait rather than fail), and columns added since a database was created are
added on open, safely with several Prover processes on one database (:func:`make_engine`).
Any database failure surfaces as :class:`~prover_service.errors.StoreError`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Float,
    Integer,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from prover_service.errors import StoreError

log = logging.getLogger("prover_service")

__all__ = [
    "AttributionRow",
    "Base",
    "ChunkRow",
    "JobRow",
    "KnownKeyRow",
    "LogLeafRow",
    "LogNodeRow",
    "LogStateRow",
    "NonceRow",
    "RateBucketRow",
    "RequestNonceRow",
    "SessionArrayRow",
    "SessionRow",
    "check_database",
    "insert_once",
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
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    result: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now)
    # bytes the job will write (its arrays), counted against the disk quota until it ends
    reserved_bytes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # which Prover process runs the job, until when (jobs.py: claims and leases)
    lease_owner: Mapped[str | None] = mapped_column(String(96), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)


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
    witness_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)  # witness route


class NonceRow(Base):
    __tablename__ = "nonces"
    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    verifier_key: Mapped[str] = mapped_column(String(64))
    seen_at: Mapped[float] = mapped_column(Float, default=now)


class RequestNonceRow(Base):
    """A signed request's nonce, refused again until ``expires_at`` (Unix seconds)."""

    __tablename__ = "request_nonces"
    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    verifier_key: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class RateBucketRow(Base):
    """A token bucket: ``tokens`` left at ``updated_at``; ``scope`` is ``expensive`` (subject: a
    key) or ``read`` (subject: ``key:HEX`` or ``ip:ADDRESS``)."""

    __tablename__ = "rate_buckets"
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    subject: Mapped[str] = mapped_column(String(80), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float, index=True)


class KnownKeyRow(Base):
    """A Verifier key the Prover has admitted once, and the address it first came from (new
    keys are admitted at a limited rate per address: :mod:`prover_service.auth`)."""

    __tablename__ = "known_keys"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(80))
    first_seen: Mapped[float] = mapped_column(Float, default=now)


class SessionArrayRow(Base):
    """An array served in a session's response: readable by that session's Verifier."""

    __tablename__ = "session_arrays"
    sha: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(32), primary_key=True)


class LogLeafRow(Base):
    """One logged signed message: its index in the log and what it is."""

    __tablename__ = "log_leaves"
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))  # the message type: challenge.v1, ...
    ref: Mapped[str] = mapped_column(String(64), index=True)  # session id or content hash
    leaf_hash: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class LogNodeRow(Base):
    """The hash of a perfect subtree: leaves ``[idx * 2**level, (idx + 1) * 2**level)``."""

    __tablename__ = "log_nodes"
    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))


class LogStateRow(Base):
    """The log's one state row: its size and compact range (perfect subtree roots, hex)."""

    __tablename__ = "log_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(Integer, default=0)
    frontier: Mapped[str] = mapped_column(Text, default="")


def _sqlite_file(url: str) -> Path | None:
    if not url.startswith("sqlite:///") or url in ("sqlite:///", "sqlite:///:memory:"):
        return None
    return Path(url.removeprefix("sqlite:///"))


def make_engine(url: str) -> tuple[Engine, sessionmaker[Session]]:
    """Engine and session factory; creates the tables (and missing columns) if needed.

    Raises :class:`StoreError` in one line when the database cannot be opened or is damaged.
    """
    path = _sqlite_file(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:  # a server may drop idle connections (restart, failover): test each one before use
        kwargs["pool_pre_ping"] = True
    if path is not None:
        _tighten(path)
        if not path.parent.is_dir():
            raise StoreError(f"cannot create database {str(path)!r}: folder does not exist")
        if not path.exists():
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            except OSError as exc:
                raise StoreError(f"cannot create database {str(path)!r}: {exc.strerror}") from None
    try:
        engine = create_engine(url, **kwargs)
        if path is not None:
            event.listen(engine, "connect", _sqlite_pragmas)
        _create_schema(engine)
        if path is not None:
            _tighten(path)  # the -wal and -shm files the first connection made
    except SQLAlchemyError as exc:
        raise StoreError(f"database {url!r} cannot be opened: {_one_line(exc)}") from None
    return engine, sessionmaker(engine, expire_on_commit=False)


def _tighten(path: Path) -> None:
    """Make a SQLite database file and its ``-wal`` and ``-shm`` files 0600 where group or
    others may read them (they hold the sessions and the nonces), with a warning."""
    for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = f.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(f, 0o600)
                log.warning("database file %s was mode %o; made it 0600", f, mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"database file {str(f)!r} is mode {mode:o} and cannot be made 0600: "
                             f"{exc.strerror}") from None  # fmt: skip


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


_SCHEMA_LOCK = 0x56444131  # PostgreSQL advisory lock key for schema changes ("VDA1")


def _create_schema(engine: Engine, attempts: int = 5) -> None:
    """Tables, missing columns and the log's state row; safe with several Provers at once.

    On PostgreSQL it all runs in one transaction under an advisory lock, so two processes never
    race on ``CREATE TABLE``; on SQLite the file lock serialises writers, and a process that
    loses a race (a table or the state row just created by another) tries again.
    """
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
                Base.metadata.create_all(conn)
                _add_missing_columns(conn)
                state = conn.execute(select(LogStateRow.id).where(LogStateRow.id == 1)).first()
                if state is None:
                    conn.execute(insert(LogStateRow).values(id=1, size=0, frontier=""))
            return
        except SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _add_missing_columns(conn: Connection) -> None:
    """Columns added since a database was created (nullable ones only): ALTER TABLE ADD."""
    names = inspect(conn)
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in names.get_columns(table.name)}
        for col in table.columns:
            if col.name not in have and col.nullable:
                kind = col.type.compile(conn.dialect)
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {col.name} {kind}"))


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).splitlines()[0][:200]


def insert_once(session: Session, table: Table, values: dict[str, Any]) -> bool:
    """Insert a row unless its primary key is taken; whether it was inserted.

    One atomic statement on SQLite and PostgreSQL (``INSERT ... ON CONFLICT DO NOTHING``; the
    row count says which on SQLite, ``RETURNING`` on PostgreSQL, where psycopg reports no row
    count for it); elsewhere the unique violation is caught in a savepoint. Either way a race
    between processes gives one True and False for the rest, never an error.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        stmt = sqlite.insert(table).values(**values).on_conflict_do_nothing()
        result: Any = session.execute(stmt)
        return bool(result.rowcount == 1)
    if dialect == "postgresql":
        key = next(iter(table.primary_key.columns))
        pg = postgresql.insert(table).values(**values).on_conflict_do_nothing().returning(key)
        return session.execute(pg).first() is not None
    try:
        with session.begin_nested():
            session.execute(insert(table).values(**values))
    except IntegrityError:
        return False
    return True


def check_database(engine: Engine) -> None:
    """Read every table (and, on SQLite, ``PRAGMA quick_check``); :class:`StoreError` if damaged."""
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                result = conn.execute(text("PRAGMA quick_check")).scalar()
                if result != "ok":
                    raise StoreError(f"database is damaged: {result}")
            for table in Base.metadata.sorted_tables:
                conn.execute(table.select().limit(1)).all()
                conn.execute(text(f"SELECT count(*) FROM {table.name}")).scalar()
    except SQLAlchemyError as exc:
        raise StoreError(f"database is damaged or unreadable: {_one_line(exc)}") from None
