"""Certified width per Prover training: the pair design against the shared-base (CRN) design.

Planted task (N = 20, Z = 4, B0 = 0.2, B1 = 1, B2 = 0.3, B3 = 0.1, seed noise 0.2), levels
(0, 0.2, 0.4), the same number of Prover trainings T for both designs (pairs: n = T / 6 per
level; shared-base: n = T / 4 bases). For g with exact err in {0, 0.3}: the median over
``--reps`` challenges of the certificate's width U - err (mean aggregate, delta = 0.05), with
trusted values and with k = T / 10 spot-checks, and the trainings ratio that width implies,
(width_pairs / width_shared)^2 (the statistical part scales as 1 / sqrt(T)).

    OMP_NUM_THREADS=1 python benchmarks/design_width.py --reps 30
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

from protocol.certificate import certify  # noqa: E402
from protocol.datamodel import Datamodel  # noqa: E402
from protocol.tasks import PlantedTask  # noqa: E402

RHOS = (0.0, 0.2, 0.4)


class _Design:
    def __init__(self, n: int, layout: str) -> None:
        self.rhos = RHOS
        self.pairs_per_level = n
        self.layout = layout


def _pairs(rng: np.random.Generator, n_train: int, n: int) -> Any:
    rows = []
    for rho in RHOS:
        x = rng.random((n, n_train)) < 0.5
        xp = np.where(rng.random((n, n_train)) < rho, x, rng.random((n, n_train)) < 0.5)
        pair = np.empty((2 * n, n_train), dtype=bool)
        pair[0::2], pair[1::2] = x, xp
        rows.append(pair)
    return _Design(n, "pairs"), np.concatenate(rows)


def _shared(rng: np.random.Generator, n_train: int, n: int) -> Any:
    x = rng.random((n, n_train)) < 0.5
    u = rng.random((n, n_train))
    fresh = rng.random((n, n_train)) < 0.5
    rows = [x] + [np.where(u < rho, x, fresh) for rho in RHOS]
    return _Design(n, "shared-base"), np.stack(rows, axis=1).reshape(-1, n_train)


def with_err(task: PlantedTask, err: float) -> Datamodel:
    opt = task.optimal_datamodel()
    lam = 1.0 - np.sqrt(err / task.spectrum().b1)
    w = opt.weights * lam[:, None]
    const = opt.intercept + 0.5 * opt.weights.sum(axis=1)
    return Datamodel(const - 0.5 * w.sum(axis=1), w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--trainings", type=int, default=12000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    task = PlantedTask(n_train=20, n_targets=4, b0=0.2, b1=1.0, b2=0.3, b3=0.1, noise=0.2, seed=1)
    rng = np.random.default_rng(args.seed)
    t = args.trainings
    rows = []
    for err in (0.0, 0.3):
        g = with_err(task, err)
        widths: dict[tuple[str, str], list[float]] = {}
        points: dict[str, list[float]] = {}
        for _ in range(args.reps):
            for name, make, n in (("pairs", _pairs, t // 6), ("shared-base", _shared, t // 4)):
                design, masks = make(rng, task.n_train, n)
                seeds = rng.integers(0, 2**63, size=len(masks), dtype=np.int64).astype(np.uint64)
                f, pred = task.evaluate(masks, seeds), g.predict(masks)
                for label, k in (("trusted", None), ("k=T/10", t // 10)):
                    c = certify(f, pred, design, delta=0.05, spot_checks=k)
                    widths.setdefault((name, label), []).append(c.certified_epsilon - err)
                    if k is None:
                        points.setdefault(name, []).append(c.point)
        for label in ("trusted", "k=T/10"):
            wp = float(np.median(widths[("pairs", label)]))
            ws = float(np.median(widths[("shared-base", label)]))
            rows.append({"err": err, "values": label, "trainings": t, "width_pairs": wp,
                         "width_shared_base": ws, "trainings_ratio": (wp / ws) ** 2,
                         "point_sd_pairs": float(np.std(points["pairs"])),
                         "point_sd_shared_base": float(np.std(points["shared-base"]))})  # fmt: skip
    print(json.dumps({"benchmark": "design_width", "reps": args.reps, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
