"""``schemathesis run`` with all its checks against a Prover served on loopback.

The API's own description (``/openapi.json``) is the contract: every reply must have a
documented status code, content type, headers and schema, never a 5xx, and ``{code, detail}``
for every error (FastAPI's and Starlette's own included: unknown route, wrong method with its
``Allow``, a body that does not parse). Run twice: as an anonymous client (the expensive and
private endpoints answer 401, documented) and as an admitted Verifier whose every request is
signed (:class:`SignEveryRequest`), so the fuzzer reaches the routes behind the signature
check. Bounded and reproducible: the coverage and fuzzing phases, 15 examples per operation, a
fixed seed, no example database, one worker (about 70 s each on two shared cores).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.signing import generate_key, save_private_key, sign_request
from prover_service.app import create_app
from prover_service.settings import Settings
from tests.databases import db_url
from tests.serving import serve

pytest.importorskip("schemathesis")

pytestmark = pytest.mark.slow

TASK = "planted:n_train=20,n_targets=2"


class SignEveryRequest:
    """Test-only ASGI wrapper: signs each request as a Verifier's client would (``X-VDA-*``
    over method, target, time, nonce and body, :func:`protocol.signing.sign_request`), so the
    fuzzer reaches the routes behind the signature check. The Prover checks it as any other."""

    def __init__(self, app: Any, key: Ed25519PrivateKey) -> None:
        self.app, self.key = app, key

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        query = scope.get("query_string") or b""
        target = scope["raw_path"].decode("latin-1") + (
            "?" + query.decode("latin-1") if query else ""
        )
        signed = sign_request(self.key, scope["method"], target, body)
        headers = [(k, v) for k, v in scope["headers"] if not k.lower().startswith(b"x-vda-")]
        headers += [(k.lower().encode(), v.encode()) for k, v in signed.items()]
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)


def prover_app(root: Path) -> Any:
    """A Prover serving TASK from ``root``, its per-key rate high enough for a fuzzer."""
    root.mkdir(parents=True, exist_ok=True)
    save_private_key(generate_key(), root / "p.pem", overwrite=True)
    settings = Settings(db=db_url(root, "p"), key_file=root / "p.pem", tasks=[TASK],
                        array_dir=root / "arrays", rate_per_minute=10**6)  # fmt: skip
    app = create_app(settings)
    assert app.state.service.checks.wait(timeout=600)  # the start-up task check (background)
    return app


# Content the schema cannot express is refused with 422 "invalid" (the protocol's rule, not the
# schema's): an attribution method this Prover does not run, bytes that are not a datamodel or a
# scores array, a provenance that is not a JSON object. Schema-valid data that is refused gets
# 422 there, and only there.
CONFIG = """
[[operations]]
include-path-regex = "^/v1/attributions(/import|/datamodel)?$"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx",
]
"""


@pytest.mark.parametrize("client", ["anonymous", "signed"])
def test_schemathesis_finds_nothing(tmp_path: Path, client: str) -> None:
    app = prover_app(tmp_path / "p")
    if client == "signed":  # behind the signature check: the fuzzer as an admitted Verifier
        app = SignEveryRequest(app, generate_key())
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    with serve(app) as url:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", "schemathesis.toml",
             "run", f"{url}/openapi.json", "--checks", "all", "--phases", "coverage,fuzzing",
             "--max-examples", "15", "--seed", "1", "--generation-database", "none",
             "--workers", "1", "--no-color", "--request-timeout", "30"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path,
        )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-8000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", out)
    tested = re.search(r"Tested: (\d+)", out)
    assert selected and tested, out[-4000:]
    assert selected[1] == selected[2] == tested[1], "some operations were not tested"
    cases = re.search(r"(\d+) generated, (\d+) passed", out)
    assert cases and int(cases[1]) == int(cases[2]) > 0, out[-4000:]
