"""Start-up stays light: ``import protocol`` and both command lines' ``--help`` import none of
scipy.stats, torch or sqlalchemy (each is imported where it is used; ``--help`` took 2.4-6 s
when they were imported at start). Each case runs in a fresh interpreter and reads its
``sys.modules``; nothing here is timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
HEAVY = ("scipy.stats", "torch", "sqlalchemy", "numba")

_PROBE = """
import json, sys
{body}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("scipy", "torch",
                                                                   "sqlalchemy", "numba"))))
"""
_HELP = """
import contextlib, io
sys.argv = ["{prog}", "--help"]
from {module} import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
assert "Usage" in out.getvalue(), out.getvalue()
"""


def _imported(body: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(body=body)],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    modules: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return modules


@pytest.mark.parametrize(
    "body",
    [
        "import protocol",
        "import protocol.signing, protocol.messages, protocol.wire, protocol.tasks",
        _HELP.format(prog="vda-verifier", module="verifier_client.cli"),
        _HELP.format(prog="vda-prover", module="prover_service.cli"),
    ],
    ids=["import protocol", "wire format", "vda-verifier --help", "vda-prover --help"],
)
def test_start_up_imports_no_scipy_stats_torch_or_sqlalchemy(body: str) -> None:
    loaded = _imported(body)
    heavy = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == [], heavy


def test_the_lazy_distributions_are_scipys_own() -> None:
    import scipy.special
    import scipy.stats

    from protocol.distributions import chi2, gammaln, norm, rankdata

    q = np.array([1e-9, 0.025, 0.5, 0.975])
    assert np.array_equal(norm.ppf(q), scipy.stats.norm.ppf(q))
    assert chi2.ppf(0.05, 7) == scipy.stats.chi2.ppf(0.05, 7)
    assert gammaln(12.5) == scipy.special.gammaln(12.5)
    assert np.array_equal(rankdata([3.0, 1.0, 2.0]), [3.0, 1.0, 2.0])


_INFO = """
import tempfile
from pathlib import Path
from protocol.signing import generate_key, save_private_key
from prover_service.service import ProverService
from prover_service.settings import Settings
d = Path(tempfile.mkdtemp())
save_private_key(generate_key(), d / "k.pem")
svc = ProverService(Settings(db=f"sqlite:///{d}/p.db", key_file=d / "k.pem",
                             array_dir=d / "arrays", tasks=["planted"], run_worker=False,
                             check_tasks=False))
info = svc.info()
assert info["device"] == "cpu" and info["tasks"][0]["name"] == "planted", info
"""


def test_a_prover_of_torch_free_tasks_answers_info_without_importing_torch() -> None:
    """/v1/info names the device; a Prover whose tasks never import torch trains on the CPU
    and must not pay torch's import (seconds, 200+ MB) on its first request (issue 21)."""
    loaded = _imported(_INFO)
    assert "sqlalchemy" in loaded  # the probe built a real service
    assert not any(m == "torch" or m.startswith("torch.") for m in loaded), loaded
