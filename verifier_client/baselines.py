"""The baselines the product is measured against (PROTOCOL.md section 4), kept apart from it.

* ``noninteractive``: the Verifier trains E itself (no Prover trainings, no spot-checks) and
  certifies on its own trusted values (m* = 0): what the interactive protocol saves is the
  Prover's share of the trainings;
* ``naive`` (insecure, fooled by w/2): V trains fresh samples and accepts iff MSE-hat <= epsilon;
* the paper's residual estimator (``--estimator residual``): accept iff MSE-hat - B-hat_{>=2}
  <= (epsilon + honest_err) / 2, a point estimate with no stated error rate.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from protocol.certificate import certify
from protocol.checkequiv import EquivReport, explain
from protocol.datamodel import Datamodel
from protocol.decision import Decision, decide, decide_threshold
from protocol.messages import Challenge
from protocol.residual import estimate_residual
from protocol.sampling import sample_masks, training_seeds
from protocol.signing import SignedMessage
from protocol.tasks import Task, TaskBase
from verifier_client.store import Record

if TYPE_CHECKING:
    from verifier_client.session import Design, _Run

__all__ = ["fresh_mse", "residual_decision", "run"]


def fresh_mse(run: _Run, task: Task, model: Datamodel, count: int) -> NDArray[np.float64]:
    """MSE of g per target on ``count`` fresh subsets trained here with fresh seeds."""
    seed = run.random("fresh", 32)
    masks = sample_masks(seed, task.n_train, run.opts.p, range(count), domain="fresh")
    values, _ = run.train(
        task, masks, training_seeds(seed, range(count), domain="fresh-seed"), "fresh_samples"
    )
    return np.asarray(model.mse(masks, values))


def residual_decision(
    run: _Run, task: Task, model: Datamodel, design: Design, values: NDArray[np.float64],
    spot: EquivReport | None,
) -> Decision:  # fmt: skip
    """The paper's test: MSE-hat (fresh samples) - B-hat_{>=2} (from E) <= the threshold."""
    res = estimate_residual(values, design, confidence=1 - run.opts.delta)  # type: ignore[arg-type]
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
    run: _Run, task: TaskBase, task_hash: str, content: str, model: Datamodel,
    record: Record | None,
) -> dict[str, Any]:  # fmt: skip
    """The non-interactive or the naive protocol, recorded like the interactive one."""
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
        record, challenge = run.start(
            task, task_hash, content, run.sizes(task, model, run.opts.max_prover_trainings)
        )
    else:
        challenge = Challenge.model_validate(
            SignedMessage.model_validate_json(record.challenge_json).payload
        )
    design = challenge.design(task.n_train)
    values, _ = run.train(task, design.masks(), design.seeds(), "local_training")
    run.store.update(record.id, prover_trainings=0)
    if o.estimator == "residual":
        return run.finish(record, residual_decision(run, task, model, design, values, None),
                          None, None)  # fmt: skip
    cert = certify(
        values, model.predict(design.masks()), design, delta=challenge.delta,
        aggregate=challenge.aggregate, spot_checks=None, tau=0.0,
        validity=challenge.validity, bound=task.bound,
        prediction_range=model.output_range(), p=challenge.p,
    )  # fmt: skip
    decision = decide(epsilon=challenge.epsilon, delta=challenge.delta, certificate=cert, spot=None)
    return run.finish(record, decision, None, None)


def _record(run: _Run, task_hash: str, content: str, protocol: str) -> Record:
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
