"""Certified mean err on digits-logreg for a ridge-4000 attribution at 12,000 Prover trainings.

Prints JSON per layout (shared-base: 3,000 bases; pairs: 2,000 pairs per level): the
certificate's parts on trusted values and with k = 32 ... 2,400 spot-checks (delta = 0.05, mean
over the 300 targets), the max aggregate on trusted values, and the seconds the attribution and
the training took. About 4 minutes on one core:

    OMP_NUM_THREADS=1 python benchmarks/certified_logreg.py
"""

from __future__ import annotations

import json
import time
from typing import Any

from protocol.certificate import certify
from protocol.evaluation import run_task
from protocol.sampling import ChallengeDesign, SharedBaseDesign
from protocol.tasks import load_task
from prover_service.attribution import attribute

SEED = b"\x09" * 32


def main() -> None:
    import torch

    torch.set_num_threads(1)
    task = load_task("digits-logreg")
    t0 = time.perf_counter()
    model = attribute(task, "ridge", 4000, 0.5, b"\x07" * 32).datamodel
    out: dict[str, Any] = {"attribution_seconds": round(time.perf_counter() - t0, 1)}
    designs = {
        "shared-base": SharedBaseDesign.saunshi(SEED, task.n_train, 0.5, 0.2, 3000),
        "pairs": ChallengeDesign.saunshi(SEED, task.n_train, 0.5, 0.2, 2000),
    }
    for layout, design in designs.items():
        t0 = time.perf_counter()
        values = run_task(task, design.masks(), design.seeds()).values
        row: dict[str, Any] = {
            "prover_trainings": len(design),
            "training_seconds": round(time.perf_counter() - t0, 1),
            "var_f_mean": float(values.var(0).mean()),
        }
        predictions = model.predict(design.masks())
        for k in (None, 32, 120, 600, 1200, 2400):
            cert = certify(values, predictions, design, delta=0.05, aggregate="mean",
                           spot_checks=k, tau=task.tau, bound=task.bound)  # fmt: skip
            row["trusted" if k is None else f"k={k}"] = {
                key: cert.as_dict()[key]
                for key in (
                    "certified_epsilon",
                    "point",
                    "statistical",
                    "corruption",
                    "tau_slack",
                    "bias",
                    "max_corrupted",
                )  # fmt: skip
            }
        worst = certify(values, predictions, design, delta=0.05, aggregate="max",
                        spot_checks=None, tau=task.tau, bound=task.bound)  # fmt: skip
        row["max_aggregate_trusted"] = worst.certified_epsilon
        out[layout] = row
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
