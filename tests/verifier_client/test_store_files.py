"""The Verifier's database holds the secret spot-checks until each verdict: its files are the
owner's only, as keys are (issue 21, item 17)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protocol.errors import InvalidParameterError
from verifier_client.cli import app
from verifier_client.store import VerifierStore

SIDE = ("-wal", "-shm", "-journal")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_open_database_and_its_side_files_are_tightened_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "v.db"
    VerifierStore(f"sqlite:///{db}").close()
    assert _mode(db) == 0o600  # created private
    for path in (db, *(db.with_name(db.name + s) for s in SIDE)):
        path.touch()
        os.chmod(path, 0o644)  # as a copy, an old version or a umask of 022 leaves them
    with caplog.at_level(logging.WARNING, logger="verifier_client.store"):
        store = VerifierStore(f"sqlite:///{db}")
    assert store.all() == []
    for path in (db, *(db.with_name(db.name + s) for s in SIDE)):
        assert _mode(path) == 0o600, path
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 4 and all("was mode 644: set to 600" in w for w in warned)


def test_a_file_that_cannot_be_tightened_is_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "v.db"
    VerifierStore(f"sqlite:///{db}").close()
    os.chmod(db, 0o644)

    def not_yours(path: object, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", not_yours)
    with pytest.raises(InvalidParameterError, match=f"run chmod 600 {db}"):
        VerifierStore(f"sqlite:///{db}")
    out = CliRunner().invoke(app, ["history", "--db", str(db)])
    assert out.exit_code == 2 and "readable by group or others (mode 644)" in out.output
