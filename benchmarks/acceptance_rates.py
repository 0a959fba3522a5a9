"""Acceptance rate against epsilon, and the protocol's cost curves. Prints JSON; ``--plot``.

Left panel: the point-estimate test the protocol used before the certificate (gap estimator,
threshold epsilon/2; kept as the "before" of docs/soundness.md) run ``--reps`` times per point
on the planted task
of the end-to-end tests (N = 20, Z = 2), for an honest ridge attribution and for the "pay half"
cheat g/2, at two challenge sizes. Right panel: trainings per side against epsilon from the
planner (``protocol.budget.plan``, Bernstein with a pilot), for the interactive Verifier, the
Prover, and the non-interactive Verifier.

    OMP_NUM_THREADS=2 python benchmarks/acceptance_rates.py --plot docs/acceptance-rates.png
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "2")

import numpy as np  # noqa: E402

from protocol.budget import Pilot, plan  # noqa: E402
from protocol.residual import estimate_gap  # noqa: E402
from protocol.sampling import ChallengeDesign  # noqa: E402
from protocol.tasks import PlantedTask  # noqa: E402
from prover_service.attribution import attribute  # noqa: E402

EPSILONS = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2]


def acceptance(reps: int) -> list[dict[str, Any]]:
    task = PlantedTask(n_train=20, n_targets=2)
    honest = attribute(task, "ridge", 400, seed=bytes(32)).datamodel
    models = {"honest": honest, "pay-half": honest.scaled(0.5)}
    rows = []
    for pairs in (500, 2000):
        stats: dict[str, list[float]] = {name: [] for name in models}
        for rep in range(reps):
            design = ChallengeDesign.saunshi(rep.to_bytes(8, "little") * 4, 20, 0.5, 0.2, pairs)
            masks = design.masks()
            f = task.evaluate(masks, design.seeds())
            for name, g in models.items():
                stats[name].append(float(estimate_gap(f, g.predict(masks), design).gap.max()))
        for name, values in stats.items():
            arr = np.array(values)
            for eps in EPSILONS:
                rows.append(
                    {
                        "attribution": name,
                        "pairs_per_level": pairs,
                        "epsilon": eps,
                        "true_err_max": float(task.err(models[name]).max()),
                        "acceptance": float(np.mean(arr <= eps / 2)),
                        "reps": reps,
                    }
                )
    return rows


def costs() -> list[dict[str, Any]]:
    task = PlantedTask(n_train=20, n_targets=2)
    design = ChallengeDesign.saunshi(bytes(32), 20, 0.5, 0.2, 2000)
    pilot = Pilot.from_values(task.evaluate(design.masks(), design.seeds()), design)
    rows = []
    for eps in (0.1, 0.2, 0.5, 1.0, 2.0):
        for est in ("gap", "residual"):
            pl = plan(eps, 0.05, task.bound, task.n_targets, estimator=est, pilot=pilot)  # type: ignore[arg-type]
            rows.append({"epsilon": eps, "estimator": est, **pl.verifier_trainings})
    return rows


def draw(acc: list[dict[str, Any]], cost: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, colour in (("honest", "tab:green"), ("pay-half", "tab:red")):
        for pairs, style in ((500, "--"), (2000, "-")):
            pts = [
                (r["epsilon"], r["acceptance"])
                for r in acc
                if r["attribution"] == name and r["pairs_per_level"] == pairs
            ]
            xs, ys = zip(*pts, strict=True)
            ax1.plot(
                xs, ys, style, marker="o", color=colour, label=f"{name}, {pairs:,} pairs/level"
            )
        err = next(r["true_err_max"] for r in acc if r["attribution"] == name)
        ax1.axvline(err, color=colour, alpha=0.3)
    ax1.set_xscale("log")
    ax1.set_xlabel("epsilon (vertical lines: exact err of each attribution)")
    ax1.set_ylabel("acceptance rate")
    ax1.set_title("interactive protocol, planted N = 20, gap estimator", fontsize=10)
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    for key, label in (
        ("interactive", "Verifier, interactive"),
        ("noninteractive", "Prover (= non-interactive Verifier)"),
    ):
        for est, style in (("gap", "-"), ("residual", "--")):
            pts = [(r["epsilon"], r[key]) for r in cost if r["estimator"] == est]
            xs, ys = zip(*pts, strict=True)
            ax2.plot(xs, ys, style, marker="o", label=f"{label} ({est})")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("epsilon")
    ax2.set_ylabel("trainings (planner, Bernstein with pilot)")
    ax2.set_title("cost of the guarantees, delta = 0.05", fontsize=10)
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    acc, cost = acceptance(args.reps), costs()
    if args.plot:
        draw(acc, cost, args.plot)
    print(json.dumps({"benchmark": "acceptance_rates", "acceptance": acc, "costs": cost}, indent=1))


if __name__ == "__main__":
    main()
