"""Every error reply is ``ErrorResponse{code, detail}`` and is documented: FastAPI's and
Starlette's own (unknown route, wrong method, a body over the limit, a body that does not parse)
included, HTML pages' included."""

from __future__ import annotations

from protocol.wire import ErrorResponse
from tests.prover_service.conftest import Prover

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def test_a_wrong_method_names_every_method_of_the_path(prover: Prover) -> None:
    r = prover.client.request("PUT", "/v1/attributions")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
    assert r.headers["allow"] == "GET, POST"  # two routes share the path; Starlette names one
    assert prover.client.request("DELETE", "/v1/info").headers["allow"] == "GET"
    # the most specific documented path: /import (POST), not /{content_hash} (GET)
    assert prover.client.request("PUT", "/v1/attributions/import").headers["allow"] == "POST"


def test_a_body_over_the_limit_is_413_code_and_detail(prover: Prover) -> None:
    limit = prover.settings.max_body_bytes
    r = prover.client.post("/v1/challenges", content=b"x" * (limit + 1))
    assert r.status_code == 413
    assert ErrorResponse.model_validate(r.json()).code == "too_large"


def test_every_error_status_is_documented_as_error_response(prover: Prover) -> None:
    schema = prover.client.get("/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # our 422, not FastAPI's
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            errors = {c: r for c, r in op["responses"].items() if c[0] in "45"}
            assert {"404", "405", "413", "422", "500"} <= set(errors), where
            for code, reply in errors.items():
                assert reply["content"] == {"application/json": {"schema": ERROR_REF}}, (
                    f"{where} {code}"
                )
            if method == "post":
                assert "429" in errors and "retry-after" in {
                    h.lower() for h in errors["429"].get("headers", {})
                }, where
