"""Scale-out: trainings per second on the local executor and on Ray (1 and 2 workers), Ray's
overhead per chunk, the chunk size at which it falls under 5 %, and a projection on paper for a
10^5-training CIFAR-10 challenge on 8 GPUs. Prints JSON.

Each figure is the best of ``--repeats`` timed runs after a warm-up (Ray's workers started and
the task shipped to them), over the same masks and seeds, in chunks as the Prover sends them;
the outputs of every executor are checked byte for byte against the local run.

    OMP_NUM_THREADS=1 python benchmarks/scale_out.py            # a local Ray with 2 CPUs
    python benchmarks/scale_out.py --ray-address HOST:6379      # an existing cluster

*Overhead per chunk* is the time a chunk spends outside ``run_task`` with one chunk in flight
(submit, schedule, ship masks and results, persist nothing): (Ray - local) / chunks on tiny
chunks. A chunk of ``rows`` trainings of ``t`` seconds each pays it once, so the overhead is
under 5 % from ``rows >= overhead / (0.05 t)``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from typing import Any

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

from protocol.tasks import load_task  # noqa: E402
from prover_service.executor import Chunk, Executor, LocalExecutor, make_executor  # noqa: E402
from prover_service.training import draw_training_set  # noqa: E402

# airbench94 (Jordan 2024): 94 % on CIFAR-10 in 3.3 s of one A100 (PROTOCOL's cifar10-resnet)
CIFAR_SECONDS_PER_TRAINING = 3.3


def _chunks(masks: Any, seeds: Any, rows: int) -> list[Chunk]:
    return [
        Chunk(a, min(a + rows, len(masks)), masks[a : a + rows], seeds[a : a + rows])
        for a in range(0, len(masks), rows)
    ]


def _timed(executor: Executor, task: Any, chunks: list[Chunk], repeats: int) -> tuple[float, str]:
    """Best wall time of ``repeats`` runs, and the SHA-256 of the outputs in row order."""
    best, digest = float("inf"), ""
    for _ in range(repeats):
        parts: dict[int, bytes] = {}
        started = time.perf_counter()
        executor.map_chunks(task, chunks, lambda c, out, into=parts: into.__setitem__(
            c.start, out.values.tobytes() + out.probes.tobytes()))  # fmt: skip
        best = min(best, time.perf_counter() - started)
        digest = hashlib.sha256(b"".join(parts[c.start] for c in chunks)).hexdigest()
    return best, digest


def measure(
    ref: str, count: int, chunk_rows: int, repeats: int, ray_execs: dict[str, Executor]
) -> dict[str, Any]:
    """Trainings per second of ``count`` subsets of ``ref`` in chunks of ``chunk_rows``."""
    task = load_task(ref)
    masks, seeds = draw_training_set(task, count, bytes(32), 0.5)
    chunks = _chunks(masks, seeds, chunk_rows)
    out: dict[str, Any] = {"task": ref, "trainings": count, "chunk_rows": chunk_rows,
                           "chunks": len(chunks)}  # fmt: skip
    local_s, want = _timed(LocalExecutor(), task, chunks, repeats)
    out["local"] = {"seconds": round(local_s, 3), "trainings_per_s": round(count / local_s, 1)}
    for name, ex in ray_execs.items():
        ex.map_chunks(task, chunks[:2], lambda c, o: None)  # warm-up: workers and the task
        s, got = _timed(ex, task, chunks, repeats)
        if got != want:
            raise SystemExit(f"{name} gave other bytes than the local executor on {ref}")
        out[name] = {"seconds": round(s, 3), "trainings_per_s": round(count / s, 1),
                     "speed_up": round(local_s / s, 2)}  # fmt: skip
    out["seconds_per_training"] = local_s / count
    return out


def overhead(ex: Executor, chunks: int, repeats: int) -> dict[str, float]:
    """Ray's seconds per chunk beyond the training itself (module doc), on 8-row planted chunks."""
    task = load_task("planted:n_train=20,n_targets=2")
    masks, seeds = draw_training_set(task, 8 * chunks, bytes(32), 0.5)
    parts = _chunks(masks, seeds, 8)
    ex.map_chunks(task, parts[:2], lambda c, o: None)
    local_s, _ = _timed(LocalExecutor(), task, parts, repeats)
    ray_s, _ = _timed(ex, task, parts, repeats)
    return {"chunks": chunks, "seconds_per_chunk": (ray_s - local_s) / chunks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ray-address", default=None, help="an existing cluster (default: local)")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    ap.add_argument("--planted", type=int, default=1 << 17, help="planted trainings")
    ap.add_argument("--digits", type=int, default=512, help="digits-logreg trainings")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gpu-hour-usd", type=float, default=2.0, help="price of one A100-hour")
    args = ap.parse_args()

    import ray

    if args.ray_address:
        ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    execs = {f"ray_{w}_workers": make_executor("ray", workers=w) for w in (1, 2)}
    per_chunk = overhead(execs["ray_1_workers"], 200, args.repeats)
    tasks = [
        measure("planted", args.planted, 8192, args.repeats, execs),
        measure("digits-logreg", args.digits, 64, args.repeats, execs),
    ]
    for t in tasks:
        t["chunk_rows_for_5pct_overhead"] = int(
            np.ceil(per_chunk["seconds_per_chunk"] / (0.05 * t.pop("seconds_per_training")))
        )
    n, gpus = 100_000, 8
    hours = n * CIFAR_SECONDS_PER_TRAINING / gpus / 3600
    rows_cifar = int(np.ceil(per_chunk["seconds_per_chunk"] / (0.05 * CIFAR_SECONDS_PER_TRAINING)))
    report = {
        "cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")},
        "ray_overhead": per_chunk,
        "tasks": tasks,
        "projection_cifar10_on_8_gpus": {
            "trainings": n,
            "gpus": gpus,
            "seconds_per_training": CIFAR_SECONDS_PER_TRAINING,
            "wall_hours": round(hours, 2),
            "gpu_hours": round(hours * gpus, 1),
            "usd_at_gpu_hour": args.gpu_hour_usd,
            "usd": round(hours * gpus * args.gpu_hour_usd, 0),
            "chunk_rows_for_5pct_overhead": max(1, rows_cifar),
            "note": "on paper: airbench94 A100 time, Ray overhead as measured here; the Prover "
            "sends challenge chunks of 1024 trainings (about 56 min each)",
        },  # fmt: skip
    }
    ray.shutdown()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
