"""The outside tools as Prover methods (TRAK through traker, dattri's influence functions) beside
ridge and Daunce, per training spent, on digits-logreg and digits-mlp. Prints JSON.

Per task: LDS (mean Spearman over targets) on fresh half-subsets, and the certified err: the
protocol's upper confidence bound on err(g) (:func:`protocol.certificate.certify`, delta = 0.05,
mean over the 300 targets, values trusted, tau and b of the task) from a shared-base challenge
design drawn after the attributions, beside its point estimate. Every method gets the same
seed; TRAK and dattri-if count their checkpoints and calibration trainings in ``trainings``.
About 9 minutes on one core (6 GB of memory at most, dattri-if on digits-mlp):

    OMP_NUM_THREADS=1 python benchmarks/outside_tools.py > docs/outside-tools.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from protocol.certificate import certify  # noqa: E402
from protocol.evaluation import run_task  # noqa: E402
from protocol.sampling import SharedBaseDesign, sample_masks, training_seeds  # noqa: E402
from protocol.tasks import load_task  # noqa: E402
from prover_service.attribution import attribute  # noqa: E402

# task -> (fresh LDS subsets, challenge bases (4 trainings each), [(method, budget), ...]);
# a method may carry settings (prover_service.attribution: "trak:checkpoints=128").
PLAN: dict[str, tuple[int, int, list[tuple[str, int]]]] = {
    "digits-logreg": (256, 750, [
        ("ridge", 96), ("ridge", 250), ("ridge", 1000),
        ("daunce", 96), ("daunce", 250),
        ("trak", 96), ("trak", 250), ("trak:checkpoints=128", 250),
        ("dattri-if", 96), ("dattri-if", 250), ("dattri-if:checkpoints=32", 250),
    ]),
    "digits-mlp": (128, 200, [
        ("ridge", 96), ("ridge", 250), ("ridge", 1000),
        ("daunce", 96), ("daunce", 250),
        ("trak", 96), ("trak", 250),
        ("dattri-if", 96),
    ]),
}  # fmt: skip


def rows_for(name: str, quick: bool) -> list[dict[str, Any]]:
    """Every planned (method, budget) on one task: LDS, certified err, seconds, details."""
    task = load_task(name)
    n_fresh, bases, plan = PLAN[name]
    if quick:
        n_fresh, bases, plan = 32, 16, plan[:1]
    key = bytes([77]) * 32
    fresh = sample_masks(key, task.n_train, 0.5, range(n_fresh), domain="lds")
    f_fresh = run_task(task, fresh, training_seeds(key, range(n_fresh), domain="lds-seed")).values
    design = SharedBaseDesign.saunshi(bytes([78]) * 32, task.n_train, 0.5, 0.2, bases)
    masks = design.masks()
    t0 = time.perf_counter()
    f_design = run_task(task, masks, design.seeds()).values
    design_seconds = time.perf_counter() - t0
    rows = []
    for ref, budget in plan:
        t0 = time.perf_counter()
        res = attribute(task, ref, budget, seed=bytes(32))
        seconds = time.perf_counter() - t0
        cert = certify(f_design, res.datamodel.predict(masks), design, delta=0.05,
                       aggregate="mean", tau=task.tau, bound=task.bound)  # fmt: skip
        details = {k: v for k, v in res.details.items() if k != "lambda"}  # ridge's, per target
        rows.append({
            "task": name, "method": ref, "trainings": res.trainings,
            "lds": float(np.nanmean(res.datamodel.lds(fresh, f_fresh))),
            "certified_err": float(cert.certified_epsilon), "err_point": float(cert.point),
            "seconds": round(seconds, 1), "details": details,
            "fresh_subsets": n_fresh, "challenge_trainings": len(design),
            "challenge_seconds": round(design_seconds, 1),
        })  # fmt: skip
        print(json.dumps(rows[-1], default=str), flush=True, file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", default="digits-logreg,digits-mlp")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 32 subsets, one method")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    t0 = time.perf_counter()
    rows = [row for name in args.tasks.split(",") for row in rows_for(name, args.quick)]
    out = {"benchmark": "outside_tools", "threads": int(os.environ["OMP_NUM_THREADS"]),
           "seconds": round(time.perf_counter() - t0, 1), "rows": rows}  # fmt: skip
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
