"""Attribution quality against trainings spent. Prints JSON; ``--plot FILE.png`` draws it.

* planted task (N = 100, B1 = 1, B2 = 0.3, seed noise 0.2, Z = 3): exact err(g) per method;
* digits-logreg: LDS over 512 fresh subsets, and err(g) estimated by the core's gap estimator
  (``protocol.residual.estimate_gap``) on a challenge design fixed before (its own seed), with
  its 95 % interval; from it, the smallest epsilon an honest Prover with that attribution passes.

    OMP_NUM_THREADS=2 python benchmarks/attribution_quality.py --plot docs/attribution-quality.png
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from protocol.evaluation import evaluate_design  # noqa: E402
from protocol.residual import estimate_gap  # noqa: E402
from protocol.sampling import ChallengeDesign, sample_masks, training_seeds  # noqa: E402
from protocol.tasks import PlantedTask  # noqa: E402
from protocol.tasks.digits import DigitsLogReg  # noqa: E402
from prover_service.attribution import attribute  # noqa: E402

PLANTED_BUDGETS = [250, 500, 1000, 2000, 4000, 8000]
DIGITS_BUDGETS = [250, 500, 1000, 2000, 4000]


def planted_rows() -> list[dict[str, Any]]:
    task = PlantedTask(n_train=100, n_targets=3, b0=0.2, b1=1.0, b2=0.3, noise=0.2, seed=1)
    rows = []
    for method in ("influence", "ridge", "lasso", "loo"):
        for budget in PLANTED_BUDGETS:
            if method == "loo" and budget != PLANTED_BUDGETS[0]:
                continue
            t0 = time.perf_counter()
            res = attribute(task, method, max(budget, 101) if method == "loo" else budget,
                            seed=bytes(32))  # fmt: skip
            rows.append({"task": "planted-N100", "method": method, "trainings": res.trainings,
                         "err_exact": float(task.err(res.datamodel).mean()),
                         "seconds": time.perf_counter() - t0})  # fmt: skip
    return rows


def digits_rows(gap_pairs: int) -> list[dict[str, Any]]:
    task = DigitsLogReg()
    key = bytes([77]) * 32
    fresh = sample_masks(key, task.n_train, 0.5, range(512), domain="lds")
    f_fresh = task.evaluate(fresh, training_seeds(key, range(512), domain="lds-seed"))
    design = ChallengeDesign.saunshi(bytes([78]) * 32, task.n_train, 0.5, 0.2, gap_pairs)
    masks = design.masks()
    f_design = evaluate_design(task, design)
    rows = []
    plan = [(m, b) for m in ("influence", "ridge", "daunce", "daunce-blackbox")
            for b in DIGITS_BUDGETS] + [("loo", task.n_train + 1)]  # fmt: skip
    for method, budget in plan:
        t0 = time.perf_counter()
        res = attribute(task, method, budget, seed=bytes(32))
        seconds = time.perf_counter() - t0
        gap = estimate_gap(f_design, res.datamodel.predict(masks), design)
        rows.append({
            "task": "digits-logreg", "method": method, "trainings": res.trainings,
            "lds": float(np.nanmean(res.datamodel.lds(fresh, f_fresh))),
            "mse_fresh": float(res.datamodel.mse(fresh, f_fresh).mean()),
            "err_estimate": float(gap.gap.mean()), "err_ci_high": float(gap.ci_high.mean()),
            "epsilon_honest_pass": float(2 * gap.ci_high.mean()), "seconds": seconds,
        })  # fmt: skip
    return rows


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, task, key, label in (
        (axes[0], "planted-N100", "err_exact", "exact err(g), planted N = 100"),
        (axes[1], "digits-logreg", "lds", "LDS on 512 fresh subsets, digits-logreg"),
        (axes[2], "digits-logreg", "err_estimate", "estimated err(g) (gap estimator), digits"),
    ):
        for method in dict.fromkeys(r["method"] for r in rows if r["task"] == task):
            pts = [(r["trainings"], r[key]) for r in rows if r["task"] == task
                   and r["method"] == method]  # fmt: skip
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, "o-" if len(xs) > 1 else "s", label=method)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if key != "lds":
            ax.set_yscale("log")
        ax.set_xlabel("trainings spent")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--gap-pairs", type=int, default=2000)
    ap.add_argument("--from-json", default=None, help="re-plot a previous run's output")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.from_json:
        with open(args.from_json) as fh:
            rows = json.load(fh)["rows"]
    else:
        rows = planted_rows() + digits_rows(args.gap_pairs)
    if args.plot:
        plot(rows, args.plot)
    print(json.dumps({"benchmark": "attribution_quality", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
