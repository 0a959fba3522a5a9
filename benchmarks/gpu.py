"""What a Prover on one GPU achieves: one command, JSON on stdout (under 5 minutes on one GPU).

    python benchmarks/gpu.py [--device cuda] [--epsilon 100] [--delta 0.05]
    python benchmarks/gpu.py --device cpu --tiny        # the same code at a tiny size (tests)

Reports, for the tasks as the Prover runs them (``evaluate_outputs``, chunks of K models):

* models/s of ``digits-logreg`` (float64, tau 1e-9), ``digits-mlp`` (exact arithmetic,
  tau = 0) and ``cifar10-resnet`` on random stand-in images of CIFAR-10's shape (50,000 x 3 x
  32 x 32; nothing is downloaded; valid for speed, not accuracy), one model at a time;
* for the exact task, the largest difference between this device's values and probe outputs
  and the CPU's on the same subsets (must be 0: CHECKEQUIV compares bytes), and for
  digits-logreg the same difference beside its declared tau;
* GPU memory: the peak allocated and reserved by torch, and the device's total;
* the projected Prover cost of a CIFAR-10 verification: the planner's a-priori sizes
  (``protocol.budget.plan`` at ``--epsilon``, ``--delta``, b = 20, Z = 100 targets, the tau
  given) times the measured seconds per CIFAR model, in GPU-hours (no pilot: a verification
  planned from a pilot on the Prover's datamodel needs far fewer trainings).

``--tiny`` shrinks every size (a few models, short recipes, a small stand-in CIFAR) so that the
test suite runs this file on CPU; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository

SIZES = {  # models per task, and the recipe overrides, full and tiny
    "full": {"logreg": 4096, "mlp": 1024, "cifar": 2, "cpu_check": 8, "mlp_task": {},
             "cifar_task": {}, "cifar_rows": 10_000},
    "tiny": {"logreg": 8, "mlp": 4, "cifar": 1, "cpu_check": 3,
             "mlp_task": {"steps": 6, "hidden": 16, "batch": 16},
             "cifar_task": {"n_train": 64, "n_targets": 8, "width": 4, "epochs": 1, "batch": 32},
             "cifar_rows": 100},
}  # fmt: skip


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(device: str, run: Any) -> tuple[Any, float]:
    _sync(device)
    t0 = time.perf_counter()
    out = run()
    _sync(device)
    return out, time.perf_counter() - t0


def _subsets(n: int, n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, n_train)) < 0.5, np.arange(n, dtype=np.uint64) + np.uint64(seed << 32)


def bench_digits(device: str, size: dict[str, Any], mlp_chunk: int) -> list[dict[str, Any]]:
    """digits-logreg and digits-mlp: rate on ``device``; values against the CPU's."""
    from protocol.tasks.digits import DigitsLogReg, DigitsMLP

    rows = []
    for name, make, models in (
        ("digits-logreg", lambda dev: DigitsLogReg(device=dev), size["logreg"]),
        ("digits-mlp", lambda dev: DigitsMLP(device=dev, chunk_size=mlp_chunk, **size["mlp_task"]),
         size["mlp"]),
    ):  # fmt: skip
        task, cpu = make(device), make("cpu")
        masks, seeds = _subsets(models, task.n_train, 1)
        task.evaluate_outputs(masks[:2], seeds[:2])  # warm-up (kernels, the logreg warm start)
        out, seconds = _timed(device, lambda t=task, m=masks, s=seeds: t.evaluate_outputs(m, s))
        n = size["cpu_check"]
        # the CPU trains the first n subsets in another batch (reversed): same (mask, seed) pairs
        ref = cpu.evaluate_outputs(masks[:n][::-1].copy(), seeds[:n][::-1].copy())
        ref_values, ref_probes = ref.values[::-1], ref.probes[::-1]
        diff = float(
            max(
                np.abs(out.values[:n] - ref_values).max(), np.abs(out.probes[:n] - ref_probes).max()
            )
        )
        rows.append({
            "task": name, "device": device, "models": models, "chunk_size": task.chunk_size,
            "models_per_second": models / seconds, "seconds": seconds,
            "declared_tau": task.tau, "cpu_models_compared": n,
            "max_abs_difference_vs_cpu": diff,
            "bitwise_equal_to_cpu": bool(diff == 0.0),
            "target_accuracy": float((out.values > 0).mean()),
        })  # fmt: skip
    return rows


def _stand_in_cifar(root: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, rows).tolist()}  # fmt: skip
        with (root / name).open("wb") as fh:
            pickle.dump(batch, fh)


def bench_cifar(device: str, size: dict[str, Any]) -> dict[str, Any]:
    """cifar10-resnet on random stand-in images of CIFAR-10's shape, one model at a time."""
    from protocol.tasks.cifar import CifarResNet

    with tempfile.TemporaryDirectory() as tmp:
        _stand_in_cifar(Path(tmp), size["cifar_rows"])
        # tau is not used here (the benchmark trains, it does not compare)
        task = CifarResNet(data_dir=tmp, device=device, tau=1.0, **size["cifar_task"])
        masks, seeds = _subsets(size["cifar"], task.n_train, 2)
        out, seconds = _timed(device, lambda: task.evaluate_outputs(masks, seeds))
    return {
        "task": "cifar10-resnet", "device": device, "models": size["cifar"],
        "data": f"random stand-in, {size['cifar_rows']:,} x 3 x 32 x 32 per file (speed only)",
        "n_train": task.n_train, "epochs": task.epochs, "width": task.width,
        "seconds_per_model": seconds / size["cifar"], "models_per_second": size["cifar"] / seconds,
        "values_finite": bool(np.isfinite(out.values).all()),
    }  # fmt: skip


def projected_cost(
    seconds_per_model: float, epsilon: float, delta: float, tau: float, b3_bound: float | None
) -> dict[str, Any]:
    """The planner's a-priori sizes for cifar10-resnet (b = 20, Z = 100) and their GPU cost."""
    from protocol.budget import plan
    from protocol.errors import ProtocolError

    try:
        p = plan(epsilon, delta, 20.0, n_targets=100, tau=tau, b3_bound=b3_bound)
    except ProtocolError as exc:
        return {"epsilon": epsilon, "delta": delta, "tau": tau, "refused": str(exc)}
    prover = p.verifier_trainings.get("prover", p.n_subsets)
    return {
        "epsilon": epsilon, "delta": delta, "bound": 20.0, "n_targets": 100, "tau": tau,
        "b3_bound": b3_bound, "source": "a-priori plan (protocol.budget.plan, no pilot)",
        "prover_trainings": prover, "verifier_trainings": p.verifier_trainings,
        "seconds_per_model": seconds_per_model,
        "prover_gpu_hours": prover * seconds_per_model / 3600.0,
    }  # fmt: skip


def memory(device: str) -> dict[str, Any]:
    """Peak memory: torch's allocator on CUDA, the process's resident set on CPU."""
    import torch

    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info()
        return {
            "gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
            "peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
            "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
            "in_use_now_mb": (total - free) / 2**20, "total_mb": total / 2**20,
        }  # fmt: skip
    return {"peak_resident_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (tests; figures meaningless)")
    ap.add_argument("--mlp-chunk", type=int, default=None, help="digits-mlp models per chunk")
    ap.add_argument("--epsilon", type=float, default=100.0, help="for the projected cost")
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--tau", type=float, default=0.0, help="cifar10-resnet's tau for the plan")
    ap.add_argument("--b3-bound", type=float, default=None)
    args = ap.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (use --device cpu --tiny)")
    size = SIZES["tiny" if args.tiny else "full"]
    mlp_chunk = args.mlp_chunk or (512 if args.device.startswith("cuda") else 64)
    t0 = time.perf_counter()
    rows = bench_digits(args.device, size, mlp_chunk)
    cifar = bench_cifar(args.device, size)
    rows.append(cifar)
    exact = [r for r in rows if r.get("declared_tau") == 0.0]
    result = {
        "benchmark": "gpu", "device": args.device, "tiny": args.tiny,
        "threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0],
        "torch": torch.__version__, "rows": rows,
        "exact_tasks_max_abs_difference_vs_cpu": max(r["max_abs_difference_vs_cpu"] for r in exact),
        "memory": memory(args.device),
        "projected_cifar10_verification": projected_cost(
            cifar["seconds_per_model"], args.epsilon, args.delta, args.tau, args.b3_bound
        ),
        "wall_seconds": time.perf_counter() - t0,
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
