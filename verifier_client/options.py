"""What a verification is asked to do and what it measured: the options (validated once, when
built), the sizes of a challenge, the pilot, and :class:`Verification`, the face of a running
verification (:class:`verifier_client.run.Run`) that the routes and the baselines see.

This module imports nothing of the Verifier's own, so :mod:`verifier_client.run`,
:mod:`verifier_client.routes` and :mod:`verifier_client.baselines` all import it and none of
them imports another for its types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, get_args

import numpy as np
from numpy.typing import NDArray

from protocol.datamodel import Datamodel
from protocol.decision import Decision
from protocol.errors import InvalidParameterError
from protocol.messages import LIMITS, Challenge
from protocol.sampling import Design
from protocol.signing import SignedMessage
from protocol.tasks import Task, TaskBase

if TYPE_CHECKING:
    from verifier_client.client import ProverClient
    from verifier_client.store import Record, VerifierStore

__all__ = ["Options", "Pilot", "ProtocolName", "Sizes", "Verification", "protocol_name"]


ProtocolName = Literal["auto", "interactive", "noninteractive", "naive", "witness"]


def protocol_name(text: str) -> ProtocolName:
    """A protocol's name read back from a record or a route (refused if unknown)."""
    for name in get_args(ProtocolName):
        if text == name:
            return cast("ProtocolName", name)
    raise InvalidParameterError(f"unknown protocol {text!r}; one of {get_args(ProtocolName)}")


@dataclass(frozen=True)
class Options:
    """What to verify and how much to spend. ``pairs_per_level`` (bases, for the shared-base
    layout) and ``spot_checks`` left at None are chosen from ε (module doc)."""

    task: str
    epsilon: float
    delta: float = 0.05
    relative: bool = False  # epsilon is a fraction of Var f (the mean over targets)
    aggregate: Literal["mean", "max"] = "mean"
    # auto: clt where protocol.certificate.clt_refusal allows, else betting
    validity: Literal["auto", "betting", "clt", "finite"] = "auto"
    layout: Literal["pairs", "shared-base"] = "shared-base"
    protocol: ProtocolName = "auto"  # auto: the cheapest route that reaches epsilon (routes)
    estimator: Literal["gap", "residual"] = "gap"
    pairs_per_level: int | None = None
    spot_checks: int | None = None
    spot_fraction: float = 0.1
    pilot: int = 32
    max_prover_trainings: int = LIMITS["n_subsets"]
    fresh_samples: int = 0
    tau: float | None = None  # CHECKEQUIV tolerance; None: the task's; never below the task's
    witness_limit: float | None = None  # witness route: per-value bound; None: 1 % of epsilon
    rho0: float = 0.2
    p: float = 0.5
    honest_err: float = 0.0  # baselines only: their threshold is (epsilon + honest_err) / 2
    attribution: str = "latest"  # a content hash, "latest" (reuse, with a note) or "new"
    method: str = "ridge"
    budget: int = 2000
    poll_s: float = 0.25
    timeout_s: float = 3600.0
    seed: bytes | None = None  # fixes the design (pilot, E, fresh samples), never a secret
    secrets_seed: bytes | None = None  # tests only (verify() refuses it): nonce, salt, spots
    # plan only: the smallest epsilon each route reaches within this many trainings here (no
    # epsilon needed, no challenge sent: Run.reach)
    reach_trainings: int | None = None

    def __post_init__(self) -> None:
        self.validate()  # once, when built (and again by every dataclasses.replace)

    def validate(self) -> None:
        """Refuse bad options before any traffic (the user's error, not the Prover's); run when
        the options are built, so an ``Options`` that exists is a valid one."""
        choices = {
            "protocol": (
                self.protocol,
                get_args(ProtocolName),
            ),
            "estimator": (self.estimator, ("gap", "residual")),
            "aggregate": (self.aggregate, ("mean", "max")),
            "validity": (self.validity, ("auto", "betting", "clt", "finite")),
            "layout": (self.layout, ("pairs", "shared-base")),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise InvalidParameterError(f"unknown {name} {value!r}; one of {allowed}")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0) or not 0 < self.delta < 1:
            raise InvalidParameterError("need epsilon > 0 and delta in (0, 1)")
        if self.relative and self.epsilon >= 1:
            raise InvalidParameterError("a relative epsilon is a fraction of Var f, below 100 %")
        if not 0 <= self.honest_err < self.epsilon:
            raise InvalidParameterError("honest_err must lie in [0, epsilon)")
        if self.pairs_per_level is not None and self.pairs_per_level < 2:
            raise InvalidParameterError("need at least 2 pairs (bases) per level")
        if (self.spot_checks is not None and self.spot_checks < 0) or self.fresh_samples < 0:
            raise InvalidParameterError("sample sizes must be non-negative")
        if not 0 < self.spot_fraction < 1 or self.pilot < 4:
            raise InvalidParameterError("need 0 < spot_fraction < 1 and a pilot of >= 4 bases")
        if self.protocol == "naive" and self.fresh_samples < 2:
            raise InvalidParameterError("the naive protocol needs --fresh >= 2")
        if self.estimator == "residual" and self.protocol != "naive" and self.fresh_samples < 2:
            raise InvalidParameterError("the residual estimator needs --fresh >= 2 samples")
        if self.tau is not None and not (math.isfinite(self.tau) and self.tau >= 0):
            raise InvalidParameterError(f"tau must be finite and >= 0; got {self.tau!r}")
        if self.reach_trainings is not None:
            if self.reach_trainings < 1:
                raise InvalidParameterError("--reach needs a budget of at least 1 training")
            if self.relative or self.pairs_per_level is not None or self.spot_checks is not None \
                    or self.protocol not in ("auto", "interactive", "noninteractive", "witness") \
                    or self.estimator != "gap":  # fmt: skip
                raise InvalidParameterError(
                    "--reach plans every route from the pilot: it takes no --epsilon, --pairs "
                    "or --spot-checks, and the gap estimator only"
                )

    def tau_for(self, task: TaskBase) -> float:
        """The CHECKEQUIV tolerance of a challenge: the task's declared tau, or a larger one the
        Verifier asks for; a smaller one is refused (honest runs could then differ by more)."""
        if self.tau is None:
            return task.tau
        if self.tau < task.tau:
            raise InvalidParameterError(
                f"--tau {self.tau:g} is below the tau = {task.tau:g} task {task.name!r} declares: "
                "honest runs may differ by that much"
            )
        return self.tau

    @property
    def threshold(self) -> float:
        """The baselines' threshold, (epsilon + honest_err) / 2."""
        return (self.epsilon + self.honest_err) / 2.0


@dataclass(frozen=True)
class Sizes:
    """The sizes of one challenge, where they came from, and the prediction to check."""

    epsilon: float  # absolute units
    delta: float  # left for the certificate (a relative epsilon spends delta / 4)
    pairs_per_level: int
    spot_checks: int
    source: str
    predicted_width: float | None = None
    variance_lower_bound: float | None = None
    pilot_trainings: int = 0
    looks: tuple[int, ...] = ()  # checking alone: the bases certified at each look (baselines)
    first_look_chance: float | None = None  # the plan's chance that the first look certifies


@dataclass(frozen=True)
class Pilot:
    """The Verifier's pilot: its design and masks, its values, the committed g's predictions,
    epsilon in absolute units (and Var f's lower bound when epsilon was relative) and the
    seconds one local training took."""

    design: Design
    masks: NDArray[np.bool_]
    values: NDArray[np.float64]
    predictions: NDArray[np.float64]
    epsilon: float
    var_lb: float | None
    seconds_per_training: float


class Verification(Protocol):
    """A running verification as the routes and the baselines use it (the one implementation is
    :class:`verifier_client.run.Run`)."""

    client: ProverClient
    store: VerifierStore
    opts: Options
    url: str

    @property
    def held_pilot(self) -> Pilot | None: ...

    def random(self, label: str, n: int) -> bytes: ...

    def note(self, message: str) -> None: ...

    def train(
        self, task: Task, masks: NDArray[np.bool_], seeds: NDArray[np.uint64], phase: str
    ) -> tuple[NDArray[np.float64], NDArray[np.float32]]: ...

    def pilot(self, task: TaskBase, model: Datamodel) -> Pilot: ...

    def sizes(
        self, task: TaskBase, model: Datamodel, prover_cap: int, trusted: bool | None = None,
        quiet: bool = False, own: bool | None = None,
    ) -> Sizes: ...  # fmt: skip

    def start(
        self, task: TaskBase, task_hash: str, content: str, sizes: Sizes
    ) -> tuple[Record, Challenge]: ...

    def finish(
        self, record: Record, decision: Decision, sid: str | None, response: SignedMessage | None
    ) -> dict[str, Any]: ...
