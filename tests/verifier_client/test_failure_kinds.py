"""The two kinds of failure, through a whole verification: a Prover that misbehaves is aborted
with the reason (a ``VerificationError``'s), a network or infrastructure failure never is.

A real Prover app (``TestClient``, its worker run in step) behind an ``httpx.MockTransport`` that
can replace one reply: a malformed one (not JSON, another content type, wrong types, a missing or
an extra field), a forged signature, an array's bytes swapped, or a transport failure
(connection refused, time-out, 5xx).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from protocol.signing import public_key_hex
from prover_service.app import create_app
from prover_service.service import ProverService
from tests.prover_service.conftest import OWNER, Prover, make_settings
from verifier_client.client import ProverClient, TransportError
from verifier_client.run import Options, run_verification
from verifier_client.store import VerifierStore

TASK = "planted:n_train=20,n_targets=2"
SESSION = re.compile(r"/v1/sessions/[0-9a-f]+")
RESPONSE = re.compile(r"/v1/sessions/[0-9a-f]+/response")
ARRAY = re.compile(r"/v1/arrays/[0-9a-f]+")
Upstream = Callable[[httpx.Request], httpx.Response]
Tamper = Callable[[httpx.Request, Upstream], httpx.Response]


@dataclass
class World:
    http: TestClient
    service: ProverService
    root: Path

    def verify(
        self, tamper: Tamper | None = None, resume: str | None = None, **over: object
    ) -> dict[str, object]:
        """One verification through ``tamper`` (None: the honest wire); ``over``: options."""

        def upstream(request: httpx.Request) -> httpx.Response:
            headers = {k: v for k, v in request.headers.items() if k != "host"}
            r = self.http.request(request.method, request.url.raw_path.decode(),
                                  headers=headers, content=request.content)  # fmt: skip
            return httpx.Response(r.status_code, headers=r.headers, content=r.content)

        def handle(request: httpx.Request) -> httpx.Response:
            if request.method == "GET" and SESSION.fullmatch(request.url.path):
                self.service.run_pending()  # the Prover's worker, in step with the polls
            return (tamper or (lambda r, up: up(r)))(request, upstream)

        with httpx.Client(transport=httpx.MockTransport(handle), base_url="http://p") as http:
            fields: dict[str, object] = dict(task=TASK, epsilon=0.5, pairs_per_level=4,
                                             spot_checks=2, poll_s=0.0,
                                             seed=b"failure kinds")  # fmt: skip
            opts = Options(**(fields | over))  # type: ignore[arg-type]
            return run_verification(ProverClient(http, key=OWNER), self.store, OWNER, opts,
                                    "http://p", resume=resume)  # fmt: skip

    @property
    def store(self) -> VerifierStore:
        return VerifierStore(f"sqlite:///{self.root}/v.db")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    settings = make_settings(tmp_path)
    app = create_app(settings)
    with TestClient(app) as http:
        task_hash = http.get("/v1/info").json()["tasks"][0]["task_hash"]
        Prover(http, app.state.service, settings, task_hash).publish()
        yield World(http, app.state.service, tmp_path)
    app.state.service.engine.dispose()


def _json_edit(edit: Callable[[dict[str, object]], object], ctype: str = "application/json"):  # type: ignore[no-untyped-def]
    """A tamper that rewrites the JSON of the session's state (GET /v1/sessions/{id})."""

    def tamper(request: httpx.Request, upstream: Upstream) -> httpx.Response:
        real = upstream(request)
        if request.method != "GET" or not SESSION.fullmatch(request.url.path):
            return real
        doc = real.json()
        body = edit(doc)
        data = body if isinstance(body, bytes) else json.dumps(doc if body is None else body)
        return httpx.Response(200, headers={"content-type": ctype}, content=data)

    return tamper


MALFORMED = {
    "not json": _json_edit(lambda d: b"<html>upstream busy</html>", "text/html"),
    "wrong content type": _json_edit(lambda d: None, "text/plain"),
    "wrong type": _json_edit(lambda d: d.update(status=5)),
    "missing field": _json_edit(lambda d: d.pop("job")),
    "extra field": _json_edit(lambda d: d.update(owner="someone")),
    "string for a number": _json_edit(lambda d: d.update(created_at="1")),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_reply_is_an_abort_with_its_reason(world: World, case: str) -> None:
    result = world.verify(MALFORMED[case])
    assert (result["status"], result["verdict"]) == ("decided", "abort")
    assert result["reason"] == "malformed_response"
    assert "GET /v1/sessions/" in str(result["detail"])
    assert all(v == v for v in result["figures"].values())  # type: ignore[attr-defined]


def _forged_response(request: httpx.Request, upstream: Upstream) -> httpx.Response:
    real = upstream(request)
    if not RESPONSE.fullmatch(request.url.path):
        return real
    doc = real.json()
    doc["signature"] = ("0" if doc["signature"][0] != "0" else "1") + doc["signature"][1:]
    return httpx.Response(200, json=doc)


def test_a_forged_response_is_a_bad_signature_abort(world: World) -> None:
    result = world.verify(_forged_response)
    assert (result["status"], result["verdict"]) == ("decided", "abort")
    assert result["reason"] == "bad_signature"
    # recorded here; nothing is signed over a response that is not the Prover's
    assert not result["verdict_posted"]


def _swapped_array(request: httpx.Request, upstream: Upstream) -> httpx.Response:
    real = upstream(request)
    if ARRAY.fullmatch(request.url.path):
        return httpx.Response(200, content=real.content[:-8] + bytes(8))
    return real


def test_an_array_that_is_not_its_hash_is_a_bad_response_abort(world: World) -> None:
    result = world.verify(_swapped_array)
    assert (result["verdict"], result["reason"]) == ("abort", "bad_response")
    assert "SHA-256" in str(result["detail"]) and result["verdict_posted"]


def _failing(path: re.Pattern[str], fail: Callable[[httpx.Request], httpx.Response]) -> Tamper:
    def tamper(request: httpx.Request, upstream: Upstream) -> httpx.Response:
        return fail(request) if path.fullmatch(request.url.path) else upstream(request)

    return tamper


def _raise(exc: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc("the network failed", request=request)

    return fail


TRANSPORT = {
    "connection refused": _failing(SESSION, _raise(httpx.ConnectError)),
    "read time-out": _failing(SESSION, _raise(httpx.ReadTimeout)),
    "503 on the session": _failing(
        SESSION,
        lambda r: httpx.Response(
            503, json={"code": "store_unavailable", "detail": "try again later"}
        ),
    ),  # fmt: skip
    "500 on the response": _failing(RESPONSE, lambda r: httpx.Response(500, text="oops")),
    "time-out on an array": _failing(ARRAY, _raise(httpx.ReadTimeout)),
}


@pytest.mark.parametrize("case", sorted(TRANSPORT))
def test_a_transport_failure_is_never_an_abort(world: World, case: str) -> None:
    with pytest.raises(TransportError):
        world.verify(TRANSPORT[case])
    (row,) = world.store.all()
    assert (row.status, row.verdict, row.verdict_json) == ("incomplete", None, None)
    if row.prover_session is not None:  # the Prover holds no verdict either
        held = world.service.sessions.read(row.prover_session, public_key_hex(OWNER))
        assert held.verdict is None and held.status != "decided"
    done = world.verify(resume=row.id)  # and the record is finished once the network is back
    assert done["status"] == "decided" and done["reason"] in ("certified", "not_certified")


def _redirect(request: httpx.Request, upstream: Upstream) -> httpx.Response:
    return httpx.Response(307, headers={"location": "http://evil.example/v1/x"})


def _html(request: httpx.Request, upstream: Upstream) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>busy</html>")


NOT_A_REPLY = {
    "html for the response": _failing(RESPONSE, lambda r: _html(r, _unused)),
    "a 307 for the response": _failing(RESPONSE, lambda r: _redirect(r, _unused)),
    "a 307 for the session's state": _failing(SESSION, lambda r: _redirect(r, _unused)),
}


def _unused(request: httpx.Request) -> httpx.Response:
    raise AssertionError("not forwarded")


@pytest.mark.parametrize("case", sorted(NOT_A_REPLY))
def test_html_or_a_redirect_is_a_signed_and_posted_abort(world: World, case: str) -> None:
    # issue 21, item 14: the abort is signed over the response the Prover signed (its
    # transcript's), recorded with its verdict and delivered, like any other malformed reply
    result = world.verify(NOT_A_REPLY[case])
    assert (result["status"], result["verdict"]) == ("decided", "abort")
    assert result["reason"] == "malformed_response"
    # the status named in words ("a 307 reply"), not a random session id that holds "307"
    assert ("a 307 reply" in str(result["detail"])) == ("307" in case), result["detail"]
    (row,) = world.store.all()
    assert row.verdict_json is not None and result["verdict_posted"]
    held = world.service.sessions.read(row.prover_session or "", public_key_hex(OWNER))
    assert (held.status, held.verdict) == ("decided", "abort")


def _lying_npy(kind: str) -> Callable[..., tuple[object, bytes]]:
    """``array_to_npy`` of a Prover whose signed values are a .npy announcing a huge array:
    in its header only (``header``), or in the signed shape too (``signed shape``)."""
    import hashlib
    import sys

    from protocol.messages import ArrayRef, array_to_npy
    from tests.verifier_client.test_malicious_prover import forged

    def lying(name: str, array: object) -> tuple[object, bytes]:
        ref, data = array_to_npy(name, array)  # type: ignore[arg-type]
        if name != "values" or sys._getframe(1).f_code.co_name != "_finish":
            return ref, data  # the chunks it keeps for itself stay honest
        huge = (2**20, 2**20)  # 8 TiB of float64
        lie = forged(data, huge)
        shape = huge if kind == "signed shape" else ref.shape
        sha = hashlib.sha256(lie).hexdigest()
        return ArrayRef(name=name, sha256=sha, dtype=ref.dtype, shape=shape), lie

    return lying


@pytest.mark.parametrize("kind", ["header", "signed shape"])
def test_a_npy_announcing_a_huge_array_is_a_bad_response_abort(
    world: World, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 21, item 13: checked against the expected shape before anything is allocated
    import prover_service.sessions

    monkeypatch.setattr(prover_service.sessions, "array_to_npy", _lying_npy(kind))
    result = world.verify()
    assert (result["status"], result["verdict"]) == ("decided", "abort")
    assert result["reason"] == "bad_response" and "shape" in str(result["detail"])
    assert "1048576" in str(result["detail"])
    (row,) = world.store.all()
    assert row.verdict_json is not None and result["verdict_posted"]
