"""What the witness route costs the Verifier, beside checking alone (docs/certified-optimality.md).

digits-logreg:certifiable=1, mean aggregate, delta = 0.05, shared-base layout (rho0 = 0.2),
epsilon in {0.2, 0.1, 0.05}. One honest ridge attribution g (fitted by the Prover on
``--attribution-samples`` subsets trained by the task's L-BFGS, unpolished: any method will do).
One shared-base design of ``--bases`` bases; a design of n bases is its first n bases. In one run:

* the Prover solves every subset (L-BFGS, then the float64 polish to a quarter of the limit the
  challenge at epsilon = 0.05 states), its CPU seconds split into the two;
* the Verifier checks every witness (:func:`protocol.witness.check_witnesses`), CPU seconds;
* one training of the Verifier checking alone (the task's ``evaluate``: L-BFGS and polish to
  the rounding floor, since f is defined at the optimum) is timed on ``--timing-sample``
  subsets, and so is the L-BFGS alone (the plain task's training, a lower bound on any);
* for each epsilon, the smallest n (from 200 bases in steps of sqrt 2) whose certificate
  U <= epsilon, for each route: alone certifies its own values (spot_checks=None, tau = 0),
  the witness route the Verifier's f(theta) with the per-value tau (m* = 0). Both use
  validity ``clt`` (``--validity``; ``betting``, certify's default, is far wider on this
  task: U = 54 at 512 bases).

Printed JSON: per epsilon, both routes' n, |E|, certified epsilon, Verifier CPU seconds and
training-equivalents (CPU seconds / one training's), the ratio, the Prover's polishing cost and
the bytes per subset on the wire (the witness's .npy share and the values').

    python benchmarks/witness_cost.py [--bases 512] [--attribution-samples 2000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from protocol.certificate import certify
from protocol.datamodel import Datamodel
from protocol.messages import array_to_npy
from protocol.sampling import SharedBaseDesign, sample_masks
from protocol.tasks import load_task
from protocol.witness import check_witnesses, witness_limit

EPSILONS = (0.2, 0.1, 0.05)
DELTA = 0.05
TASK = "digits-logreg:certifiable=1"


def cpu(fn, *args):  # type: ignore[no-untyped-def]
    """(result, CPU seconds of this process)."""
    t0 = time.process_time()
    out = fn(*args)
    return out, time.process_time() - t0


def ridge(masks: np.ndarray, values: np.ndarray, lam: float = 1.0) -> Datamodel:
    x = np.hstack([np.ones((len(masks), 1)), masks.astype(np.float64)])
    reg = lam * np.eye(x.shape[1])
    reg[0, 0] = 0.0
    coef = np.linalg.solve(x.T @ x + reg, x.T @ values)  # (N + 1, Z)
    return Datamodel(coef[0], coef[1:].T.copy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bases", type=int, default=1024)
    ap.add_argument("--attribution-samples", type=int, default=8000)
    ap.add_argument("--ridge", type=float, default=30.0)
    ap.add_argument("--validity", default="clt", help="certify's validity (clt needs >= 200 bases)")
    ap.add_argument("--timing-sample", type=int, default=128)
    args = ap.parse_args()
    task = load_task(TASK)
    problem = task.certifiable()
    assert problem is not None and problem.warm_solver is not None
    n_train = task.n_train

    # The Prover's attribution: ridge on unpolished L-BFGS values.
    att = sample_masks(
        b"attribution".ljust(32, b"\0"), n_train, 0.5, range(args.attribution_samples)
    )
    theta_att = np.concatenate(
        [problem.warm_solver(att[a : a + 256]) for a in range(0, len(att), 256)]
    )
    model = ridge(att, problem.outputs(theta_att), args.ridge)

    design = SharedBaseDesign.saunshi(
        b"witness-cost".ljust(32, b"\0"), n_train, 0.5, 0.2, args.bases
    )
    masks = design.masks()
    limit = witness_limit(min(EPSILONS), task.bound, design.rhos)
    warm, t_lbfgs = cpu(
        lambda: np.concatenate(
            [problem.warm_solver(masks[a : a + 256]) for a in range(0, len(masks), 256)]
        )
    )
    polished, t_polish = cpu(lambda: np.concatenate(
        [problem.polish(warm[a : a + 256], masks[a : a + 256],
                        problem.gradient_tolerance(limit / 4))[0]
         for a in range(0, len(masks), 256)]))  # fmt: skip
    reported = problem.outputs(polished)
    check, t_check = cpu(check_witnesses, problem, polished, masks, reported, limit)
    assert check.rejected == ()
    wbytes = len(array_to_npy("witness", polished)[1])
    vbytes = len(array_to_npy("values", reported)[1])

    sample = masks[: args.timing_sample]
    seeds = np.zeros(len(sample), dtype=np.uint64)
    _, t_train = cpu(task.evaluate, sample, seeds)
    with torch.no_grad():
        _, t_plain = cpu(problem.warm_solver, sample)
    per_train = t_train / len(sample)
    per_plain = t_plain / len(sample)
    per_check = t_check / len(masks)

    alone_values = reported  # f at the optimum (the Verifier's own training gives the same)
    per_base = len(design) // args.bases
    grid = sorted({min(args.bases, int(round(200 * 2 ** (i / 2)))) for i in range(12)})
    curve: dict[str, dict[int, object]] = {"alone": {}, "witness": {}}
    for n in grid:
        sub = SharedBaseDesign.saunshi(design.seed, n_train, 0.5, 0.2, n)
        rows_e = slice(0, n * (len(design) // args.bases))
        preds = model.predict(masks[rows_e])
        for route in ("alone", "witness"):
            vals = alone_values[rows_e] if route == "alone" else check.values[rows_e]
            tau = 0.0 if route == "alone" else check.tau[rows_e]
            curve[route][n] = certify(vals, preds, sub, delta=DELTA, aggregate="mean",
                                      spot_checks=None, tau=tau, bound=task.bound,
                                      validity=args.validity)  # fmt: skip
    rows = []
    for eps in EPSILONS:
        row: dict[str, object] = {"epsilon": eps}
        for route in ("alone", "witness"):
            found = next(((n, c) for n, c in curve[route].items()
                          if c.certified_epsilon <= eps), None)  # type: ignore[attr-defined]  # fmt: skip
            if found is None:
                row[route] = {"certified": False, "largest_bases": args.bases}
                continue
            n, cert = found
            subsets = n * per_base
            secs = subsets * (per_train if route == "alone" else per_check)
            row[route] = {
                "bases": n, "subsets": subsets, "certified_epsilon": cert.certified_epsilon,
                "tau_slack": cert.tau_slack, "verifier_cpu_s": secs,
                "training_equivalents": secs / per_train,
                "training_equivalents_vs_plain_lbfgs": secs / per_plain,
            }  # fmt: skip
        a, w = row.get("alone"), row.get("witness")
        if (
            isinstance(a, dict)
            and isinstance(w, dict)
            and "verifier_cpu_s" in a
            and "verifier_cpu_s" in w
        ):
            row["ratio_witness_to_alone"] = w["verifier_cpu_s"] / a["verifier_cpu_s"]
            if w["bases"] == a["bases"]:
                row["ratio_vs_plain_lbfgs_training"] = per_check / per_plain
        rows.append(row)
    print(json.dumps({
        "task": TASK, "delta": DELTA, "aggregate": "mean", "layout": "shared-base",
        "validity": args.validity, "attribution": f"ridge({args.ridge}) on "
        f"{args.attribution_samples} unpolished L-BFGS trainings",
        "certified_epsilon_by_bases": {
            str(n): {r: curve[r][n].certified_epsilon for r in curve} for n in grid  # type: ignore[attr-defined]
        },
        "subsets_solved": len(masks), "witness_limit_at_0.05": limit,
        "max_per_value_tau": float(check.tau.max()),
        "cpu_s_per_subset": {"training_alone (L-BFGS + polish to the floor)": per_train,
                             "plain_lbfgs (18 iterations, no polish)": per_plain,
                             "witness_check": per_check,
                             "prover_lbfgs": t_lbfgs / len(masks),
                             "prover_polish_to_limit": t_polish / len(masks)},
        "prover_polish_extra": t_polish / t_lbfgs,
        "bytes_per_subset": {"witness": wbytes / len(masks), "values": vbytes / len(masks)},
        "rows": rows,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
