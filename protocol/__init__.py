"""The pure protocol core of verifiable data attribution (docs/protocol.md).

Sampling of subsets and seeds (:mod:`protocol.sampling`), residual and error-gap estimation
(:mod:`protocol.residual`), the certificate every verdict is made of
(:mod:`protocol.certificate`) and the strategic corruptions it is tested against
(:mod:`protocol.adversaries`), budgets (:mod:`protocol.budget`), datamodels
(:mod:`protocol.datamodel`), training tasks (:mod:`protocol.tasks`). No web, no database, and
never an import of ``prover_service`` or ``verifier_client``: both services depend on this
package, never the reverse.
"""

from protocol.budget import Pilot, Plan, plan
from protocol.certificate import Certificate, certify
from protocol.datamodel import Datamodel
from protocol.errors import (
    BudgetError,
    InvalidParameterError,
    NonFiniteError,
    ProtocolError,
    ShapeError,
    TaskError,
)
from protocol.evaluation import evaluate_design
from protocol.residual import (
    GapEstimate,
    ResidualEstimate,
    estimate_gap,
    estimate_residual,
    noise_stability,
)
from protocol.sampling import ChallengeDesign, pack_masks, unpack_masks
from protocol.tasks import Task, load_task, spec_hash

__all__ = [
    "BudgetError",
    "Certificate",
    "ChallengeDesign",
    "Datamodel",
    "GapEstimate",
    "InvalidParameterError",
    "NonFiniteError",
    "Pilot",
    "Plan",
    "ProtocolError",
    "ResidualEstimate",
    "ShapeError",
    "Task",
    "TaskError",
    "certify",
    "estimate_gap",
    "estimate_residual",
    "evaluate_design",
    "load_task",
    "noise_stability",
    "pack_masks",
    "plan",
    "spec_hash",
    "unpack_masks",
]
