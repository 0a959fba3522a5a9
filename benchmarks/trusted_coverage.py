"""Coverage of the bound on k checked bases (issue 18, last item): ``clt`` at k, or betting.

With whole bases checked, ``certify`` takes U = min(trusted, robust), the trusted bound read
from the k checked bases alone (the Verifier's own values). ``clt`` is held to
n min(p, 1 - p)^2 >= 50 (:func:`protocol.certificate.clt_refusal`) at n, the size of E. Before
this change the trusted bound ran ``clt`` at k too, which at p = 1/2 is below that condition
for every k < 200. This measures, honestly (no corruption), P(bound < exact err) for:

- ``clt at k``: the old rule, the normal approximation on k bases (the trusted bound's share
  of delta, as ``certify`` spends it);
- ``betting at k``: what ``certify`` now runs when :func:`clt_refusal` refuses k;
- ``combined``: U = min(trusted, robust) as ``certify`` computes it now.

Task: the rare-event datamodel of the sweep (all of g's error on one training example, err = c
epsilon exactly, epsilon = Var f / 4) on the planted task (N = 20, Z = 4, B1 = 2), shared-base
layout, p and seed noise as given, n bases of which k are checked uniformly.

    OMP_NUM_THREADS=1 python benchmarks/trusted_coverage.py --reps 400 --out F.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

from benchmarks.soundness import simulate_shared  # noqa: E402
from protocol.adversaries import concentrated_error  # noqa: E402
from protocol.certificate import _bound_err, _Pieces, certify  # noqa: E402
from protocol.tasks import PlantedTask  # noqa: E402


def cell(
    p: float, noise: float, n: int, k: int, c: float, reps: int, delta: float, seed: int
) -> dict[str, Any]:
    """One (p, noise, n, k, c) cell: miss rates of the three bounds over ``reps`` challenges."""
    task = PlantedTask(n_train=20, n_targets=4, b0=0.2, b1=2.0, b2=0.3, b3=0.1, noise=noise,
                       seed=1)  # fmt: skip
    epsilon = 0.25 * float(task.spectrum(p).variance.mean())
    g = concentrated_error(task.optimal_datamodel(p), 0, c * epsilon, p)
    truth = float(task.err(g, p).mean())
    rng = np.random.default_rng(seed)
    share = (delta - delta / 2) / 2  # certify's split: delta_spot = delta / 2, half to trusted
    miss = {"clt_at_k": 0, "betting_at_k": 0, "combined": 0}
    widths: dict[str, list[float]] = {key: [] for key in miss}
    t0 = time.time()
    for _ in range(reps):
        design, masks, seeds = simulate_shared(rng, task.n_train, n, p)
        f = task.evaluate(masks, seeds)
        preds = g.predict(masks)
        groups = np.sort(rng.choice(n, k, replace=False))
        cert = certify(f, preds, design, delta=delta, checked=groups, bound=task.bound,
                       validity="clt", prediction_range=g.output_range(), detail=False)  # fmt: skip
        pieces = _Pieces.build(f, preds, design, np.zeros_like(f), task.bound, g.output_range())
        got = {"combined": cert.certified_epsilon}
        for key, validity in (("clt_at_k", "clt"), ("betting_at_k", "betting")):
            got[key] = _bound_err(pieces, groups, 0, share / 2, None, aggregate="mean",
                                  validity=validity, detail=False).u  # type: ignore[arg-type]  # fmt: skip
        for key, u in got.items():
            miss[key] += u < truth
            widths[key].append(u)
    return {
        "p": p, "noise": noise, "pairs": n, "checked_bases": k, "err_over_eps": c,
        "exact_err": truth, "reps": reps, "delta": delta,
        "trusted_delta": share / 2,
        "miss": miss,
        "miss_rate": {key: v / reps for key, v in miss.items()},
        "median_bound": {key: float(np.median(v)) for key, v in widths.items()},
        "seconds": time.time() - t0,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--k", default="25,50,100,150")
    ap.add_argument("--noise", default="0.02,0.2")
    ap.add_argument("--c", default="0.5,1.0")
    ap.add_argument("--p", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    i = 0
    for noise in (float(x) for x in args.noise.split(",")):
        for k in (int(x) for x in args.k.split(",")):
            n = max(10 * k, math.ceil(50 / min(args.p, 1 - args.p) ** 2))  # clt allowed at n
            for c in (float(x) for x in args.c.split(",")):
                row = cell(args.p, noise, n, k, c, args.reps, args.delta, args.seed + i)
                i += 1
                print(json.dumps(row), flush=True)
                rows.append(row)
                if args.out:
                    with open(args.out, "w") as fh:
                        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
