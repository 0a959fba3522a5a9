"""``digits-logreg:certifiable=1``: digits-logreg with f defined at the exact optimum.

With ``certifiable=1`` the task changes in two ways, both in its spec (so its hash differs from
the plain task's and both parties know which one they train):

* the objective penalises every parameter, the intercept included:
  ``sum_{i in x} CE_i + 0.5 l2 ||W||^2``; it is then l2-strongly convex (mu = l2,
  :mod:`protocol.tasks.multinomial`), where the plain task's unpenalised intercept leaves a
  flat direction;
* f(x) is *defined* as the correct-class margins at the exact optimum theta*(x). Training is
  the task's own L-BFGS (warm-started, ``iters`` iterations, in the task's dtype on its device)
  followed by a float64 Newton-PCG polish (:meth:`MultinomialProblem.polish`) to the rounding
  floor; honest runs then differ by rounding only, and the declared tau (1e-9) still holds.

The certifiable extension (:meth:`protocol.tasks.digits_logreg.DigitsLogReg.certifiable`) is the
:class:`~protocol.tasks.multinomial.MultinomialProblem` on the same pool and targets, whose
``witnesses`` run the same L-BFGS and polish only until the per-value bound the challenge asks
for (:mod:`protocol.witness`).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from protocol.tasks.digits_data import DigitsData
from protocol.tasks.multinomial import MultinomialProblem

__all__ = [
    "EVALUATE_GRADIENT_TOL",
    "CertifiableLogReg",
    "certified_chunk",
    "certified_problem",
    "certified_spec",
]

# evaluate() polishes until ||grad|| <= this (or the rounding floor stops it): per-value bounds
# of <= 35 * 1e-10 / l2, far below the declared tau.
EVALUATE_GRADIENT_TOL = 1e-10


class CertifiableLogReg(Protocol):
    """What this module reads of the task (:class:`protocol.tasks.digits_logreg.DigitsLogReg`,
    which imports this module; the protocol keeps the dependency one way)."""

    data: DigitsData
    l2: float
    bound: float
    p: float
    device: torch.device

    @property
    def probe_inputs(self) -> torch.Tensor: ...

    def solve(self, weights: torch.Tensor) -> torch.Tensor: ...

    def logits(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor: ...


def certified_problem(task: CertifiableLogReg) -> MultinomialProblem:
    """The task's certifiable problem, whose warm solver is the task's L-BFGS."""
    data = task.data
    problem = MultinomialProblem(
        data.x_pool, data.y_pool, data.x_targets, data.y_targets, task.l2, task.bound, p=task.p
    )

    def lbfgs(masks: np.ndarray[Any, np.dtype[np.bool_]]) -> np.ndarray[Any, np.dtype[np.float64]]:
        with torch.no_grad():
            w = task.solve(torch.from_numpy(np.asarray(masks)).to(task.device))
        return np.ascontiguousarray(w.double().cpu().numpy().T)

    problem.warm_solver = lbfgs
    return problem


def certified_spec(task: CertifiableLogReg) -> dict[str, Any]:
    """The spec keys ``certifiable=1`` adds (module doc)."""
    return {
        "certifiable": 1,
        "objective": "0.5 l2 |W|^2 (intercept included) + sum CE",
        "output": "correct-class margin at the exact optimum",
        "polish": f"float64 Newton-PCG to ||grad|| <= {EVALUATE_GRADIENT_TOL:g}",
        "mu": task.l2,
    }


def certified_chunk(
    task: CertifiableLogReg, problem: MultinomialProblem, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Margins (K, Z) float64 at the polished optimum and probe logits (K, 16, 10)."""
    m = masks.cpu().numpy().astype(bool)
    assert problem.warm_solver is not None  # noqa: S101 - set by certified_problem
    theta, _ = problem.polish(problem.warm_solver(m), m, EVALUATE_GRADIENT_TOL)
    margins = torch.from_numpy(problem.raw_outputs(theta))
    w = torch.tensor(np.ascontiguousarray(theta.T), dtype=torch.float64, device=task.device)
    return margins, task.logits(w, task.probe_inputs.double())
