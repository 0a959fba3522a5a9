"""The end of a pytest run says when the Chromium tests were skipped and how to install them
(tests/conftest.py's ``pytest_terminal_summary``), and says nothing when none were."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
SKIPPED = """import pytest

@pytest.mark.skip(reason="needs Debian's chromium and chromium-driver")
def test_in_chromium():
    pass

def test_other():
    pass
"""


def _run(tmp_path: Path, body: str) -> str:
    (tmp_path / "test_x.py").write_text(body)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "--rootdir", str(tmp_path), str(tmp_path / "test_x.py")],  # fmt: skip
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    return done.stdout


def test_skipped_chromium_tests_are_named_with_the_install_command(tmp_path: Path) -> None:
    out = _run(tmp_path, SKIPPED)
    assert "1 Chromium test(s) skipped" in out
    assert "apt-get install -y chromium chromium-driver" in out


def test_nothing_is_said_when_none_were_skipped(tmp_path: Path) -> None:
    assert "Chromium" not in _run(tmp_path, "def test_other():\n    pass\n")
