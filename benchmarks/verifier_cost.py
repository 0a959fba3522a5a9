"""What each route costs the Verifier, beside checking alone, at the sizes each route picks
(issue 19; ``docs/verifier-cost.md``).

For every task, aggregate and epsilon, in one run on this machine:

1. an honest ridge attribution g (``prover_service.attribution.attribute``, ``--budget``
   trainings, the Prover's; not counted below);
2. the Verifier's pilot (``--pilot`` bases) and every route's plan from it, exactly as
   ``verify`` makes them (:func:`verifier_client.routes.plan_routes` on a session without a
   Prover), and the route ``--protocol auto`` would choose;
3. ``--reps`` runs of the interactive route and of checking alone at their planned sizes, each on
   a fresh design: the honest Prover's values are trained here (they are what an honest
   Prover returns), the spot-checked bases drawn uniformly, the certificate
   :func:`protocol.decision.certify_challenge`'s call; checking alone is
   :func:`verifier_client.baselines.alone_looks` (two looks). The two routes share each rep's
   trainings (one design of the larger size; each route certifies its own prefix), which
   changes neither route's acceptance rate, only the benchmark's cost.

Printed JSON per cell: each route's Verifier training-equivalents beyond the pilot (planned,
and the mean actually spent: checking alone stops at its first look when it certifies), its
Verifier CPU seconds per run (its trainings here plus the certificate), the Prover's trainings,
the acceptance rate and the median certified epsilon; the chosen route and its cost over
checking alone's (``ratio``, the issue's "<= 1.0" figure). ``--table`` writes the markdown.

    python benchmarks/verifier_cost.py [--tasks planted,digits-logreg] [--reps 10] [--out F]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from typing import Any

import numpy as np

from protocol.certificate import certify, checked_groups, default_validity, group_subsets
from protocol.decision import decide
from protocol.sampling import SharedBaseDesign
from protocol.signing import generate_key
from protocol.tasks import load_task
from verifier_client.baselines import alone_looks
from verifier_client.routes import choose, plan_routes, spot_trainings
from verifier_client.run import Options, Run

# epsilon per task as shares of the pilot's Var f lower bound would move with the pilot; the
# cells are absolute, chosen so the honest ridge attribution (err in brackets) is certifiable.
TASKS: dict[str, dict[str, Any]] = {
    "planted": {"ref": "planted:n_train=20,n_targets=2", "budget": 400,
                "epsilon": (0.6, 0.3, 0.15)},  # err ~0.01
    "digits-logreg": {"ref": "digits-logreg:dtype=float32", "budget": 4000,
                      "epsilon": (0.4, 0.3, 0.2), "epsilon_max": (4.0, 3.0, 2.0)},  # err ~0.09
    "digits-mlp": {"ref": "digits-mlp", "budget": 4000, "epsilon": (1.0, 0.75, 0.5),
                   "epsilon_max": (8.0, 6.0, 4.0)},
}  # fmt: skip
# (max: the largest target's err, ~0.9 for digits-logreg's ridge, its pair-sums' SD ~13)
DELTA = 0.05
_ATTRIBUTIONS: dict[tuple[str, int], Any] = {}


def _session(ref: str, epsilon: float, aggregate: str, seed: int) -> Run:
    opts = Options(task=ref, epsilon=epsilon, delta=DELTA, aggregate=aggregate,
                   seed=seed.to_bytes(8, "little"), spot_fraction=0.1)  # fmt: skip
    return Run(None, None, generate_key(), opts, "", None)  # type: ignore[arg-type]


def cell(
    name: str, aggregate: str, epsilon: float, reps: int, seed: int, max_subsets: int
) -> dict[str, Any]:
    from prover_service.attribution import attribute

    spec = TASKS[name]
    task = load_task(spec["ref"])
    if (name, seed) not in _ATTRIBUTIONS:  # one per task and seed, shared by its cells
        made = attribute(task, "ridge", spec["budget"], seed=seed.to_bytes(32, "little"))
        _ATTRIBUTIONS[name, seed] = made.datamodel
    g = _ATTRIBUTIONS[name, seed]
    run = _session(spec["ref"], epsilon, aggregate, seed)
    t0 = time.process_time()
    costs = plan_routes(run, task, g, 2 * 10**6)
    pilot = run.pilot(task, g)
    plan_cpu = time.process_time() - t0
    chosen = choose(costs)
    plans = {c.route: c for c in costs}
    inter, alone = plans["interactive"], plans["noninteractive"]
    assert inter.sizes is not None and alone.sizes is not None  # noqa: S101
    n_int, n_alone = inter.sizes.pairs_per_level, alone.sizes.pairs_per_level
    looks = alone.sizes.looks or (n_alone,)
    per_base = 1 + len(pilot.design.rhos)
    eps_abs = pilot.epsilon
    out: dict[str, list[float]] = {
        k: []
        for k in ("int_u", "int_acc", "int_cpu", "alone_u", "alone_acc", "alone_cpu", "alone_spent")
    }
    if max(n_int, n_alone) * per_base > max_subsets:
        reps = 0  # plans only: the reps would train more than --max-subsets per rep
    rng = random.Random(seed)
    for rep in range(reps):
        n = max(n_int, n_alone)
        design = SharedBaseDesign.saunshi(os.urandom(32), task.n_train, 0.5, 0.2, n)
        t0 = time.process_time()
        values = task.evaluate(design.masks(), design.seeds())
        per_training = (time.process_time() - t0) / len(design)
        # interactive: the first n_int bases are E, k whole bases checked (they match: honest)
        d_int = SharedBaseDesign(design.seed, task.n_train, 0.5, design.rhos, n_int)
        e_int = values[: len(d_int)]
        k_groups = spot_trainings(inter.sizes, per_base) // per_base
        groups = np.array(sorted(rng.sample(range(n_int), k_groups)), dtype=np.int64)
        spots = group_subsets(d_int, groups)
        t0 = time.process_time()
        assert checked_groups(d_int, spots) is not None  # noqa: S101 - whole bases
        cert = certify(
            e_int, g.predict(d_int.masks()), d_int, delta=pilot_delta(run), aggregate=aggregate,
            tau=task.tau, validity=default_validity(0.5, n_int), bound=task.bound,
            prediction_range=g.output_range(), p=0.5, checked=groups,
        )  # fmt: skip
        verdict = decide(epsilon=eps_abs, delta=DELTA, certificate=cert, spot=None).verdict
        out["int_u"].append(cert.certified_epsilon)
        out["int_acc"].append(verdict == "accept")
        out["int_cpu"].append(time.process_time() - t0 + per_training * len(spots))
        # checking alone: its looks on the first n_alone bases
        d_alone = SharedBaseDesign(design.seed, task.n_train, 0.5, design.rhos, n_alone)
        t0 = time.process_time()
        decision, used = alone_looks(
            lambda a, b, v=values: v[a:b], tuple(looks), d_alone, g, epsilon=eps_abs,
            delta=pilot_delta(run), aggregate=aggregate,  # type: ignore[arg-type]
            validity=default_validity(0.5, n_alone), bound=task.bound, p=0.5,
        )  # fmt: skip
        assert decision.certificate is not None  # noqa: S101
        out["alone_u"].append(decision.certificate.certified_epsilon)
        out["alone_acc"].append(decision.verdict == "accept")
        out["alone_spent"].append(used * per_base)
        out["alone_cpu"].append(time.process_time() - t0 + per_training * used * per_base)
        print(json.dumps({"cell": [name, aggregate, epsilon], "rep": rep,  # noqa: T201
                          "interactive_u": out["int_u"][-1], "alone_u": out["alone_u"][-1]}),
              flush=True)  # fmt: skip
    int_cost = inter.verifier_trainings
    alone_cost = float(np.mean(out["alone_spent"])) if reps else alone.verifier_trainings
    chosen_cost = {"interactive": int_cost, "noninteractive": alone_cost}.get(
        chosen.route, chosen.verifier_trainings
    )
    return {
        "task": name, "ref": spec["ref"], "aggregate": aggregate, "epsilon": epsilon,
        "epsilon_absolute": eps_abs, "delta": DELTA, "reps": reps,
        "err_of_g": float(np.mean(task.err(g))) if hasattr(task, "err") else None,
        "pilot_trainings": len(pilot.values), "plan_cpu_s": round(plan_cpu, 2),
        "chosen": chosen.route,
        "interactive": {
            "pairs_per_level": n_int, "prover_trainings": inter.prover_trainings,
            "verifier_trainings": int_cost, "reaches": inter.reaches,
            "cpu_s": _mean(out["int_cpu"]), "acceptance": _mean(out["int_acc"]),
            "median_certified": _median(out["int_u"]),
        },
        "alone": {
            "pairs_per_level": n_alone, "looks": list(looks),
            "verifier_trainings_planned": alone.verifier_trainings,
            "verifier_trainings_spent": alone_cost, "reaches": alone.reaches,
            "cpu_s": _mean(out["alone_cpu"]), "acceptance": _mean(out["alone_acc"]),
            "median_certified": _median(out["alone_u"]),
        },
        "witness": plans["witness"].as_dict(),
        "ratio_chosen_over_alone": chosen_cost / alone_cost if alone_cost else math.nan,
        "ratio_interactive_over_alone": int_cost / alone_cost if alone_cost else math.nan,
    }  # fmt: skip


def _mean(xs: list[float]) -> float | None:
    return round(float(np.mean(xs)), 4) if xs else None


def _median(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


def pilot_delta(run: Run) -> float:
    """The certificate's delta (a relative epsilon would spend a quarter on Var f: not here)."""
    return run.opts.delta


def _f(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| task | aggregate | ε | chosen | interactive: V trainings (P trainings), acc., "
            "median U | alone: V trainings planned / spent, acc., median U | chosen / alone | "
            "reps |\n"
            "|---|---|---|---|---|---|---|---|\n")  # fmt: skip
    lines = []
    for r in rows:
        i, a = r["interactive"], r["alone"]
        lines.append(
            f"| {r['task']} | {r['aggregate']} | {r['epsilon']:g} | {r['chosen']} | "
            f"{i['verifier_trainings']:,.0f} ({i['prover_trainings']:,}), {_f(i['acceptance'])}, "
            f"{_f(i['median_certified'], '.3g')} | {a['verifier_trainings_planned']:,.0f} / "
            f"{a['verifier_trainings_spent']:,.0f}, {_f(a['acceptance'])}, "
            f"{_f(a['median_certified'], '.3g')} | {r['ratio_chosen_over_alone']:.2f} | "
            f"{r['reps']} |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="planted,digits-logreg,digits-mlp")
    ap.add_argument("--aggregates", default="mean,max")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-subsets", type=int, default=60_000, help="larger plans: plans only")
    ap.add_argument("--out", default=None, help="write the JSON rows here (after each cell)")
    ap.add_argument("--table", nargs="*", default=None, help="print the table of JSON files")
    args = ap.parse_args()
    if args.table is not None:
        rows = [r for path in args.table for r in json.load(open(path))["cells"]]  # noqa: SIM115
        print(table(rows))  # noqa: T201
        return
    rows: list[dict[str, Any]] = []
    for name in args.tasks.split(","):
        for aggregate in args.aggregates.split(","):
            key = "epsilon_max" if aggregate == "max" and "epsilon_max" in TASKS[name] else \
                "epsilon"  # fmt: skip
            for epsilon in TASKS[name][key]:
                rows.append(cell(name, aggregate, epsilon, args.reps, args.seed,
                                 args.max_subsets))  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)  # noqa: T201
                if args.out:
                    with open(args.out, "w") as fh:
                        json.dump({"benchmark": "verifier-cost", "cells": rows}, fh, indent=1)
    print(table(rows))  # noqa: T201


if __name__ == "__main__":
    main()
