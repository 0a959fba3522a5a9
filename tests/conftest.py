"""Test configuration: pinned thread pools, skip hooks for the ``gpu`` marker, and the database
backend of each test (SQLite by default; PostgreSQL for the tests parametrised over
``db_backend``, on a server this session starts itself: tests/databases.py)."""

from __future__ import annotations

import os
import weakref

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from tests.databases import Databases, PostgresServer, use  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session: skipped, with the reason, where it cannot run,
    except under CI (``CI`` or ``VDA_REQUIRE_POSTGRES`` set), where that is a failure."""
    server = PostgresServer()
    reason = server.unavailable()
    if reason and (os.environ.get("VDA_REQUIRE_POSTGRES") or os.environ.get("CI")):
        pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
    if reason:
        pytest.skip(reason)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def db_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The test's database backend, installed as ``tests.databases.current()``.

    ``sqlite`` unless parametrised (``tests.databases.on_both_databases``, or the hook in
    tests/prover_service/conftest.py for the store and service tests). After a PostgreSQL test
    every engine it connected with is disposed and its databases are dropped.
    """
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield backend
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Connection, Engine

    server = request.getfixturevalue("postgres_server")
    databases = Databases(backend, server)
    engines: weakref.WeakSet[Engine] = weakref.WeakSet()

    def opened(conn: Connection) -> None:  # every engine the test connects with
        engines.add(conn.engine)

    event.listen(Engine, "engine_connect", opened)
    previous = use(databases)
    try:
        yield backend
    finally:
        use(previous)
        event.remove(Engine, "engine_connect", opened)
        for engine in list(engines):  # close their pooled connections before the drop
            engine.dispose()
        databases.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say at the end of the run when the Chromium tests were skipped, and how to run them."""
    skipped = terminalreporter.stats.get("skipped", [])
    chromium = [r for r in skipped if "chromium" in str(getattr(r, "longrepr", "")).lower()]
    if chromium:
        terminalreporter.write_line(
            f"{len(chromium)} Chromium test(s) skipped: chromium and chromium-driver are not "
            "installed. Install them (Debian/Ubuntu: `sudo apt-get install -y chromium "
            "chromium-driver`) and run `make test` again to check the /audit pages in a browser.",
            yellow=True,
        )
