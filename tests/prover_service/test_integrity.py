"""Issue 11, integrity and files: damaged arrays are never signed or served, a damaged database
or store stops ``serve`` in one line (exit 2), keys and databases are private (0600)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from protocol.errors import BadResponseError
from protocol.messages import ResponseManifest, array_to_npy
from protocol.signing import KeyFileError, generate_key, load_private_key, save_private_key
from prover_service.app import create_app
from prover_service.service import ProverService
from prover_service.tables import ChunkRow, SessionRow
from tests.prover_service.conftest import SignedAuth, make_settings, signed_challenge
from verifier_client.client import ProverClient


def _challenge(svc: ProverService) -> tuple[SessionRow, object]:
    task_hash = next(iter(svc.tasks))
    job = svc.attributions.submit(task_hash, "ridge", 200, 0.5, "")
    svc.run_pending()
    content = svc.job(job.id).result
    assert content is not None
    vkey = generate_key()
    ch = signed_challenge(vkey, task_hash, content, svc.tasks[task_hash].bound,
                          challenge_seed="ab" * 32)  # fmt: skip
    return svc.sessions.submit(ch), vkey


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def test_a_damaged_chunk_is_trained_again_not_signed(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ref = ProverService(make_settings(tmp_path / "a"))
    session, _ = _challenge(ref)
    ref.run_pending()
    want = ResponseManifest.model_validate(ref.sessions.response(session.id).payload)

    svc = ProverService(make_settings(tmp_path / "b"))
    session, _ = _challenge(svc)
    with svc.db() as s:
        job = s.get(type(svc.jobs.get(session.job_id)), session.job_id)
    assert job is not None
    svc.sessions.step(job)  # trains the only chunk and signs; then damage the chunk, re-finish
    with svc.db() as s:
        # the attribution's kept chunks live in the same table: take the challenge's
        (chunk,) = list(s.query(ChunkRow).filter_by(job_id=session.job_id))
        s.query(SessionRow).filter_by(id=session.id).update({"response_json": None})
        s.commit()
    _flip(svc.arrays.root / chunk.values_sha[:2] / chunk.values_sha)
    assert svc.sessions._chunks(session.job_id) is None  # noqa: SLF001 - damage detected
    svc.sessions.step(job)  # trains the chunk again
    got = ResponseManifest.model_validate(svc.sessions.response(session.id).payload)
    assert got.values.sha256 == want.values.sha256


def test_a_damaged_array_is_never_served(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        svc: ProverService = app.state.service
        session, vkey = _challenge(svc)
        svc.run_pending()
        sha = ResponseManifest.model_validate(
            svc.sessions.response(session.id).payload
        ).values.sha256
        _flip(svc.arrays.root / sha[:2] / sha)
        r = client.get(f"/v1/arrays/{sha}", auth=SignedAuth(vkey))  # type: ignore[arg-type]
        assert r.status_code == 503 and r.json()["code"] == "corrupt_array"


def _serving(data: bytes) -> ProverClient:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, content=data))
    return ProverClient(httpx.Client(transport=transport, base_url="http://p"))


def test_the_client_turns_a_bad_array_into_a_clear_error() -> None:
    nan_ref, nan = array_to_npy("values", np.array([[0.5, np.nan]]))
    with pytest.raises(BadResponseError, match="NaN"):
        _serving(nan).values(nan_ref, (1, 2), bound=1.0)
    big_ref, big = array_to_npy("values", np.array([[0.5, 2.0]]))
    with pytest.raises(BadResponseError, match="outside"):
        _serving(big).values(big_ref, (1, 2), bound=1.0)
    with pytest.raises(BadResponseError, match="SHA-256"):
        _serving(big).values(nan_ref, (1, 2), bound=1.0)  # bytes other than the signed ones
    with pytest.raises(BadResponseError, match="shape"):
        _serving(big).values(big_ref, (2, 1), bound=3.0)


def test_keys_and_databases_are_private(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    save_private_key(generate_key(), key)
    os.chmod(key, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_private_key(key)
    os.chmod(key, 0o600)
    ProverService(make_settings(tmp_path, key_file=key))
    assert ((tmp_path / "prover.db").stat().st_mode & 0o777) == 0o600
    assert ((tmp_path / "arrays").stat().st_mode & 0o077) == 0


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "prover_service", "serve", "--task", "planted:n_train=20",
           "--no-check-tasks", "--port", "9", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_serve_refuses_damage_and_bad_input_in_one_line(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    save_private_key(generate_key(), key)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    damaged = tmp_path / "d"
    (damaged / "arrays" / "ab").mkdir(parents=True)
    sqlite3.connect(damaged / "p.db").close()
    (damaged / "arrays" / "ab" / ("ab" * 32)).write_bytes(b"not these bytes")
    cases = {
        "folder does not exist": str(tmp_path / "no" / "such" / "p.db"),
        "database": str(junk),
        "array store": str(damaged / "p.db"),
        "readable by group": str(tmp_path / "ok.db"),
    }
    for label, db in cases.items():
        os.chmod(key, 0o644 if label == "readable by group" else 0o600)
        out = _serve("--key", str(key), "--db", db)  # a bare path is taken as SQLite
        assert out.returncode == 2, (label, out.stderr[-500:])
        assert label in out.stderr and "Traceback" not in out.stderr, (label, out.stderr)
        lines = [x for x in out.stderr.strip().splitlines() if "made it 0600" not in x]
        assert len(lines) <= 2, out.stderr  # (the warning that a 0644 database was tightened)
