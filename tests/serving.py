"""Run an ASGI app under real uvicorn on loopback, in a thread, for tests.

The socket is bound here and handed to uvicorn, so no other process can take the port between
choosing it and serving on it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from tests.databases import db_url


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Yield the base URL of ``app`` served on 127.0.0.1; stop it on exit."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextmanager
def serve_prover(
    root: Any, task: str, adversary: str | None = None, **settings: Any
) -> Iterator[str]:
    """A Prover (its own key in ``root``) serving ``task`` on loopback; its base URL.

    Its database is the test's backend (tests/databases.py): ``sqlite:///root/p.db`` or a
    PostgreSQL database of its own; its arrays live in ``root/arrays``.
    """
    from protocol.signing import generate_key, save_private_key
    from prover_service.app import create_app
    from prover_service.settings import Settings

    root.mkdir(parents=True, exist_ok=True)
    save_private_key(generate_key(), root / "p.pem", overwrite=True)
    settings.setdefault("array_dir", root / "arrays")
    config = Settings(db=db_url(root, "p"), key_file=root / "p.pem", tasks=[task],
                      adversary=adversary, **settings)  # fmt: skip
    app = create_app(config)
    # the start-up task check runs in the background: wait for it (an event, not a time)
    if not app.state.service.checks.wait(timeout=600):
        raise RuntimeError("the Prover's start-up task check did not finish")
    with serve(app) as url:
        yield url


def verifier_db(root: Any) -> str:
    """The Verifier's store for a test folder, on the test's backend (``sqlite:///root/v.db``
    or a PostgreSQL database of its own); the same folder gives the same store."""
    return db_url(root, "v")
