"""``schemathesis run`` with all its checks against a Prover served on loopback.

The API's own description (``/openapi.json``) is the contract: every reply must have a
documented status code, content type, headers and schema, never a 5xx, and ``{code, detail}``
for every error (FastAPI's and Starlette's own included: unknown route, wrong method with its
``Allow``, a body that does not parse). Bounded and reproducible: 25 examples per operation and
phase, a fixed seed, no example database, one worker (about 1.5 min on two shared cores).
Requests are unsigned, so the expensive and private endpoints answer 401 -- which is documented,
and is what an anonymous client on the internet gets.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving import serve_prover

pytest.importorskip("schemathesis")

pytestmark = pytest.mark.slow

TASK = "planted:n_train=20,n_targets=2"


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    with serve_prover(tmp_path / "p", TASK) as url:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
             "--checks", "all", "--phases", "examples,coverage,fuzzing",
             "--max-examples", "25", "--seed", "1", "--generation-database", "none",
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
