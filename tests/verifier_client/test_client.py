"""The client's three outcomes besides success, with ``httpx.MockTransport`` replies: a refusal
(4xx, its ``{code, detail}``), a transport failure (network, 5xx), the Prover's misbehaviour
(a reply that is not its wire model)."""

from __future__ import annotations

import json

import httpx
import pytest

from protocol.errors import InvalidParameterError, MalformedResponseError, VerificationError
from protocol.signing import generate_key
from verifier_client.client import ProverClient, ProverRefused, TransportError


def _client(reply: httpx.Response | type[httpx.TransportError]) -> ProverClient:
    def handle(request: httpx.Request) -> httpx.Response:
        if isinstance(reply, httpx.Response):
            return reply
        raise reply("down", request=request)

    client = ProverClient(httpx.Client(transport=httpx.MockTransport(handle), base_url="http://p"))
    client.sleep = lambda seconds: None
    return client


def test_reads_over_the_read_rate_wait_and_are_sent_again_writes_are_not() -> None:
    sent: list[httpx.Request] = []
    waits: list[float] = []
    job = {"id": "a" * 32, "kind": "challenge", "status": "running", "done": 1, "total": 4,
           "result": None, "error": None}  # fmt: skip

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if len(sent) <= 2 or request.method == "POST":
            body = {"code": "too_many_requests", "detail": "over 600 reads a minute"}
            return httpx.Response(429, json=body, headers={"Retry-After": "3"})
        return httpx.Response(200, json=job)

    http = httpx.Client(transport=httpx.MockTransport(handle), base_url="http://p")
    client = ProverClient(http, key=generate_key())
    client.sleep = waits.append
    assert client.job("a" * 32).done == 1
    assert waits == [3.0, 3.0] and len(sent) == 3
    nonces = {r.headers["X-VDA-Nonce"] for r in sent}
    assert len(nonces) == 3  # each attempt is signed afresh: a replayed nonce would be refused
    sent.clear()
    with pytest.raises(ProverRefused) as caught:
        client.cancel("a" * 32)
    assert caught.value.status == 429 and len(sent) == 1  # a write is never re-sent here


def test_a_refusal_carries_its_code_detail_and_retry_after() -> None:
    body = {"code": "too_many_requests", "detail": "30 requests a minute"}
    client = _client(httpx.Response(429, json=body, headers={"Retry-After": "7"}))
    with pytest.raises(ProverRefused) as caught:
        client.job("a" * 32)
    assert (caught.value.status, caught.value.code, caught.value.retry_after) == (
        429,
        body["code"],
        7,
    )
    assert "30 requests a minute" in str(caught.value)
    assert not isinstance(caught.value, VerificationError)


def test_a_refusal_in_another_shape_is_still_a_refusal() -> None:
    with pytest.raises(ProverRefused, match="no such page") as caught:
        _client(httpx.Response(404, text="<h1>no such page</h1>")).job("a" * 32)
    assert caught.value.code == ""


@pytest.mark.parametrize(
    "reply",
    [httpx.ConnectError, httpx.ReadTimeout, httpx.Response(502, text="bad gateway"),
     httpx.Response(503, json={"code": "store_unavailable", "detail": "later"})],
)  # fmt: skip
def test_network_and_server_failures_are_transport_errors(
    reply: httpx.Response | type[httpx.TransportError],
) -> None:
    with pytest.raises(TransportError):
        _client(reply).info()


INFO_TASK = {"task_hash": "0" * 64, "name": "planted", "n_train": 20, "n_targets": 2,
             "bound": 1.0, "tau": 0.0, "spec": {"name": "planted"}}  # fmt: skip
LIMITS = {"n_train": 10, "n_targets": 10, "n_subsets": 10, "spot_checks": 10,
          "array_bytes": 10, "json_bytes": 10, "max_subsets": 10, "max_budget": 10,
          "rate_per_minute": 1, "max_active_jobs_per_key": 1, "trainings_per_day": 1}  # fmt: skip
INFO = {"protocol_version": 1, "public_key": "1" * 64, "tasks": [INFO_TASK], "device": "cpu",
        "device_class": "x", "limits": LIMITS, "access": "open registration",
        "public_transcripts": False}  # fmt: skip


def test_a_well_formed_info_is_parsed_and_remembers_the_key() -> None:
    client = _client(httpx.Response(200, json=INFO))
    assert client.info().tasks[0].n_train == 20 and client.prover_key == "1" * 64
    assert client.task_entry("planted").task_hash == "0" * 64


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (httpx.Response(200, text="<html>hello</html>"), "not JSON"),
        (httpx.Response(200, content=json.dumps(INFO), headers={"content-type": "text/html"}),
         "not JSON"),
        (httpx.Response(200, content=b"{", headers={"content-type": "application/json"}),
         "malformed reply: body"),
        (httpx.Response(200, json=INFO | {"public_key": 5}), "public_key"),
        (httpx.Response(200, json={k: v for k, v in INFO.items() if k != "tasks"}), "tasks"),
        (httpx.Response(200, json=INFO | {"admin_url": "x"}), "admin_url"),
        (httpx.Response(200, json=INFO | {"limits": LIMITS | {"max_budget": "10"}}),
         "limits.max_budget"),
        (httpx.Response(200, json=INFO | {"tasks": [INFO_TASK | {"n_train": 0}]}),
         "tasks.0.n_train"),
    ],
)  # fmt: skip
def test_a_reply_that_is_not_its_model_is_misbehaviour(reply: httpx.Response, match: str) -> None:
    with pytest.raises(MalformedResponseError, match=match) as caught:
        _client(reply).info()
    assert caught.value.reason == "malformed_response"
    assert str(caught.value).startswith("GET /v1/info: ")


def test_an_attribution_request_is_its_wire_model() -> None:
    sent: list[dict[str, object]] = []
    job = {"id": "a" * 32, "kind": "attribution", "status": "queued", "done": 0, "total": 5,
           "result": None, "error": None}  # fmt: skip

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(202, json=job)

    client = ProverClient(httpx.Client(transport=httpx.MockTransport(handle), base_url="http://p"))
    assert client.request_attribution("0" * 64, "ridge", 5).total == 5
    assert sent == [{"task_hash": "0" * 64, "method": "ridge", "budget": 5, "p": 0.5, "seed": ""}]
    with pytest.raises(InvalidParameterError, match="budget"):
        client.request_attribution("0" * 64, "ridge", 0)  # refused here, nothing sent
    assert len(sent) == 1


def test_a_task_still_being_checked_is_asked_again_and_a_refused_one_is_not() -> None:
    # 503 task_not_ready: the Prover did nothing, so even a write is sent again (signed afresh)
    sent: list[httpx.Request] = []
    waits: list[float] = []
    job = {"id": "a" * 32, "kind": "attribution", "status": "queued", "done": 0, "total": 4,
           "result": None, "error": None}  # fmt: skip
    replies: list[httpx.Response] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return replies.pop(0)

    not_ready = {"code": "task_not_ready", "detail": "the start-up check of task t is running"}
    replies += [httpx.Response(503, json=not_ready, headers={"Retry-After": "5"})] * 2
    replies.append(httpx.Response(200, json=job))
    http = httpx.Client(transport=httpx.MockTransport(handle), base_url="http://p")
    client = ProverClient(http, key=generate_key())
    client.sleep = waits.append
    told: list[str] = []
    client.on_wait = told.append
    assert client.request_attribution("b" * 64, "regression", 8).id == "a" * 32
    assert waits == [5.0, 5.0] and len(sent) == 3 and len(told) == 2
    assert len({r.headers["X-VDA-Nonce"] for r in sent}) == 3
    # a task whose check failed, or a busy Prover, is not re-sent: the caller hears it at once
    for code in ("task_refused", "busy"):
        sent.clear()
        replies[:] = [httpx.Response(503, json={"code": code, "detail": "no"})]
        with pytest.raises(TransportError, match="503"):
            client.request_attribution("b" * 64, "regression", 8)
        assert len(sent) == 1
    # the wait is bounded in all: past READY_WAIT_S the 503 reaches the caller
    sent.clear()
    waits.clear()
    client.READY_WAIT_S = 12.0
    replies[:] = [httpx.Response(503, json=not_ready, headers={"Retry-After": "5"})] * 10
    with pytest.raises(TransportError, match="503"):
        client.request_attribution("b" * 64, "regression", 8)
    assert sum(waits) == 15.0 and len(sent) == 4


def test_transport_errors_and_refusals_share_one_root_apart_from_misbehaviour() -> None:
    from verifier_client.client import VerifierError

    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    http = httpx.Client(transport=httpx.MockTransport(handle), base_url="http://p")
    with pytest.raises(VerifierError) as timed_out:
        ProverClient(http).job("a" * 32)
    assert isinstance(timed_out.value, TransportError)
    refused = _client(httpx.Response(404, json={"code": "not_found", "detail": "no such job"}))
    with pytest.raises(VerifierError) as caught:
        refused.job("a" * 32)
    assert isinstance(caught.value, ProverRefused)
    assert not issubclass(MalformedResponseError, VerifierError)  # misbehaviour: an abort
