"""What holding the checked bases to the clt condition costs at fixed sizes (issue 18).

At p = 1/2 on the planted task (2,000 bases) and digits-logreg float32 (517 bases, the sizes
the planner used to give the demo), an honest ridge attribution is certified with k checked
bases, k from 25 to 200, five spot-check draws each: the median certified bound per k, as JSON.
Run it on this tree and on one before the fix (commit d67b7cf, e.g. ``git worktree add
/tmp/old d67b7cf`` and ``PYTHONPATH=/tmp/old python benchmarks/checked_bases_cost.py``) for
the before/after at the same sizes.

    python benchmarks/checked_bases_cost.py [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import random

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from protocol.certificate import certify, default_validity  # noqa: E402
from protocol.sampling import SharedBaseDesign  # noqa: E402
from protocol.tasks import load_task  # noqa: E402
from prover_service.attribution import attribute  # noqa: E402

CASES = (
    ("planted:n_train=20,n_targets=2", 400, 2000, (25, 50, 100, 200)),
    ("digits-logreg:dtype=float32", 4000, 517, (29, 52, 104, 200)),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    for ref, budget, n, ks in CASES:
        task = load_task(ref)
        g = attribute(task, "ridge", budget, seed=(1).to_bytes(32, "little")).datamodel
        design = SharedBaseDesign.saunshi(bytes([7]) * 32, task.n_train, 0.5, 0.2, n)
        values = task.evaluate(design.masks(), design.seeds())
        predictions = g.predict(design.masks())
        for k in ks:
            rng = random.Random(k)
            bounds = []
            for _ in range(5):
                groups = np.array(sorted(rng.sample(range(n), k)), dtype=np.int64)
                cert = certify(
                    values, predictions, design, delta=0.05, aggregate="mean", tau=task.tau,
                    validity=default_validity(0.5, n), bound=task.bound,
                    prediction_range=g.output_range(), p=0.5, checked=groups,
                )  # fmt: skip
                bounds.append(cert.certified_epsilon)
            median = float(np.median(bounds))
            rows.append({"task": ref, "bases": n, "checked_bases": k,
                         "median_certified": median, "certified": bounds})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)  # noqa: T201
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"benchmark": "checked-bases-cost", "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
