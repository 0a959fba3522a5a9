"""What only PostgreSQL exercises, on the server tests/databases.py starts (``initdb`` into a
temporary folder, a free loopback port, ``pg_ctl start``; skipped, with the reason, where the
server binaries or psycopg are missing). The service and log tests themselves run on both
backends (tests/prover_service/conftest.py); these add the multi-process and multi-thread cases:

- schema creation by 4 Prover processes at once on one empty database (one state row, no error);
- 40 concurrent appends from 4 threads never collide and give the reference root;
- a Prover keeps serving across a server restart (its pooled connections are tested before use).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from protocol.signing import generate_key, sign_message
from protocol.transparency import TreeHead, leaf_hash, log_entry, root_hash
from prover_service.app import create_app
from prover_service.tables import LogStateRow, make_engine
from tests.databases import PostgresServer
from tests.prover_service.conftest import Prover, make_settings


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """An empty database of its own on the session's server, dropped afterwards."""
    url = postgres_server.new_database()
    yield url
    postgres_server.drop(url)


@pytest.fixture
def pg_prover(postgres_url: str, tmp_path: Path) -> Iterator[Prover]:
    settings = make_settings(tmp_path, db=postgres_url)
    app = create_app(settings)
    with TestClient(app) as client:
        task_hash = client.get("/v1/info").json()["tasks"][0]["task_hash"]
        yield Prover(client, app.state.service, settings, task_hash)
    app.state.service.engine.dispose()


_CREATE = "import sys; from prover_service.tables import make_engine; make_engine(sys.argv[1])"


def test_schema_creation_is_safe_with_several_provers(postgres_url: str) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _CREATE, postgres_url],
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]  # fmt: skip
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    engine, db = make_engine(postgres_url)
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


def test_a_prover_survives_a_server_restart(tmp_path: Path) -> None:
    server = PostgresServer()  # its own server: restarting the session's would cut other tests
    if server.unavailable():
        pytest.skip(str(server.unavailable()))
    server.start()
    try:
        app = create_app(make_settings(tmp_path, db=server.new_database()))
        with TestClient(app) as client:
            task_hash = client.get("/v1/info").json()["tasks"][0]["task_hash"]
            prover = Prover(client, app.state.service, app.state.service.settings, task_hash)
            before = prover.publish()
            assert client.get("/v1/log/head").json()["payload"]["size"] == 1
            server.restart()
            assert client.get(f"/v1/attributions/{before}").status_code == 200
            assert client.get("/v1/log/head").json()["payload"]["size"] == 1
            prover.publish(budget=301)
            assert client.get("/v1/log/head").json()["payload"]["size"] == 2
        app.state.service.engine.dispose()
    finally:
        server.stop()
