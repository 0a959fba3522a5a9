"""Which route checks an attribution cheapest, from what the pilot measured (issue 19).

Three routes certify the same err(g) <= epsilon at the same delta:

* **interactive**: the Prover trains E, the Verifier retrains k secret spot-checks (whole
  bases) and certifies the smaller of its checked bases' own bound and the robust bound on all
  of E (:mod:`protocol.certificate`, "Checked groups");
* **alone** (``noninteractive``): the Verifier trains its own E and certifies it (m* = 0, no
  tau); the Prover trains nothing for the check. It looks twice (``verifier_client.baselines``):
  first where the expected trainings are least, then at the size planned for epsilon / 2, half
  of delta each, and stops at the first look that certifies; it is costed at its expected
  trainings (the plan's chance that the first look certifies) and its worst case is said beside
  it;
* **witness**, for a certifiable task only (:mod:`protocol.tasks.certifiable`): the Prover
  trains E and returns each subset's parameters; the Verifier checks each by one gradient pass
  and certifies its own f(theta) with m* = 0 and a per-value tau.

Every route starts from the same local pilot (already spent, so it is left out of the
comparison). Each route is then sized by :meth:`verifier_client.run.Run.sizes` (the
interactive planner, or the trusted one with m* = 0), and costed in the Verifier's
**training-equivalents**: a spot-check or an own training is one; a witness check is the
measured seconds of one gradient pass over a subset divided by the pilot's seconds per
training (both timed here, on this machine). A route whose plan was cut below epsilon by a
cap (the Prover's limit, ``--max-prover-trainings``, or the protocol's |E| limit for the
Verifier's own design) does not reach epsilon; the cheapest route that reaches it is chosen,
the interactive one when none does (its bound is the one a cut hurts least: the Prover trains).

Why interaction rarely wins for the mean (the issue's argument): k passed spot-checks leave a
corrupted fraction eta ~ (|E|/n) ln(1/delta)/k, and no estimator that knows only the spread
beats sigma sqrt(eta) against an adversary hiding honest tail values; training k subsets alone
gives ~2 z sigma / sqrt(k). So spot-checks cost about what checking alone costs, and the
chooser usually picks alone for ``mean``; ``max`` pays a Bonferroni z over Z targets in its
statistical term while m* is shared, and a certifiable task's witness check costs a fraction
of a training.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from protocol.messages import LIMITS
from protocol.sampling import subsets_per_base
from protocol.tasks import TaskBase
from protocol.tasks.certifiable import certifiable_of
from verifier_client.options import Sizes, Verification

if TYPE_CHECKING:
    from protocol.datamodel import Datamodel

__all__ = ["ROUTES", "RouteCost", "choose", "plan_routes", "plan_sentence"]

ROUTES = ("interactive", "noninteractive", "witness")
#: who wins a tie in this machine's trainings: checking alone needs no Prover and spends all of
#: delta on its own values, the interactive route splits delta with its spot-check event
TIE_ORDER = ("noninteractive", "witness", "interactive")
NAMES = {"interactive": "interactive", "noninteractive": "checking alone", "witness": "witness"}


@dataclass(frozen=True)
class RouteCost:
    """One route's plan: its sizes, the Verifier's training-equivalents beyond the pilot
    (``verifier_trainings``; for the witness route ``gradient_passes`` of ``per_check`` each),
    the Prover's trainings, the estimated Verifier seconds, and whether it reaches epsilon."""

    route: str
    sizes: Sizes | None
    verifier_trainings: float
    prover_trainings: int
    seconds: float
    reaches: bool
    gradient_passes: int = 0
    per_check: float = 1.0
    why: str = ""  # why the route is not available (then sizes is None)
    first_look: int = 0  # checking alone: the trainings of its first look (0: one look)
    worst: int = 0  # checking alone: both looks' trainings
    chance: float = 0.0  # checking alone: the plan's chance that its first look certifies

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "route": self.route, "verifier_training_equivalents": round(self.verifier_trainings, 3),
            "prover_trainings": self.prover_trainings, "seconds": round(self.seconds, 3),
            "reaches_epsilon": self.reaches,
        }  # fmt: skip
        if self.sizes is not None:
            out |= {"pairs_per_level": self.sizes.pairs_per_level,
                    "spot_checks": self.sizes.spot_checks, "source": self.sizes.source}  # fmt: skip
        if self.first_look:
            out |= {
                "first_look_trainings": self.first_look,
                "worst_case_trainings": self.worst,
                "first_look_chance": round(self.chance, 3),
            }
        if self.route == "witness" and self.sizes is not None:
            out |= {"gradient_passes": self.gradient_passes, "per_check": round(self.per_check, 5)}
        if self.why:
            out["unavailable"] = self.why
        return out


def spot_trainings(sizes: Sizes, per_base: int) -> int:
    """The spot-checks' trainings as the session draws them: whole bases (``Run.start``)."""
    n = sizes.pairs_per_level
    if sizes.spot_checks <= 0:
        return 0
    groups = min(n, max(1, math.ceil(min(sizes.spot_checks, n * per_base) / per_base)))
    return groups * per_base


def witness_check_cost(run: Verification, task: TaskBase, rows: int = 32) -> float | None:
    """Seconds of one witness check (a gradient pass over one subset) over the seconds of one
    local training, both measured here; None if the task is not certifiable."""
    cert = certifiable_of(task)
    if cert is None or run.held_pilot is None:
        return None
    masks = run.held_pilot.masks[:rows]
    theta = np.zeros((len(masks), cert.n_params), dtype=np.float64)
    cert.gradients(theta, masks)  # warm-up (first-call set-up is not a per-check cost)
    t0 = time.perf_counter()
    cert.gradients(theta, masks)
    per_check = (time.perf_counter() - t0) / len(masks)
    return per_check / max(run.held_pilot.seconds_per_training, 1e-9)


def plan_routes(
    run: Verification, task: TaskBase, model: Datamodel, prover_cap: int
) -> list[RouteCost]:
    """Every route's plan and cost for this task, epsilon, delta and aggregate (module doc)."""
    per_base = subsets_per_base(run.opts.layout)
    interactive = run.sizes(task, model, prover_cap, trusted=False, quiet=True)
    alone = run.sizes(task, model, LIMITS["n_subsets"], trusted=True, quiet=True, own=True)
    seconds = run.pilot(task, model).seconds_per_training
    prover_n = interactive.pairs_per_level * per_base
    own_all = alone.pairs_per_level * per_base
    own_first = alone.looks[0] * per_base if len(alone.looks) > 1 else 0
    chance = alone.first_look_chance or 0.0
    own_expected = own_first + (1.0 - chance) * (own_all - own_first) if own_first else own_all
    spots = spot_trainings(interactive, per_base)
    out = [
        RouteCost("interactive", interactive, float(spots), prover_n, spots * seconds,
                  not interactive.source.startswith("capped")),
        RouteCost("noninteractive", alone, own_expected, 0, own_expected * seconds,
                  not alone.source.startswith("capped"), first_look=own_first, worst=own_all,
                  chance=chance),
    ]  # fmt: skip
    ratio = witness_check_cost(run, task)
    if ratio is None:
        out.append(RouteCost("witness", None, math.inf, 0, math.inf, False,
                             why="the task is not certifiable"))  # fmt: skip
    else:
        witness = run.sizes(task, model, prover_cap, trusted=True, quiet=True, own=False)
        e_w = witness.pairs_per_level * per_base
        out.append(RouteCost("witness", witness, e_w * ratio, e_w, e_w * ratio * seconds,
                             not witness.source.startswith("capped"), e_w, ratio))  # fmt: skip
    return out


def choose(costs: list[RouteCost]) -> RouteCost:
    """The cheapest route that reaches epsilon (ties: :data:`TIE_ORDER`); the
    interactive one when none reaches it."""
    reaching = [c for c in costs if c.reaches and c.sizes is not None]
    if not reaching:
        return next(c for c in costs if c.route == "interactive")
    return min(reaching, key=lambda c: (c.verifier_trainings, TIE_ORDER.index(c.route)))


def _cost_words(c: RouteCost) -> str:
    if c.sizes is None:
        return f"{NAMES[c.route]}: not offered ({c.why})"
    if c.route == "interactive":
        mine = f"this machine retrains {int(c.verifier_trainings):,} spot-checks"
    elif c.route == "noninteractive":
        mine = f"this machine trains {int(c.verifier_trainings):,} models"
        if c.first_look:
            mine = (f"this machine trains {c.first_look:,} models, {c.worst:,} if its first look "
                    f"does not certify ({c.chance:.0%} that it does: {c.verifier_trainings:,.0f} "
                    "expected)")  # fmt: skip
    else:
        mine = (f"this machine checks {c.gradient_passes:,} witnesses, "
                f"{c.verifier_trainings:,.1f} training-equivalents")  # fmt: skip
    if not c.reaches and c.route == "noninteractive":
        return (f"{NAMES[c.route]}: no size up to the protocol's {c.verifier_trainings:,.0f} "
                "subsets reaches epsilon with the spread the pilot measured")  # fmt: skip
    prover = f"the Prover trains {c.prover_trainings:,}" if c.prover_trainings else \
        "the Prover trains none"  # fmt: skip
    short = "" if c.reaches else " (cut by a cap: short of epsilon)"
    return f"{NAMES[c.route]}: {prover}, {mine} (~{_secs(c.seconds)}){short}"


def _secs(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def plan_sentence(chosen: RouteCost, costs: list[RouteCost], forced: bool) -> str:
    """The plan in words, said before the Prover trains: the route, its trainings on both sides
    and an estimated time here, then what the others would have cost."""
    how = "as asked (--protocol)" if forced else "the cheapest for this machine"
    others = "; ".join(_cost_words(c) for c in costs if c.route != chosen.route)
    return f"route: {_cost_words(chosen)}; {how}. Otherwise: {others}"
