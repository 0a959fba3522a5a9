"""The baselines the product is measured against (docs/protocol.md#baselines), kept apart from it.

* ``noninteractive``: the Verifier trains E itself (no Prover trainings, no spot-checks) and
  certifies on its own trusted values (m* = 0): what the interactive protocol saves is the
  Prover's share of the trainings;
* ``naive`` (insecure, fooled by w/2): V trains fresh samples and accepts iff MSE-hat <= epsilon;
* the paper's residual estimator (``--estimator residual``): accept iff MSE-hat - B-hat_{>=2}
  <= (epsilon + honest_err) / 2, a point estimate with no stated error rate.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from protocol.checkequiv import EquivReport, explain
from protocol.datamodel import Datamodel
from protocol.decision import Decision, certify_values, decide, decide_threshold
from protocol.messages import LIMITS, Challenge
from protocol.residual import estimate_residual
from protocol.sampling import SharedBaseDesign, sample_masks, training_seeds
from protocol.signing import SignedMessage
from protocol.tasks import Task, TaskBase
from verifier_client.options import Sizes, Verification
from verifier_client.store import Record

if TYPE_CHECKING:
    from protocol.sampling import Design

__all__ = [
    "LOOK_DELTA", "LOOK_MAX_SHARE", "alone_looks", "first_look", "fresh_mse",
    "residual_decision", "run",
]  # fmt: skip

# Checking alone looks twice (a schedule fixed by the pilot, so a union bound holds:
# alone_looks), half of delta each: first at the size that minimises the expected trainings
# (first_look), then at the size planned for epsilon / 2. A first look above LOOK_MAX_SHARE of
# the second saves too little: one look then, with all of delta.
LOOK_DELTA = (0.5, 0.5)
LOOK_MAX_SHARE = 0.8


def first_look(
    n: int,
    *,
    epsilon: float,
    point: float,
    se: float,
    sd: float,
    mse: float,
    delta_stat: float,
    kappa: float,
    smallest: int,
) -> tuple[int, float]:
    """The first look's bases and the chance it certifies, for a second look at ``n`` bases.

    The pilot estimated err at ``point`` with standard error ``se``
    (:func:`protocol.certificate.pilot_point`; sd: the pair-sums' SD, an upper figure). At m
    bases the bound is about err + w(m) with w the statistical and bias parts of
    :func:`protocol.certificate.predicted_width` (m* = 0) at ``delta_stat``, and its point has
    SD sd / sqrt(m); so, with err near N(point, se^2),
    P(certified at m) ~ Phi((epsilon - point - w(m)) / sqrt(se^2 + sd^2 / m)). The expected
    trainings are m + (1 - P) (n - m) (the second look trains only the rest). Returns the m of
    a geometric grid from ``smallest`` to n that minimises them, and its P."""
    from protocol.certificate import predicted_width
    from protocol.distributions import norm

    point = max(0.0, point)  # err >= 0: a negative estimate is noise
    best, chance = n, 0.0
    m = max(2, smallest)
    while m < n:
        parts = predicted_width(m, 0, sd, mse, delta_stat, kappa)
        w = parts["statistical"] + parts["bias"]
        p = float(norm.cdf((epsilon - point - w) / math.sqrt(se**2 + sd**2 / m)))
        if m + (1.0 - p) * (n - m) < best + (1.0 - chance) * (n - best):
            best, chance = m, p
        m = max(m + 1, math.ceil(m * 1.15))
    return best, chance


def fresh_mse(run: Verification, task: Task, model: Datamodel, count: int) -> NDArray[np.float64]:
    """MSE of g per target on ``count`` fresh subsets trained here with fresh seeds."""
    seed = run.random("fresh", 32)
    masks = sample_masks(seed, task.n_train, run.opts.p, range(count), domain="fresh")
    values, _ = run.train(
        task, masks, training_seeds(seed, range(count), domain="fresh-seed"), "fresh_samples"
    )
    return np.asarray(model.mse(masks, values))


def residual_decision(
    run: Verification, task: Task, model: Datamodel, design: Design, values: NDArray[np.float64],
    spot: EquivReport | None,
) -> Decision:  # fmt: skip
    """The paper's test: MSE-hat (fresh samples) - B-hat_{>=2} (from E) <= the threshold."""
    res = estimate_residual(values, design, confidence=1 - run.opts.delta)
    mse = fresh_mse(run, task, model, run.opts.fresh_samples)
    diff = mse - res.residual
    return decide_threshold(
        threshold=run.opts.threshold,
        statistic=float(diff.max()),
        spot_mismatches=spot.mismatches if spot else 0,
        spot_checks=len(spot.match) if spot else 0,
        extra={
            "residual_mean": float(res.residual.mean()),
            "mse_mean": float(mse.mean()),
            "mse_minus_residual_max": float(diff.max()),
        },
        detail=explain(spot) if spot else "",
    )


def run(
    run: Verification, task: TaskBase, task_hash: str, content: str, model: Datamodel,
    record: Record | None, sizes: Sizes | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The non-interactive or the naive protocol, recorded like the interactive one
    (``sizes``: as :meth:`Run.choose_route` planned them; else planned here)."""
    o = run.opts
    if o.protocol == "naive":
        record = _record(run, task_hash, content, "naive")
        mse = fresh_mse(run, task, model, o.fresh_samples)
        decision = decide_threshold(
            threshold=o.epsilon, statistic=float(mse.max()),
            extra={"mse_max": float(mse.max()), "insecure_baseline": 1.0},
        )  # fmt: skip
        return run.finish(record, decision, None, None)
    if record is None:
        if sizes is None:
            sizes = run.sizes(task, model, LIMITS["n_subsets"])
        record, challenge = run.start(task, task_hash, content, sizes)
    else:
        challenge = Challenge.model_validate(
            SignedMessage.model_validate_json(record.challenge_json).payload
        )
    design = challenge.design(task.n_train)
    run.store.update(record.id, prover_trainings=0)
    if o.estimator == "residual":
        values, _ = run.train(task, design.masks(), design.seeds(), "local_training")
        return run.finish(record, residual_decision(run, task, model, design, values, None),
                          None, None)  # fmt: skip
    secret = json.loads(record.secret_json)
    looks = tuple((secret.get("sizes") or {}).get("looks") or ()) or (challenge.pairs_per_level,)

    def train(start: int, stop: int) -> NDArray[np.float64]:
        values, _ = run.train(task, design.masks(start, stop), design.seeds(start, stop),
                              "local_training")  # fmt: skip
        return values

    decision, bases = alone_looks(
        train, looks, design, model, epsilon=challenge.epsilon, delta=challenge.delta,
        aggregate=challenge.aggregate, validity=challenge.validity, bound=task.bound,
        p=challenge.p,
    )  # fmt: skip
    if bases < looks[-1]:
        per_base = len(design) // challenge.pairs_per_level
        run.note(f"checking alone: certified at the first look, {bases:,} of the "
                 f"{looks[-1]:,} planned bases ({bases * per_base:,} trainings)")  # fmt: skip
    return run.finish(record, decision, None, None)


def alone_looks(
    train: Callable[[int, int], NDArray[np.float64]], looks: tuple[int, ...], design: Design,
    model: Datamodel, *, epsilon: float, delta: float, aggregate: Literal["mean", "max"],
    validity: Literal["betting", "clt", "finite"], bound: float, p: float,
) -> tuple[Decision, int]:  # fmt: skip
    """Checking alone in looks: ``train(start, stop)`` gives the Verifier's own values of
    subsets start .. stop-1 of ``design``; at look i, the first ``looks[i]`` bases (a shared-base
    design's prefix is the design of that many bases) are certified with m* = 0 and no tau at
    ``LOOK_DELTA[i]`` of delta, and the looks stop at the first bound <= epsilon. Returns the
    decision and the bases it used.

    Validity: the schedule of looks and their shares of delta is fixed before any of these
    values is trained (by the pilot, which is independent of them), so by a union bound every
    look's bound holds at once with probability >= 1 - delta: stopping at the first look that
    certifies keeps P(accept | err > epsilon) <= delta. A design that is not shared-base (its
    prefix is not a design) gets one look with all of delta."""
    if len(looks) > len(LOOK_DELTA) or not isinstance(design, SharedBaseDesign):
        looks = (design.pairs_per_level,)
    shares = LOOK_DELTA if len(looks) > 1 else (1.0,)
    per_base = len(design) // design.pairs_per_level
    values = np.empty((0, 0))
    decision: Decision | None = None
    for look, bases in enumerate(looks):
        more = train(len(values), bases * per_base)
        values = more if len(values) == 0 else np.concatenate([values, more])
        part = design
        if isinstance(design, SharedBaseDesign) and bases != design.pairs_per_level:
            part = SharedBaseDesign(design.seed, design.n_train, design.p, design.rhos, bases)
        cert = certify_values(values, model, part, delta=delta * shares[look],
                              aggregate=aggregate, validity=validity, bound=bound, p=p)  # fmt: skip
        decision = decide(epsilon=epsilon, delta=delta, certificate=cert, spot=None)
        if decision.verdict == "accept":
            return decision, bases
    assert decision is not None  # noqa: S101 - looks is never empty
    return decision, looks[-1]


def _record(run: Verification, task_hash: str, content: str, protocol: str) -> Record:
    record = Record(
        id=os.urandom(16).hex(),
        prover_url=run.url,
        prover_key=run.client.prover_key or "",
        task_hash=task_hash,
        task_ref=run.opts.task,
        attribution_hash=content,
        protocol=protocol,
        estimator="none",
        challenge_json="{}",
        secret_json=json.dumps({"spot_checks": [], "salt": ""}),
        prover_trainings=0,
    )
    run.store.add(record)
    return record
