"""Estimator error against budget on planted tasks (exact truth). Prints JSON.

For each (task, rho0, pairs per level) it draws ``--reps`` independent challenges through the
wire derivation (ChallengeDesign, ChaCha20 streams), evaluates the planted task, and reports
bias, standard deviation and RMSE against the exact value for:

* ``residual``      the paper's estimator (NNLS) of B_{>=2};
* ``residual_ls``   the same without the non-negativity constraint;
* ``gap_opt``       the gap estimator for the optimal datamodel Phi (truth 0);
* ``gap_half``      the gap estimator for Phi / 2 (the "pay half" cheat; truth known exactly);
* ``gap_half_ls``   the same without the non-negativity constraint.

    OMP_NUM_THREADS=1 python benchmarks/estimator_error.py --reps 20
"""

from __future__ import annotations

import argparse
import json
import os
import time

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

from protocol.residual import estimate_gap, estimate_residual  # noqa: E402
from protocol.sampling import ChallengeDesign  # noqa: E402
from protocol.tasks import PlantedTask  # noqa: E402

TASKS = {
    # The planning setting: N = 300, B1 = 1, B2 = 0.3, seed noise 0.2, p = 1/2.
    "planted-N300": dict(n_train=300, n_targets=1, b0=0.0, b1=1.0, b2=0.3, noise=0.2),
    # With degree-3 weight, which the quadratic cannot see.
    "planted-N300-b3": dict(n_train=300, n_targets=1, b0=0.0, b1=1.0, b2=0.3, b3=0.1, noise=0.2),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--pairs", type=int, nargs="+", default=[1000, 3000, 10000])
    ap.add_argument("--rho0", type=float, nargs="+", default=[0.1, 0.2])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    args = ap.parse_args()
    rows = []
    for name in args.tasks:
        task = PlantedTask(**TASKS[name])  # type: ignore[arg-type]
        truth = {
            "residual": float(task.spectrum().residual[0]),
            "gap_opt": 0.0,
            "gap_half": float(task.err(task.optimal_datamodel().scaled(0.5))[0]),
        }
        truth["residual_ls"] = truth["residual"]
        truth["gap_half_ls"] = truth["gap_half"]
        opt, half = task.optimal_datamodel(), task.optimal_datamodel().scaled(0.5)
        for rho0 in args.rho0:
            for n in args.pairs:
                est: dict[str, list[float]] = {k: [] for k in truth}
                started = time.perf_counter()
                for rep in range(args.reps):
                    seed = rep.to_bytes(4, "little") + bytes(28)
                    design = ChallengeDesign.saunshi(seed, task.n_train, 0.5, rho0, n)
                    masks, seeds = design.masks(), design.seeds()
                    f = task.evaluate(masks, seeds)
                    est["residual"].append(float(estimate_residual(f, design).residual[0]))
                    est["residual_ls"].append(
                        float(estimate_residual(f, design, nonnegative=False).residual[0])
                    )
                    est["gap_opt"].append(float(estimate_gap(f, opt.predict(masks), design).gap[0]))
                    g_half = half.predict(masks)
                    est["gap_half"].append(float(estimate_gap(f, g_half, design).gap[0]))
                    est["gap_half_ls"].append(
                        float(estimate_gap(f, g_half, design, nonnegative=False).gap[0])
                    )
                for key, values in est.items():
                    v = np.array(values)
                    rows.append({
                        "task": name, "estimator": key, "rho0": rho0, "pairs_per_level": n,
                        "calls": 6 * n, "truth": truth[key], "mean": float(v.mean()),
                        "bias": float(v.mean() - truth[key]), "sd": float(v.std(ddof=1)),
                        "rmse": float(np.sqrt(np.mean((v - truth[key]) ** 2))), "reps": args.reps,
                        "seconds_per_rep": (time.perf_counter() - started) / args.reps,
                    })  # fmt: skip
    print(json.dumps({"benchmark": "estimator_error", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
