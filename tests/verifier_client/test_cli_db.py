"""``--db``: a bare file path is SQLite; a path in a missing folder, a URL of no known database,
or a database that cannot be reached is one line on stderr and exit 2 (not a traceback, which
scripts would read as exit 1, "abort")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _history(db: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    command = [sys.executable, "-m", "verifier_client", "history", "--db", db]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_a_bare_path_is_sqlite(tmp_path: Path) -> None:
    run = _history("records.db", tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "records.db").stat().st_mode & 0o777 == 0o600  # it holds secrets


@pytest.mark.parametrize(
    ("db", "says"),
    [
        ("no/such/folder/v.db", "folder 'no/such/folder' does not exist"),
        ("bogus://somewhere/x", "is not a database URL"),
        ("postgresql+psycopg://vda@127.0.0.1:1/records", "the records' database failed"),
    ],
)
def test_a_bad_db_is_one_line_and_exit_2(tmp_path: Path, db: str, says: str) -> None:
    run = _history(db, tmp_path)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and says in run.stderr, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert not (tmp_path / "no").exists()  # nothing was created
