"""The Prover service over ASGI: happy path, refusals with the right status, restart and resume,
adversaries, and the OpenAPI schema."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from protocol.datamodel import Datamodel
from protocol.messages import (
    AttributionManifest,
    Challenge,
    ResponseManifest,
    Verdict,
    array_from_npy,
)
from protocol.sampling import ChallengeDesign
from protocol.signing import (
    SignedMessage,
    generate_key,
    open_signed,
    sign_message,
    sign_request,
)
from protocol.tasks import load_task
from prover_service.app import create_app
from prover_service.service import ProverService
from prover_service.tables import JobRow
from tests.prover_service.conftest import (
    SALT,
    SPOT,
    TASK,
    Prover,
    SignedAuth,
    make_settings,
    signed_challenge,
)

BOUND = load_task(TASK).bound


def _auth(key, method: str, path: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return sign_request(key, method, path, b"")


def _verdict(
    key, session_id: str, challenge: SignedMessage, response: SignedMessage, indices=SPOT, salt=SALT
) -> SignedMessage:  # type: ignore[no-untyped-def]
    return sign_message(
        key,
        Verdict(
            session_id=session_id,
            challenge_digest=challenge.digest,
            response_digest=response.digest,
            verdict="accept",
            reason="passed",
            figures={"gap": 0.01},
            spot_check_indices=tuple(indices),
            salt=salt.hex(),
            timestamp=int(time.time()),
        ),
    )


def test_happy_path(prover: Prover) -> None:
    info = prover.client.get("/v1/info").json()
    assert info["protocol_version"] == 1 and len(info["public_key"]) == 64
    content_hash = prover.publish()
    got = prover.client.get(f"/v1/attributions/{content_hash}").json()
    manifest = open_signed(
        SignedMessage.model_validate(got["manifest"]),
        AttributionManifest,
        signer=info["public_key"],
    )
    raw = prover.client.get(f"/v1/attributions/{content_hash}/datamodel").content
    assert Datamodel.from_bytes(raw).content_hash == manifest.content_hash == content_hash
    assert (
        prover.client.get(f"/v1/attributions?task={prover.task_hash}").json()["content_hash"]
        == content_hash
    )

    vkey = generate_key()
    challenge = signed_challenge(vkey, prover.task_hash, content_hash, BOUND)
    created = prover.client.post("/v1/challenges", json=challenge.model_dump())
    assert created.status_code == 201, created.text
    sid = created.json()["session_id"]
    mine = SignedAuth(vkey)
    assert prover.client.get(f"/v1/sessions/{sid}/response", auth=mine).status_code == 409
    prover.service.run_pending()
    session = prover.client.get(f"/v1/sessions/{sid}", auth=mine).json()
    assert session["status"] == "ready" and session["job"]["done"] == 60
    response = SignedMessage.model_validate(
        prover.client.get(f"/v1/sessions/{sid}/response", auth=mine).json()
    )
    rm = open_signed(response, ResponseManifest, signer=info["public_key"])
    assert rm.challenge_digest == challenge.digest
    values = array_from_npy(
        rm.values, prover.client.get(f"/v1/arrays/{rm.values.sha256}", auth=mine).content
    )
    design = ChallengeDesign.saunshi(
        bytes.fromhex(challenge.payload["challenge_seed"]), 20, 0.5, 0.2, 10
    )
    np.testing.assert_array_equal(values, load_task(TASK).evaluate(design.masks(), design.seeds()))

    decided = prover.client.post(
        f"/v1/sessions/{sid}/verdict", json=_verdict(vkey, sid, challenge, response).model_dump()
    )
    assert decided.status_code == 200 and decided.json()["verdict"] == "accept"
    path = f"/v1/sessions/{sid}/transcript"
    assert prover.client.get(path).status_code == 401  # private by default
    transcript = prover.client.get(path, headers=_auth(vkey, "GET", path)).json()
    assert transcript["verdict_message"]["payload"]["spot_check_indices"] == SPOT
    assert prover.client.get("/v1/sessions").json() == []  # nothing visible unsigned
    target = "/v1/sessions?verdict=accept"
    mine = prover.client.get(target, headers=_auth(vkey, "GET", target))
    assert [s["session_id"] for s in mine.json()] == [sid]
    # the signature covers the query string: one signed for the bare path is refused
    other = prover.client.get(target, headers=_auth(vkey, "GET", "/v1/sessions"))
    assert other.status_code == 401 and other.json()["code"] == "unauthorized"


def test_refusals_have_the_right_status_and_a_clear_message(prover: Prover) -> None:
    content_hash = prover.publish()
    vkey = generate_key()
    post = lambda m: prover.client.post("/v1/challenges", json=m.model_dump())  # noqa: E731
    good = signed_challenge(vkey, prover.task_hash, content_hash, BOUND)

    tampered = good.model_copy(update={"payload": {**good.payload, "epsilon": 9.0}})
    assert post(tampered).status_code == 401
    other = sign_message(generate_key(), open_signed(good, Challenge))
    assert post(other).status_code == 401  # signed by a key other than the one it names
    stale = signed_challenge(vkey, prover.task_hash, content_hash, BOUND, timestamp=1_000)
    r = post(stale)
    assert r.status_code == 401 and "stale" in r.json()["detail"]
    assert post(good).status_code == 201
    r = post(good)
    assert r.status_code == 409 and "nonce" in r.json()["detail"]
    r = post(signed_challenge(vkey, "f" * 64, content_hash, BOUND))
    assert r.status_code == 404 and "unknown task" in r.json()["detail"]
    r = post(signed_challenge(vkey, prover.task_hash, "e" * 64, BOUND))
    assert r.status_code == 404 and "attribution" in r.json()["detail"]
    r = post(signed_challenge(vkey, prover.task_hash, content_hash, BOUND + 1))
    assert r.status_code == 422 and "bound" in r.json()["detail"]
    r = prover.client.post(
        "/v1/challenges", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["code"] == "malformed"
    r = prover.client.post(
        "/v1/challenges", content=b"x" * (9 * 2**20), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert prover.client.get("/v1/sessions/" + "0" * 32).status_code == 404
    assert prover.client.get("/v1/jobs/nope").status_code == 404
    r = prover.client.post(
        "/v1/attributions",
        json={"task_hash": prover.task_hash, "method": "magic", "budget": 10},
        auth=SignedAuth(generate_key()),
    )
    assert r.status_code == 422 and "unknown method" in r.json()["detail"]
    refused = (("ridge:lambda=2", "no setting lambda"), ("trak:checkpoints", "key=value"))
    with prover.service.db() as db:
        jobs = db.scalar(select(func.count()).select_from(JobRow))
    for method, match in refused:
        r = prover.client.post(
            "/v1/attributions",
            json={"task_hash": prover.task_hash, "method": method, "budget": 10},
            auth=SignedAuth(generate_key()),
        )
        assert r.status_code == 422 and re.search(match, r.json()["detail"]), r.text
    with prover.service.db() as db:  # refused before any job was queued
        assert db.scalar(select(func.count()).select_from(JobRow)) == jobs


@pytest.mark.parametrize("layout", ["pairs", "shared-base"])
def test_a_challenge_counts_the_subsets_its_design_has(tmp_path: Path, layout: str) -> None:
    """|E| is 6 n on pairs and 4 n on the shared base: the job's progress total and the
    operator's cap both use the design's own size."""
    n = 10
    expected = {"pairs": 6 * n, "shared-base": 4 * n}[layout]
    for cap, status in ((expected, 201), (expected - 1, 413)):
        (tmp_path / str(cap)).mkdir()
        settings = make_settings(tmp_path / str(cap), max_subsets=cap)
        app = create_app(settings)
        with TestClient(app) as client:
            task_hash = client.get("/v1/info").json()["tasks"][0]["task_hash"]
            prover = Prover(client, app.state.service, settings, task_hash)
            vkey = generate_key()
            challenge = signed_challenge(vkey, task_hash, prover.publish(), BOUND,
                                         layout=layout, pairs_per_level=n)  # fmt: skip
            r = client.post("/v1/challenges", json=challenge.model_dump())
            assert r.status_code == status, r.text
            if status == 201:
                job = client.get(f"/v1/jobs/{r.json()['job_id']}", auth=SignedAuth(vkey)).json()
                assert job["total"] == expected
        app.state.service.engine.dispose()


def test_verdict_must_open_the_commitment_and_is_recorded_once(prover: Prover) -> None:
    content_hash = prover.publish()
    vkey = generate_key()
    challenge = signed_challenge(vkey, prover.task_hash, content_hash, BOUND)
    sid = prover.client.post("/v1/challenges", json=challenge.model_dump()).json()["session_id"]
    prover.service.run_pending()
    response = SignedMessage.model_validate(
        prover.client.get(f"/v1/sessions/{sid}/response", auth=SignedAuth(vkey)).json()
    )
    url = f"/v1/sessions/{sid}/verdict"
    wrong = _verdict(vkey, sid, challenge, response, indices=[1, 4, 8])
    r = prover.client.post(url, json=wrong.model_dump())
    assert r.status_code == 422 and "commitment" in r.json()["detail"]
    forged = _verdict(generate_key(), sid, challenge, response)
    assert prover.client.post(url, json=forged.model_dump()).status_code == 401
    ok = _verdict(vkey, sid, challenge, response)
    assert prover.client.post(url, json=ok.model_dump()).status_code == 200
    # the same verdict again (a re-post after a lost reply) is accepted; another one is not
    assert prover.client.post(url, json=ok.model_dump()).status_code == 200
    other = _verdict(vkey, sid, challenge, response)  # a later time stamp: another message
    other = sign_message(vkey, open_signed(other, Verdict).model_copy(update={"verdict": "abort"}))
    assert prover.client.post(url, json=other.model_dump()).status_code == 409


def test_a_killed_job_resumes_and_gives_identical_bytes(tmp_path: Path) -> None:
    # Reference: an uninterrupted Prover. Then a Prover stopped after 2 of 5 chunks, and a new
    # one on the same database (a restart), which must finish with the same values bytes.
    def run(root: Path, interrupt: bool) -> str:
        root.mkdir()
        settings = make_settings(root, tasks=["planted:n_train=20,n_targets=2,seed=3"])
        service = ProverService(settings)
        task_hash = next(iter(service.tasks))
        job = service.attributions.submit(task_hash, "ridge", 200, 0.5, "")
        service.run_pending()
        content = service.job(job.id).result
        assert content is not None
        challenge = signed_challenge(
            generate_key(),
            task_hash,
            content,
            service.tasks[task_hash].bound,
            pairs_per_level=800,
            challenge_seed="ab" * 32,
        )
        session = service.sessions.submit(challenge)
        if interrupt:
            service.run_pending(max_chunks=2)
            assert service.job(session.job_id).done == 2048
            service.close()  # the killed process's connections are gone with it
            service = ProverService(settings)  # the restart
        service.run_pending()
        rm = ResponseManifest.model_validate(service.sessions.response(session.id).payload)
        service.close()
        return rm.values.sha256 + rm.probes.sha256

    assert run(tmp_path / "a", interrupt=False) == run(tmp_path / "b", interrupt=True)


@pytest.mark.parametrize(
    "spec", ["scale:0.5", "inflate:10%:3.0", "lie:0.2", "lazy:0.3", "favor:0.1:0.5", "noise:0.1"]
)
def test_adversaries_change_what_they_claim_to(tmp_path: Path, spec: str) -> None:
    honest = ProverService(
        make_settings(tmp_path / "h" if (tmp_path / "h").mkdir() is None else tmp_path)
    )
    cheat_root = tmp_path / "c"
    cheat_root.mkdir()
    cheat = ProverService(make_settings(cheat_root, adversary=spec))
    task_hash = next(iter(honest.tasks))
    out = {}
    for name, svc in (("honest", honest), ("cheat", cheat)):
        job = svc.attributions.submit(task_hash, "ridge", 200, 0.5, "")
        svc.run_pending()
        content = svc.job(job.id).result
        dm = Datamodel.from_bytes(svc.attributions.attribution(content)[1])
        ch = signed_challenge(
            generate_key(), task_hash, content, svc.tasks[task_hash].bound, challenge_seed="cd" * 32
        )
        session = svc.sessions.submit(ch)
        svc.run_pending()
        rm = ResponseManifest.model_validate(svc.sessions.response(session.id).payload)
        out[name] = (dm, array_from_npy(rm.values, svc.sessions.array(rm.values.sha256)))
    (dm_h, v_h), (dm_c, v_c) = out["honest"], out["cheat"]
    if spec == "scale:0.5":
        np.testing.assert_allclose(dm_c.weights, dm_h.weights * 0.5)
        np.testing.assert_array_equal(v_c, v_h)
    elif spec.startswith(("favor", "noise")):
        assert not np.allclose(dm_c.weights, dm_h.weights)
    else:
        changed = np.any(v_c != v_h, axis=1).mean()
        assert 0.05 < changed < 0.6, changed
        np.testing.assert_array_equal(dm_c.weights, dm_h.weights)


def test_replay_answers_with_an_earlier_response(tmp_path: Path) -> None:
    svc = ProverService(make_settings(tmp_path, adversary="replay"))
    task_hash = next(iter(svc.tasks))
    job = svc.attributions.submit(task_hash, "ridge", 200, 0.5, "")
    svc.run_pending()
    content = svc.job(job.id).result
    values = []
    for seed in ("01" * 32, "02" * 32):
        ch = signed_challenge(
            generate_key(), task_hash, content, svc.tasks[task_hash].bound, challenge_seed=seed
        )
        session = svc.sessions.submit(ch)
        svc.run_pending()
        rm = ResponseManifest.model_validate(svc.sessions.response(session.id).payload)
        values.append(array_from_npy(rm.values, svc.sessions.array(rm.values.sha256)))
    np.testing.assert_array_equal(values[0], values[1])


def test_openapi_describes_every_endpoint(prover: Prover) -> None:
    schema = prover.client.get("/openapi.json").json()
    assert prover.client.get("/docs").status_code == 200
    expected = {
        "/v1/info",
        "/v1/attributions",
        "/v1/jobs/{job_id}",
        "/v1/attributions/{content_hash}",
        "/v1/attributions/{content_hash}/datamodel",
        "/v1/challenges",
        "/v1/sessions",
        "/v1/sessions/{session_id}",
        "/v1/sessions/{session_id}/response",
        "/v1/sessions/{session_id}/verdict",
        "/v1/sessions/{session_id}/transcript",
        "/v1/arrays/{sha}",
    }
    assert expected <= set(schema["paths"])
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            assert op.get("summary"), f"{method.upper()} {path} has no summary"
            assert op.get("description"), f"{method.upper()} {path} has no description"
            assert any(code.startswith("2") for code in op["responses"]), path


def test_public_transcripts_flag_opens_the_audit_log(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, public_transcripts=True))
    with TestClient(app) as client:
        service = app.state.service
        task_hash = next(iter(service.tasks))
        job = service.attributions.submit(task_hash, "ridge", 200, 0.5, "")
        service.run_pending()
        challenge = signed_challenge(generate_key(), task_hash, service.job(job.id).result, BOUND)
        sid = service.sessions.submit(challenge).id
        service.run_pending()
        assert client.get(f"/v1/sessions/{sid}/transcript").status_code == 200  # unsigned
        assert [s["session_id"] for s in client.get("/v1/sessions").json()] == [sid]
