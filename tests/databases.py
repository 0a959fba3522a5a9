"""The database a test's Provers and Verifiers use: SQLite files (the default) or PostgreSQL.

The PostgreSQL backend is a real server started here, with no external service: Debian's
``postgresql`` binaries (``initdb`` found on ``PATH`` or under ``/usr/lib/postgresql/*/bin``),
``initdb`` into a temporary folder, a free loopback port, ``pg_ctl start``; one server per test
session (:class:`PostgresServer`) and one fresh database per folder a test asks for
(``CREATE DATABASE``, dropped after the test), so tests stay isolated.

The fixtures in ``tests/conftest.py`` choose the backend per test (``db_backend``, parametrised
``["sqlite", "postgresql"]``) and install it as :func:`current`; :func:`db_url` then gives the
database of a folder. ``make_settings`` (tests/prover_service/conftest.py), ``serve_prover`` and
``verifier_db`` (tests/serving.py) use it, so one test body runs on both backends. URL form:
``postgresql+psycopg://USER@127.0.0.1:PORT/DBNAME`` (trust authentication on loopback).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

__all__ = [
    "BACKENDS",
    "Databases",
    "PostgresServer",
    "current",
    "db_url",
    "on_both_databases",
    "pg_binary",
    "use",
]

BACKENDS = ["sqlite", "postgresql"]
#: run a test once per backend (``@on_both_databases``): ids ``[sqlite]`` and ``[postgresql]``
on_both_databases = pytest.mark.parametrize("db_backend", BACKENDS, indirect=True)


def pg_binary(name: str) -> str | None:
    """Path of a PostgreSQL server binary (``initdb``, ``pg_ctl``), newest version; None if absent.

    Debian keeps them in ``/usr/lib/postgresql/<major>/bin``, off ``PATH``.
    """
    found = shutil.which(name)
    if found:
        return found

    def major(path: str) -> int:
        version = Path(path).parts[-3]
        return int(version) if version.isdigit() else 0

    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=major)
    return hits[-1] if hits else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(cmd: list[str]) -> list[str]:
    """``initdb`` refuses to run as root: run the server as ``postgres`` then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _run(cmd: list[str]) -> None:
    done = subprocess.run(_as_owner(cmd), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{Path(cmd[0]).name} failed: {done.stderr.strip()[-500:]}")


class PostgresServer:
    """A throwaway PostgreSQL server: ``initdb`` into a temporary folder, loopback, trust auth.

    ``unavailable()`` says why it cannot run here (binaries or psycopg missing), else None.
    :meth:`new_database` creates an empty database and returns its SQLAlchemy URL.
    """

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
        self.root: Path | None = None
        self.base = ""
        self._opts = ""
        self._count = 0

    def unavailable(self) -> str | None:
        """Why this machine cannot run the server (a skip reason), or None."""
        if self.initdb is None or self.pg_ctl is None:
            return ("PostgreSQL server binaries (initdb, pg_ctl) are not installed: "
                    "apt-get install postgresql")  # fmt: skip
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg is not installed (pip install -e '.[postgres]')"
        return None

    def start(self) -> None:
        """initdb, then ``pg_ctl start`` on a free loopback port (fsync off: tests only)."""
        assert self.initdb is not None and self.pg_ctl is not None
        # not under pytest's tmp folder: as root the server runs as ``postgres``, which must
        # reach it
        root = Path(tempfile.mkdtemp(prefix="vda-pg-"))
        user = os.environ.get("USER") or "postgres"
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
            user = "postgres"
        self.root = root
        _run([self.initdb, "-D", str(root / "data"), "-U", user, "-A", "trust", "--no-sync",
              "-E", "UTF8"])  # fmt: skip
        port = _free_port()
        fast = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=300 {fast}"
        self._opts = opts
        _run([self.pg_ctl, "-D", str(root / "data"), "-o", opts, "-l", str(root / "log"),
              "-w", "start"])  # fmt: skip
        self.base = f"postgresql+psycopg://{user}@127.0.0.1:{port}"

    def restart(self) -> None:
        """``pg_ctl restart`` (same data, same port): every open connection is cut."""
        assert self.root is not None and self.pg_ctl is not None
        _run([self.pg_ctl, "-D", str(self.root / "data"), "-o", self._opts, "-l",
              str(self.root / "log"), "-m", "fast", "-w", "restart"])  # fmt: skip

    def stop(self) -> None:
        """``pg_ctl stop`` and remove the folder."""
        if self.root is None:
            return
        assert self.pg_ctl is not None
        subprocess.run(_as_owner([self.pg_ctl, "-D", str(self.root / "data"), "-m", "immediate",
                                  "-w", "stop"]), capture_output=True)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def _admin(self, sql: str) -> None:
        import psycopg

        dsn = self.base.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def new_database(self) -> str:
        """Create an empty database; its URL."""
        self._count += 1
        name = f"vda_{os.getpid()}_{self._count}"
        self._admin(f"CREATE DATABASE {name}")
        return f"{self.base}/{name}"

    def drop(self, url: str) -> None:
        """Drop a database made by :meth:`new_database` (its open connections are ended)."""
        name = url.rsplit("/", 1)[1]
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class Databases:
    """One test's databases on one backend: the same folder and name give the same database.

    ``sqlite``: ``sqlite:///<folder>/<name>.db``; ``postgresql``: a fresh database on ``server``
    per (folder, name), dropped by :meth:`close`.
    """

    def __init__(self, backend: str = "sqlite", server: PostgresServer | None = None) -> None:
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"unknown database backend {backend!r}")
        if backend == "postgresql" and server is None:
            raise ValueError("the postgresql backend needs a running PostgresServer")
        self.backend, self.server = backend, server
        self._urls: dict[tuple[str, str], str] = {}

    def url(self, folder: Path, name: str = "prover") -> str:
        """The database of ``folder`` (created on first use)."""
        if self.backend == "sqlite":
            return f"sqlite:///{folder}/{name}.db"
        assert self.server is not None
        key = (str(Path(folder).resolve()), name)
        if key not in self._urls:
            self._urls[key] = self.server.new_database()
        return self._urls[key]

    def close(self) -> None:
        """Drop the PostgreSQL databases this test made."""
        if self.server is not None:
            for url in self._urls.values():
                self.server.drop(url)
        self._urls.clear()


_CURRENT = Databases()


def current() -> Databases:
    """The backend of the running test (SQLite outside the ``db_backend`` fixture)."""
    return _CURRENT


def use(databases: Databases) -> Databases:
    """Install ``databases`` as :func:`current`; return the previous one (to restore)."""
    global _CURRENT
    previous, _CURRENT = _CURRENT, databases
    return previous


def db_url(folder: Path, name: str = "prover") -> str:
    """The running test's database for ``folder`` (SQLite file or a fresh PostgreSQL database)."""
    return _CURRENT.url(folder, name)
