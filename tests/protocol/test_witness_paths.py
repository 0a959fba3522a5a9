"""Any hardware: the same certificate whichever code path found theta (issue point 5).

digits-logreg:certifiable=1 on one shared-base challenge (2 bases, |E| = 8), at the per-value
limit a challenge at epsilon = 0.05 states. Three honest Provers, none bitwise equal:

* the task's own path (float64 torch L-BFGS, numpy Newton-PCG polish);
* float32 torch L-BFGS, then scipy Newton-CG with torch-autograd gradients and Hessian-vector
  products (tests/fixtures/other_solver_logreg.py);
* the own path in a subprocess with 2 BLAS / torch threads;
* (``gpu``) the task on CUDA in float32, then the float64 polish.

Each passes the check with 0 rejected subsets; their values agree within the sum of their
per-value bounds (both bound the distance to the same f(theta*)), and the certificates they
give (finite validity, per-value tau) agree to within those bounds' charge.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protocol.certificate import certify
from protocol.sampling import SharedBaseDesign
from protocol.tasks.digits import DigitsLogReg
from protocol.witness import check_witnesses, witness_limit
from tests.fixtures.other_solver_logreg import make_task

DESIGN = SharedBaseDesign.saunshi(b"\x05" * 32, 1497, 0.5, 0.2, 2)
LIMIT = witness_limit(0.05, 16.0, DESIGN.rhos)
pytestmark = pytest.mark.slow  # about 100 s: the scipy path and a subprocess
ROOT = Path(__file__).parents[2]
_THREADS = """
import sys, numpy as np, torch
torch.set_num_threads(2)
from protocol.sampling import SharedBaseDesign
from protocol.tasks.digits import DigitsLogReg
design = SharedBaseDesign.saunshi(b"\\x05" * 32, 1497, 0.5, 0.2, 2)
problem = DigitsLogReg(certifiable=1).certifiable()
np.save(sys.argv[1], problem.witnesses(design.masks(), design.seeds(), float(sys.argv[2])))
"""


@pytest.fixture(scope="module")
def verifier():  # type: ignore[no-untyped-def]
    return DigitsLogReg(certifiable=1).certifiable()


def _certified(problem, theta):  # type: ignore[no-untyped-def]
    masks = DESIGN.masks()
    check = check_witnesses(problem, theta, masks, problem.outputs(theta), LIMIT)
    assert check.rejected == ()
    cert = certify(check.values, np.zeros_like(check.values), DESIGN, delta=0.05,
                   tau=check.tau, validity="finite", bound=16.0)  # fmt: skip
    return check, cert


def _compare(verifier, a, b) -> None:  # type: ignore[no-untyped-def]
    assert not np.array_equal(a, b)  # another code path: other bits
    check_a, cert_a = _certified(verifier, a)
    check_b, cert_b = _certified(verifier, b)
    assert np.all(np.abs(check_a.values - check_b.values) <= check_a.tau + check_b.tau)
    slack = cert_a.tau_slack + cert_b.tau_slack
    assert abs(cert_a.certified_epsilon - cert_b.certified_epsilon) <= slack + 1e-12


def test_float32_and_scipy_newton_give_the_same_certificate(verifier) -> None:  # type: ignore[no-untyped-def]
    own = verifier.witnesses(DESIGN.masks(), DESIGN.seeds(), LIMIT / 4)
    other = make_task().certifiable().witnesses(DESIGN.masks(), DESIGN.seeds(), LIMIT / 4)
    _compare(verifier, own, other)


def test_another_thread_count_gives_the_same_certificate(verifier, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "theta.npy"
    env = os.environ | {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
                        "OPENBLAS_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}  # fmt: skip
    subprocess.run([sys.executable, "-c", _THREADS, str(out), repr(LIMIT / 4)], env=env,
                   check=True, cwd=ROOT, timeout=600)  # fmt: skip
    # Same polish code, so the bits may coincide; what must hold is the check.
    theta = np.load(out)
    _certified(verifier, theta)
    own = verifier.witnesses(DESIGN.masks(), DESIGN.seeds(), LIMIT / 4)
    assert np.abs(theta - own).max() < 1e-6


@pytest.mark.gpu
def test_cuda_float32_gives_the_same_certificate(verifier) -> None:  # type: ignore[no-untyped-def]
    gpu = DigitsLogReg(certifiable=1, dtype="float32", device="cuda").certifiable()
    theta = gpu.witnesses(DESIGN.masks(), DESIGN.seeds(), LIMIT / 4)
    own = verifier.witnesses(DESIGN.masks(), DESIGN.seeds(), LIMIT / 4)
    _compare(verifier, own, theta)
