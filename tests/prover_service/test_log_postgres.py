"""The Prover on a real PostgreSQL server, started here: ``initdb`` into a temporary folder, a
free loopback port, ``pg_ctl start`` / ``stop``; no external service. Skipped, with the reason,
where the server binaries (Debian's ``postgresql`` package) are not installed.

Checks: the service's happy path and its log (every proof verifies); schema creation by several
Prover processes at once; concurrent appends from threads never collide and give the reference
root. URL form: ``postgresql+psycopg://USER@HOST:PORT/DB`` (``VDA_PROVER_DB``).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from protocol.signing import generate_key, sign_message
from protocol.transparency import TreeHead, leaf_hash, log_entry, root_hash
from prover_service.app import create_app
from prover_service.store import make_engine
from tests.prover_service.conftest import Prover, make_settings
from tests.prover_service.test_log import _check_consistency, _check_inclusion, _head, _session

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


INITDB, PG_CTL = _pg_bin("initdb"), _pg_bin("pg_ctl")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(cmd: list[str]) -> list[str]:
    """initdb refuses to run as root: run the server as ``postgres`` then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _run(cmd: list[str]) -> None:
    done = subprocess.run(_as_owner(cmd), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[:1])} failed: {done.stderr.strip()[-500:]}")


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    if INITDB is None or PG_CTL is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    # not under pytest's tmp folder: as root the server runs as ``postgres``, which must reach it
    root = Path(tempfile.mkdtemp(prefix="vda-pg-"))
    data = root / "data"
    user = os.environ.get("USER", "postgres")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        user = "postgres"
    _run([INITDB, "-D", str(data), "-U", user, "-A", "trust", "--no-sync", "-E", "UTF8"])
    port = _free_port()
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    _run([PG_CTL, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"])
    try:
        yield f"postgresql+psycopg://{user}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_owner([PG_CTL, "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _fresh(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture
def pg_prover(postgres_url: str, tmp_path: Path) -> Iterator[Prover]:
    _fresh(postgres_url)
    settings = make_settings(tmp_path, db=postgres_url, array_dir=tmp_path / "arrays")
    app = create_app(settings)
    with TestClient(app) as client:
        task_hash = client.get("/v1/info").json()["tasks"][0]["task_hash"]
        yield Prover(client, app.state.service, settings, task_hash)
    app.state.service.engine.dispose()


def test_service_and_log_on_postgresql(pg_prover: Prover) -> None:
    prover = pg_prover
    content = prover.publish()
    heads = [_head(prover)]
    messages = []
    for verdict in ("accept", "abort"):
        messages += _session(prover, content, verdict)
        heads.append(_head(prover))
    assert [h.size for h in heads] == [1, 4, 7]
    for signed in messages:
        _check_inclusion(prover, signed, heads[-1])
    for a in heads:
        for b in heads:
            if a.size <= b.size:
                _check_consistency(prover, a, b)


_CREATE = "import sys; from prover_service.store import make_engine; make_engine(sys.argv[1])"


def test_schema_creation_is_safe_with_several_provers(postgres_url: str) -> None:
    _fresh(postgres_url)
    procs = [subprocess.Popen([sys.executable, "-c", _CREATE, postgres_url],
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]  # fmt: skip
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    engine, db = make_engine(postgres_url)
    from sqlalchemy import func, select

    from prover_service.store import LogStateRow

    with db() as s:
        assert s.scalar(select(func.count()).select_from(LogStateRow)) == 1
    engine.dispose()


def test_concurrent_appends_never_collide(pg_prover: Prover) -> None:
    svc = pg_prover.service
    key = generate_key()
    messages = [sign_message(key, TreeHead(size=i, root_hash="0" * 64, timestamp=i))
                for i in range(40)]  # fmt: skip

    def worker(part: list) -> None:  # type: ignore[type-arg]
        for m in part:
            with svc.db.begin() as s:
                svc.log.append(s, m, "test")

    threads = [threading.Thread(target=worker, args=(messages[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    size, root = svc.log.size_and_root()
    assert size == 40
    by_index = {r.idx: r.leaf_hash for r in svc.log.entries(0, 100)}
    assert sorted(by_index) == list(range(40))
    assert set(by_index.values()) == {leaf_hash(log_entry(m)).hex() for m in messages}
    assert root == root_hash([bytes.fromhex(by_index[i]) for i in range(40)])
    assert svc.log.root(40) == root
