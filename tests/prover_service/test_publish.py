"""Publishing an outside attribution: the signed provenance, the upload endpoints, the
``publish`` command, and the Python API giving the commands' results."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import prover_service
from protocol.datamodel import Datamodel
from protocol.errors import InvalidParameterError
from protocol.messages import AttributionManifest, Provenance
from protocol.signing import (
    generate_key,
    open_signed,
    public_key_hex,
    save_private_key,
    sign_message,
)
from protocol.tasks import load_task
from prover_service import attribute, publish
from prover_service.app import create_app
from prover_service.cli import app
from tests.prover_service.conftest import OWNER, TASK, Prover, SignedAuth, make_settings

PHI = load_task(TASK).optimal_datamodel()  # (Z, N) = (2, 20)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _upload(prover: Prover, body: bytes, query: str, **kw: object):  # type: ignore[no-untyped-def]
    headers = {"content-type": "application/octet-stream"}
    return prover.client.post(f"/v1/attributions/import?task_hash={prover.task_hash}&{query}",
                              content=body, headers=headers, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_provenance_is_signed_and_absent_when_unset() -> None:
    fields = dict(task_hash="a" * 64, method="ridge", trainings=3, n_train=20, n_targets=2,
                  content_hash="b" * 64, created_at=1)  # fmt: skip
    plain = AttributionManifest.model_validate(fields)
    assert "provenance" not in plain.model_dump(mode="json")  # earlier manifests keep their bytes
    prov = Provenance(tool="traker", tool_version="0.3.2", settings={"proj_dim": 128},
                      outside_trainings=20)  # fmt: skip
    key = generate_key()
    signed = sign_message(key, plain.model_copy(update={"provenance": prov}))
    opened = open_signed(signed, AttributionManifest, public_key_hex(key))
    assert opened.provenance == prov
    signed.payload["provenance"]["outside_trainings"] = 0  # a changed provenance breaks it
    with pytest.raises(Exception, match="signature"):
        open_signed(signed, AttributionManifest)


def test_upload_scores_then_the_manifest_carries_their_provenance(prover: Prover) -> None:
    settings = json.dumps({"proj_dim": 128, "model_output": "margin"})
    query = f"budget=64&tool=traker&tool_version=0.3.2&outside_trainings=20&settings={settings}"
    accepted = _upload(prover, _npy(PHI.weights.T * 3), query, auth=SignedAuth(OWNER))
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["orientation"] == "train-by-target" and body["orientation_inferred"]
    assert any("inferred from the shape" in n for n in body["notes"])
    prover.service.run_pending()
    job = prover.client.get(f"/v1/jobs/{body['job']['id']}", auth=SignedAuth(OWNER)).json()
    assert job["status"] == "done", job
    out = prover.client.get(f"/v1/attributions/{job['result']}").json()
    manifest = open_signed(
        prover.service.attributions.attribution(job["result"])[0], AttributionManifest
    )  # the signature holds
    assert out["manifest"]["payload"]["provenance"]["tool"] == "traker"
    prov = manifest.provenance
    assert prov is not None
    assert prov.settings == {"proj_dim": 128, "model_output": "margin"}
    assert (prov.outside_trainings, prov.calibration_trainings) == (20, 64)
    assert manifest.trainings == 84  # the tool's checkpoints are counted
    assert prov.uploader == public_key_hex(OWNER)
    assert prov.orientation == "train-by-target" and prov.calibration["negative_scales"] == 0
    assert prov.calibration["median_r2"] > 0.5
    dm = Datamodel.from_bytes(
        prover.client.get(f"/v1/attributions/{job['result']}/datamodel").content
    )
    assert load_task(TASK).err(dm).max() < 0.05


def test_upload_refusals_spend_no_training(prover: Prover, tmp_path: Path) -> None:
    good = _npy(PHI.weights)
    assert _upload(prover, good, "budget=64").status_code == 401  # unsigned
    as_json = prover.client.post(
        f"/v1/attributions/import?task_hash={prover.task_hash}&budget=64",
        json=PHI.weights.tolist(), auth=SignedAuth(OWNER),
    )  # fmt: skip
    assert as_json.status_code == 422 and "application/octet-stream" in as_json.json()["detail"]
    for body, query, match in (
        (_npy(PHI.weights[:, :19]), "budget=64", r"\(Z, N\) = \(2, 20\)"),
        (_npy(PHI.weights.T), "budget=64&orientation=target-by-train", "other orientation"),
        (_npy(np.full((2, 20), np.inf)), "budget=64", "finite|inf"),
        (b"\x93NUMPY garbage", "budget=64", "not a .npy"),
        (good, "budget=2", "at least 3"),
        (good, "budget=64&settings=[1]", "JSON object"),
    ):
        reply = _upload(prover, body, query, auth=SignedAuth(OWNER))
        assert reply.status_code == 422, (query, reply.text)
        assert reply.json()["detail"] and re.search(match, reply.json()["detail"])
    assert prover.service.run_pending() is False  # nothing was queued
    wrong = prover.client.post("/v1/attributions", auth=SignedAuth(OWNER),
                               json={"task_hash": prover.task_hash, "method": "import",
                                     "budget": 64})  # fmt: skip
    assert wrong.status_code == 422 and "/v1/attributions/import" in wrong.json()["detail"]


def test_upload_over_quota_is_429_and_leaves_no_array(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, trainings_per_day=100)
    app = create_app(settings)
    with TestClient(app) as client:
        task_hash = client.get("/v1/info").json()["tasks"][0]["task_hash"]
        prover = Prover(client, app.state.service, settings, task_hash)
        first = _upload(prover, _npy(PHI.weights), "budget=64", auth=SignedAuth(OWNER))
        assert first.status_code == 202, first.text
        stored = sorted(p.name for p in (tmp_path / "arrays").glob("??/*"))
        other = _npy(PHI.weights * 2.0)  # different bytes: would be a new array
        refused = _upload(prover, other, "budget=64", auth=SignedAuth(OWNER))
        assert refused.status_code == 429 and "Retry-After" in refused.headers, refused.text
        assert sorted(p.name for p in (tmp_path / "arrays").glob("??/*")) == stored
    app.state.service.engine.dispose()


def test_uploads_past_the_body_limit_only_for_an_admitted_key(tmp_path: Path) -> None:
    other = generate_key()
    settings = make_settings(tmp_path, max_body_bytes=2**20, max_upload_bytes=4 * 2**20,
                             verifier_keys=[public_key_hex(OWNER)])  # fmt: skip
    app = create_app(settings)
    big = _npy(np.zeros((2, 160_000)))  # 2.4 MiB: over the body limit, under the upload limit
    with TestClient(app) as client:
        task_hash = client.get("/v1/info").json()["tasks"][0]["task_hash"]
        prover = Prover(client, app.state.service, settings, task_hash)
        anonymous = _upload(prover, big, "budget=64")
        assert anonymous.status_code == 413 and anonymous.json()["code"] == "too_large"
        assert _upload(prover, big, "budget=64", auth=SignedAuth(other)).status_code == 413
        admitted = _upload(prover, big, "budget=64", auth=SignedAuth(OWNER))
        assert admitted.status_code == 422, admitted.text  # read, then refused for its shape
        assert re.search(r"\(Z, N\) = \(2, 20\)", admitted.json()["detail"])
        huge = _npy(np.zeros((2, 320_000)))  # 4.9 MiB: over the upload limit too
        assert _upload(prover, huge, "budget=64", auth=SignedAuth(OWNER)).status_code == 413
    app.state.service.engine.dispose()


def test_square_upload_needs_an_orientation(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, tasks=["planted:n_train=4,n_targets=4"])
    application = create_app(settings)
    with TestClient(application) as client:
        task_hash = client.get("/v1/info").json()["tasks"][0]["task_hash"]
        prover = Prover(client, application.state.service, settings, task_hash)
        scores = _npy(np.arange(16.0).reshape(4, 4))
        refused = _upload(prover, scores, "budget=8", auth=SignedAuth(OWNER))
        assert refused.status_code == 422 and "--orientation" in refused.json()["detail"]
        given = _upload(prover, scores, "budget=8&orientation=train-by-target",
                        auth=SignedAuth(OWNER))  # fmt: skip
        assert given.status_code == 202 and not given.json()["orientation_inferred"]
    application.state.service.engine.dispose()


def test_upload_a_complete_datamodel(prover: Prover) -> None:
    url = f"/v1/attributions/datamodel?task_hash={prover.task_hash}&tool=dattri&outside_trainings=7"
    reply = prover.client.post(url, content=PHI.to_bytes(), auth=SignedAuth(OWNER),
                               headers={"content-type": "application/octet-stream"})  # fmt: skip
    assert reply.status_code == 201, reply.text
    assert reply.json()["content_hash"] == PHI.content_hash
    payload = reply.json()["manifest"]["payload"]
    assert payload["trainings"] == 7 and payload["provenance"]["tool"] == "dattri"
    short = prover.client.post(url, content=PHI.to_bytes()[:-8], auth=SignedAuth(OWNER),
                               headers={"content-type": "application/octet-stream"})  # fmt: skip
    assert short.status_code == 422


def test_api_and_cli_give_the_same_content_hash(tmp_path: Path) -> None:
    task = "planted:n_train=30,n_targets=4,seed=5"
    scores = load_task(task).optimal_datamodel().weights.T * 2
    np.save(tmp_path / "trak.npy", scores)
    cli = CliRunner().invoke(app, ["attribute", "--task", task, "--method", "ridge", "--budget",
                                   "200", "--seed", "11", "--no-progress"])  # fmt: skip
    assert cli.exit_code == 0, cli.stderr
    api = attribute(task, "ridge", 200, seed="11")
    assert json.loads(cli.stdout)["content_hash"] == api.datamodel.content_hash
    other = attribute(task, "ridge", 200, seed="12")
    assert other.datamodel.content_hash != api.datamodel.content_hash  # the seed matters

    key = tmp_path / "prover.pem"
    save_private_key(generate_key(), key)
    args = ["publish", "--task", task, "--scores", str(tmp_path / "trak.npy"), "--budget", "64",
            "--seed", "3", "--tool", "traker", "--setting", "proj_dim=128",
            "--outside-trainings", "20", "--key", str(key), "--no-progress"]  # fmt: skip
    published = CliRunner().invoke(app, [*args, "--db", str(tmp_path / "cli.db")])
    assert published.exit_code == 0, published.stderr
    printed = json.loads(published.stdout)
    result = publish(task, scores=scores, budget=64, seed="3", tool="traker",
                     settings={"proj_dim": 128}, outside_trainings=20, prover_key=key,
                     db=str(tmp_path / "api.db"))  # fmt: skip
    assert printed["content_hash"] == result.content_hash
    assert printed["trainings"] == result.trainings == 84
    assert result.provenance.settings == {"proj_dim": 128} and result.warnings == []
    assert "inferred from the shape" in published.stderr  # the orientation was said


def test_publish_refusals(tmp_path: Path) -> None:
    task = "planted:n_train=30,n_targets=4,seed=5"
    np.save(tmp_path / "s.npy", np.zeros((4, 29)))
    for extra, match in (
        ([], "exactly one of --datamodel or --scores"),
        (["--scores", str(tmp_path / "s.npy"), "--key", "k.pem"], r"\(Z, N\) = \(4, 30\)"),
        (["--datamodel", str(tmp_path / "s.npy")], "--key"),
    ):
        result = CliRunner().invoke(app, ["publish", "--task", task, *extra, "--db",
                                          str(tmp_path / "p.db")])  # fmt: skip
        assert result.exit_code == 2 and re.search(match, result.stderr), extra
    phi = load_task(task).optimal_datamodel()
    np.savez(tmp_path / "dm.npz", intercept=phi.intercept, weights=phi.weights.T)  # dattri's (N, Z)
    key = tmp_path / "prover.pem"
    save_private_key(generate_key(), key)
    result = CliRunner().invoke(app, ["publish", "--task", task, "--datamodel",
                                      str(tmp_path / "dm.npz"), "--tool", "dattri",
                                      "--outside-trainings", "500", "--key", str(key),
                                      "--db", str(tmp_path / "p.db")])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["content_hash"] == phi.content_hash and printed["trainings"] == 500
    with pytest.raises(InvalidParameterError, match="does not exist"):
        publish(task, datamodel=tmp_path / "missing.npz", prover_key="k.pem", db=str(tmp_path))


def test_the_package_exports_its_python_api() -> None:
    assert prover_service.__all__ == sorted(prover_service.__all__)
    assert {"attribute", "publish"} <= set(prover_service.__all__)
    for name in prover_service.__all__:
        assert getattr(prover_service, name).__doc__


def test_republishing_the_same_scores_says_the_earlier_manifest_is_reused(tmp_path: Path) -> None:
    """The same scores and seed give the same datamodel, whose manifest already exists: the
    second publish returns it and says which of its fields differ from what was asked."""
    key = tmp_path / "p.pem"
    save_private_key(generate_key(), key)
    scores = tmp_path / "scores.npy"
    np.save(scores, PHI.weights.T * 3)
    common = dict(scores=scores, orientation="train-by-target", budget=32, tool="traker",
                  prover_key=key, db=f"sqlite:///{tmp_path}/p.db")  # fmt: skip
    first = publish(TASK, outside_trainings=16, **common)  # type: ignore[arg-type]
    assert not any("reused" in w for w in first.warnings)
    same = publish(TASK, outside_trainings=16, **common)  # type: ignore[arg-type]
    assert same.content_hash == first.content_hash and not any("reused" in w for w in same.warnings)
    again = publish(TASK, outside_trainings=32, **common)  # type: ignore[arg-type]
    assert again.content_hash == first.content_hash
    assert again.provenance.outside_trainings == 16  # the signed manifest is the earlier one
    (said,) = [w for w in again.warnings if "reused" in w]
    assert "outside_trainings 16 (you gave 32)" in said and first.content_hash[:16] in said
    argv = ["publish", "--task", TASK, "--scores", str(scores), "--orientation",
            "train-by-target", "--budget", "32", "--tool", "traker", "--outside-trainings",
            "48", "--key", str(key), "--db", f"sqlite:///{tmp_path}/p.db"]  # fmt: skip
    out = CliRunner().invoke(app, argv)
    assert out.exit_code == 0, out.stderr
    assert "reused" in out.stderr and "outside_trainings 16 (you gave 48)" in out.stderr
