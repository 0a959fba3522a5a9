"""A Prover on a temporary database, and a minimal Verifier side that signs challenges.

The store and service tests (``STORE_MODULES``) run on both database backends: every test there
that has a folder (``tmp_path``, so also every ``prover`` test) is parametrised over
``db_backend`` (``[sqlite]`` / ``[postgresql]``), and ``make_settings`` opens that backend's
database for the folder it is given (tests/databases.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from protocol.messages import Challenge, commit_spot_checks
from protocol.signing import (
    SignedMessage,
    generate_key,
    public_key_hex,
    save_private_key,
    sign_message,
    sign_request,
)
from prover_service.app import create_app
from prover_service.service import ProverService
from prover_service.settings import Settings
from tests.databases import BACKENDS, current

TASK = "planted:n_train=20,n_targets=2"
# the modules whose tests touch the database: run on SQLite and on PostgreSQL
STORE_MODULES = frozenset({"test_access", "test_executor_local", "test_log", "test_log_audit",
                           "test_loopback", "test_races", "test_service"})  # fmt: skip


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if module in STORE_MODULES and "tmp_path" in metafunc.fixturenames:
        metafunc.parametrize("db_backend", BACKENDS, indirect=True)


OWNER = generate_key()  # the Verifier key the fixture's requests are signed with


class SignedAuth(httpx.Auth):
    """Sign every request (X-VDA-* headers) with ``key``: ``client.get(u, auth=SignedAuth(k))``."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        target = request.url.raw_path.decode("latin-1")
        request.headers.update(sign_request(self.key, request.method, target, request.content))
        yield request


@dataclass
class Prover:
    client: TestClient
    service: ProverService
    settings: Settings
    task_hash: str

    def publish(self, method: str = "ridge", budget: int = 300) -> str:
        job = self.client.post(
            "/v1/attributions",
            json={"task_hash": self.task_hash, "method": method, "budget": budget},
            auth=SignedAuth(OWNER),
        )
        assert job.status_code == 202, job.text
        self.service.run_pending()
        done = self.client.get(f"/v1/jobs/{job.json()['id']}", auth=SignedAuth(OWNER)).json()
        assert done["status"] == "done", done
        return str(done["result"])


def make_settings(tmp_path: Path, **over: object) -> Settings:
    """Settings of a Prover kept in ``tmp_path`` (key, arrays) on the test's database backend:
    ``sqlite:///tmp_path/prover.db`` or a PostgreSQL database of its own for this folder; the
    per-address limits on new keys and unsigned POSTs are lifted unless ``over`` sets them."""
    key = tmp_path / "prover.pem"
    if not key.exists():
        save_private_key(generate_key(), key)
    fields: dict[str, object] = {
        "array_dir": tmp_path / "arrays",
        "key_file": key,
        "tasks": [TASK],
        "run_worker": False,
        # tests mint a fresh key per case and post from one address: the per-address limits
        # (tested with their defaults in test_attacks.py) would stand in their way
        "new_keys_per_hour": 100_000,
        "post_rate_per_minute": 100_000,
        # The start-up task check runs in the background and refuses work until it passes
        # (tested in test_task_check.py); these Provers serve the planted task unchecked.
        "check_tasks": False,
    }
    fields.update(over)
    if "db" not in fields:
        fields["db"] = current().url(tmp_path)
    return Settings(**fields)  # type: ignore[arg-type]


@pytest.fixture
def prover(tmp_path: Path) -> Iterator[Prover]:
    settings = make_settings(tmp_path)
    app = create_app(settings)
    with TestClient(app) as client:
        task_hash = client.get("/v1/info").json()["tasks"][0]["task_hash"]
        yield Prover(client, app.state.service, settings, task_hash)
    app.state.service.engine.dispose()


SPOT = [1, 4, 7]
SALT = bytes(range(32))


def signed_challenge(
    key: Ed25519PrivateKey, task_hash: str, attribution: str, bound: float, **over: object
) -> SignedMessage:
    fields: dict[str, object] = dict(
        task_hash=task_hash,
        attribution_hash=attribution,
        p=0.5,
        rho0=0.2,
        pairs_per_level=10,
        challenge_seed=os.urandom(32).hex(),
        spot_check_commitment=commit_spot_checks(SPOT, SALT),
        epsilon=0.5,
        delta=0.05,
        bound=bound,
        tau=0.0,
        estimator="gap",
        nonce=os.urandom(16).hex(),
        timestamp=int(time.time()),
        verifier_key=public_key_hex(key),
    )
    fields.update(over)
    return sign_message(key, Challenge.model_validate(fields))
