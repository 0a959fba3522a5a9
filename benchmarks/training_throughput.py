"""Training throughput of the trained tasks, with the sequential baselines beside. Prints JSON.

    OMP_NUM_THREADS=2 python benchmarks/training_throughput.py [--device cpu|cuda] [--models 1024]
        [--threads 2] [--tasks logreg,mlp] [--mlp-models 256] [--mlp-threads 1]
        [--cifar-models 2] [--cross-device]

Reports, per task: models/s, FLOPs per model (counted from the recipe), achieved GFLOP/s and
its fraction of the float32 GEMM rate measured in the same run, peak memory, and for
digits-logreg the solution quality against scikit-learn's optimum on the same subsets (max
|margin difference| over targets and checked models, the optimum being scikit-learn at tol
1e-10) and scikit-learn's own rates: one process, and two single-thread processes; and, at
equal accuracy, ours with the fewest iterations whose max |margin difference| is no worse than
scikit-learn's at tol 1e-4 and 1e-6, and its speed-up; for digits-mlp (exact arithmetic) the float32
trainer it replaced (``benchmarks/float32_mlp.py``) and the same exact task run as a chain of
torch operations instead of the compiled loop (``protocol.tasks.mlp_kernels``; whether their
outputs are bit-identical is reported), alternated in the same process on the same subsets, at
``--mlp-threads`` threads (rates per wall and per CPU second, with the load average).
``--cross-device`` (needs CUDA) trains the same subsets on CPU and CUDA and reports the
largest difference of values and probe logits (what CHECKEQUIV's tolerance must absorb). The
CIFAR-10 timing uses random stand-in images of CIFAR-10's shape (50,000 x 3 x 32 x 32) when no
``--cifar-dir`` is given: valid for speed only.
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for benchmarks.*


def _pin(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _gemm_rate(device: str) -> float:
    import torch

    n = 4096 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device)
    a @ a
    _sync(device)
    reps = 3 if device == "cpu" else 20
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ a
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def _peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sk_margins(args: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]) -> np.ndarray:
    xp, yp, xt, yt, tol = args
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0, max_iter=10_000, tol=tol).fit(xp, yp)
    logits = xt @ model.coef_.T + model.intercept_
    true = logits[np.arange(len(yt)), yt].copy()
    logits[np.arange(len(yt)), yt] = -np.inf
    return true - logits.max(1)


def _sk_worker(payload: tuple[list[np.ndarray], Any, float]) -> list[np.ndarray]:
    from threadpoolctl import threadpool_limits

    masks, data, tol = payload
    with threadpool_limits(1):  # env variables are read at import: limit the live pools
        return [_sk_margins((data[0][m], data[1][m], data[2], data[3], tol)) for m in masks]


def bench_logreg(device: str, models: int, threads: int) -> dict[str, Any]:
    from protocol.tasks.digits import DigitsLogReg

    task = DigitsLogReg(device=device)
    rng = np.random.default_rng(0)
    masks = rng.random((models, task.n_train)) < 0.5
    seeds = np.arange(models, dtype=np.uint64)
    task.evaluate_outputs(masks[: task.chunk_size], seeds[: task.chunk_size])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    out = task.evaluate_outputs(masks, seeds)
    _sync(device)
    seconds = time.perf_counter() - t0
    n, d, c = task.n_train, 65, 10
    p_dim = d * c
    per_pass = 2 * (2 * n * d * c) + 8 * n * c  # forward + backward GEMMs + softmax
    per_iter = per_pass + 2 * p_dim * p_dim + (4 * task.memory + 6) * p_dim
    flops = per_pass + task.iters * per_iter + 2 * (300 + 16) * d * c
    data = task.data
    xp, yp = data.x_pool[:, :64], data.y_pool
    xt, yt = data.x_targets[:, :64], data.y_targets
    check = min(16, models)
    tight = [_sk_margins((xp[m], yp[m], xt, yt, 1e-10)) for m in masks[:check]]
    quality = float(max(np.abs(tight[i] - out.values[i]).max() for i in range(check)))
    seq_n = 48
    sk: dict[str, float] = {}
    for tol in (1e-4, 1e-6):
        t0 = time.perf_counter()
        runs = [_sk_margins((xp[m], yp[m], xt, yt, tol)) for m in masks[:seq_n]]
        sk[f"tol={tol:g} one_process_models_per_second"] = seq_n / (time.perf_counter() - t0)
        sk[f"tol={tol:g} max_margin_diff"] = float(
            max(np.abs(tight[i] - runs[i]).max() for i in range(check))
        )
        halves = [list(masks[:seq_n:2]), list(masks[1:seq_n:2])]
        with ProcessPoolExecutor(2) as pool:
            list(pool.map(_sk_worker, [([masks[0]], (xp, yp, xt, yt), tol)] * 2))  # start-up
            t0 = time.perf_counter()
            list(pool.map(_sk_worker, [(h, (xp, yp, xt, yt), tol) for h in halves]))
            sk[f"tol={tol:g} two_single_thread_processes_models_per_second"] = seq_n / (
                time.perf_counter() - t0
            )
    # Equal accuracy: the fewest iterations whose max |margin - optimum| on the checked models
    # is no worse than scikit-learn's at that tolerance, timed on all the models.
    matched: dict[str, dict[str, float]] = {}
    for tol in (1e-4, 1e-6):
        target = sk[f"tol={tol:g} max_margin_diff"]
        for iters in range(6, 41):  # every count: the fewest that match
            trial = DigitsLogReg(device=device, iters=iters)
            got = trial.evaluate_outputs(masks[:check], seeds[:check]).values
            err = float(max(np.abs(tight[i] - got[i]).max() for i in range(check)))
            if err <= target:
                break
        _sync(device)
        t0 = time.perf_counter()
        trial.evaluate_outputs(masks, seeds)
        _sync(device)
        rate_m = models / (time.perf_counter() - t0)
        matched[f"tol={tol:g}"] = {
            "iters": iters, "max_margin_diff": err, "sklearn_max_margin_diff": target,
            "models_per_second": rate_m,
            "speedup_vs_two_process_sklearn": rate_m
            / sk[f"tol={tol:g} two_single_thread_processes_models_per_second"],
        }  # fmt: skip
    gemm = _gemm_rate(device)
    rate = models / seconds
    return {
        "task": "digits-logreg", "device": device, "threads": threads, "models": models,
        "chunk_size": task.chunk_size, "iters": task.iters, "models_per_second": rate,
        "flops_per_model": flops, "achieved_gflops": rate * flops / 1e9,
        "gemm_gflops": gemm, "fraction_of_gemm": rate * flops / 1e9 / gemm,
        "peak_memory_mb": _peak_memory_mb(device),
        "max_margin_diff_vs_sklearn_optimum": quality,
        "sklearn": sk,
        "speedup_vs_two_process_sklearn_default_tol": rate
        / sk["tol=0.0001 two_single_thread_processes_models_per_second"],
        "speedup_vs_two_process_sklearn_tol_1e-6": rate
        / sk["tol=1e-06 two_single_thread_processes_models_per_second"],
        "at_equal_accuracy": matched,
        "load_average_1min": os.getloadavg()[0],
    }  # fmt: skip


def _rates(run: Any, models: int) -> tuple[float, float]:
    """(models per wall second, models per CPU second of this process) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    run()
    return models / (time.perf_counter() - w0), models / (time.process_time() - c0)


def bench_mlp(device: str, models: int, threads: int, reps: int = 2) -> dict[str, Any]:
    """Exact digits-mlp beside the float32 trainer it replaced, alternated in one process on
    the same subsets, ``threads`` threads; rates per wall and per CPU second (the machine may
    be shared: the load average is reported)."""
    import torch

    from benchmarks.float32_mlp import Float32MLP
    from protocol.tasks.digits import DigitsMLP

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    task = DigitsMLP(device=device)
    ref = Float32MLP(device=device)
    rng = np.random.default_rng(1)
    masks = rng.random((models, task.n_train)) < 0.5
    seeds = np.arange(models, dtype=np.uint64)
    chain = DigitsMLP(device=device)
    chain.kernels = "torch"  # the chain of torch operations: the same bits, the old speed
    task.evaluate_outputs(masks[:4], seeds[:4])  # warm-up (and the kernels' compilation)
    chain.evaluate_outputs(masks[:4], seeds[:4])
    ref.train(masks[:4], seeds[:4])
    load_before = os.getloadavg()
    exact: list[tuple[float, float]] = []
    f32: list[tuple[float, float]] = []
    torch_chain: list[tuple[float, float]] = []
    result: dict[str, Any] = {}
    for _ in range(reps):

        def run_exact() -> None:
            result["exact"] = task.evaluate_outputs(masks, seeds).values
            _sync(device)

        def run_chain() -> None:
            result["chain"] = chain.evaluate_outputs(masks, seeds).values
            _sync(device)

        def run_f32() -> None:
            result["f32"] = ref.train(masks, seeds)
            _sync(device)

        exact.append(_rates(run_exact, models))
        f32.append(_rates(run_f32, models))
        torch_chain.append(_rates(run_chain, models))
    load_after = os.getloadavg()
    torch.set_num_threads(before)
    d, h, c, b = 65, task.hidden, 10, task.batch
    flops = task.steps * 3 * 2 * b * (d * h + (h + 1) * c)
    wall, wall_f32 = [r[0] for r in exact], [r[0] for r in f32]
    best, best_f32 = max(wall), max(wall_f32)
    return {
        "task": "digits-mlp", "device": device, "threads": threads, "models": models,
        "chunk_size": task.chunk_size, "reps": reps,
        "models_per_second": best, "models_per_cpu_second": max(r[1] for r in exact),
        "float32_reference_models_per_second": best_f32,
        "float32_reference_models_per_cpu_second": max(r[1] for r in f32),
        "speedup_vs_float32_reference": best / best_f32,
        "median_models_per_second": float(np.median(wall)),
        "float32_reference_median_models_per_second": float(np.median(wall_f32)),
        "exact_implementation": "numba" if task._fused and device == "cpu" else "torch",
        "torch_chain_median_models_per_second": float(np.median([r[0] for r in torch_chain])),
        "torch_chain_bit_identical": result["exact"].tobytes() == result["chain"].tobytes(),
        "per_rep_wall_rates": {
            "exact": wall, "float32": wall_f32, "torch_chain": [r[0] for r in torch_chain]
        },
        "flops_per_model": flops, "achieved_gflops": best * flops / 1e9,
        "target_accuracy": float((result["exact"] > 0).mean()),
        "float32_reference_target_accuracy": float((result["f32"] > 0).mean()),
        "mean_margin": float(result["exact"].mean()),
        "float32_reference_mean_margin": float(result["f32"].mean()),
        "load_average_1min_before_after": [load_before[0], load_after[0]],
        "peak_memory_mb": _peak_memory_mb(device),
    }  # fmt: skip


def _stand_in_cifar(root: Path) -> None:
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 10_000) for i in range(1, 6)), ("test_batch", 10_000)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}  # fmt: skip
        with (root / name).open("wb") as fh:
            pickle.dump(batch, fh)


def bench_cifar(device: str, models: int, cifar_dir: str | None, epochs: int) -> dict[str, Any]:
    from protocol.tasks.cifar import CifarResNet

    with tempfile.TemporaryDirectory() as tmp:
        root = cifar_dir or tmp
        if cifar_dir is None:
            _stand_in_cifar(Path(tmp))
        # tau is not used here: the benchmark measures the differences themselves.
        task = CifarResNet(data_dir=root, device=device, epochs=epochs, tau=1.0)
        rng = np.random.default_rng(2)
        masks = rng.random((models, task.n_train)) < 0.5
        seeds = np.arange(models, dtype=np.uint64)
        t0 = time.perf_counter()
        out = task.evaluate_outputs(masks, seeds)
        _sync(device)
        seconds = time.perf_counter() - t0
    return {
        "task": "cifar10-resnet", "device": device, "models": models, "epochs": epochs,
        "data": cifar_dir or "random stand-in of CIFAR-10 shape (speed only)",
        "seconds_per_model": seconds / models, "target_accuracy": float((out.values > 0).mean()),
        "peak_memory_mb": _peak_memory_mb(device),
    }  # fmt: skip


def cross_device(models: int) -> list[dict[str, Any]]:
    from protocol.tasks.digits import DigitsLogReg, DigitsMLP

    rows = []
    rng = np.random.default_rng(3)
    for cls in (DigitsLogReg, DigitsMLP):
        cpu, gpu = cls(device="cpu"), cls(device="cuda")
        masks = rng.random((models, cpu.n_train)) < 0.5
        seeds = np.arange(models, dtype=np.uint64)
        a, b = cpu.evaluate_outputs(masks, seeds), gpu.evaluate_outputs(masks, seeds)
        perm = rng.permutation(models)[: models // 2 + 3]  # other batch composition and positions
        again = gpu.evaluate_outputs(masks[perm], seeds[perm])
        rows.append({
            "cuda_bitwise_equal_across_batches": bool(
                np.array_equal(again.values, b.values[perm])
                and np.array_equal(again.probes, b.probes[perm])
            ),
            "task": cls.name, "models": models,
            "max_abs_value_diff": float(np.abs(a.values - b.values).max()),
            "max_abs_probe_diff": float(np.abs(a.probes - b.probes).max()),
            "declared_tau": cpu.tau,
        })  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", type=int, default=1024)
    ap.add_argument("--tasks", default="logreg,mlp", help="comma-separated: logreg, mlp")
    ap.add_argument("--mlp-models", type=int, default=256)
    ap.add_argument("--mlp-threads", type=int, default=1, help="threads for digits-mlp")
    ap.add_argument("--mlp-reps", type=int, default=2, help="alternations of the two trainers")
    ap.add_argument("--cifar-models", type=int, default=0)
    ap.add_argument("--cifar-epochs", type=int, default=8)
    ap.add_argument("--cifar-dir", default=None)
    ap.add_argument("--cross-device", action="store_true")
    args = ap.parse_args()
    if args.mlp_reps < 1:
        ap.error("--mlp-reps must be at least 1")
    _pin(args.threads)
    tasks = set(args.tasks.split(","))
    rows = []
    if "logreg" in tasks:
        rows.append(bench_logreg(args.device, args.models, args.threads))
    if "mlp" in tasks:
        rows.append(bench_mlp(args.device, args.mlp_models, args.mlp_threads, args.mlp_reps))
    if args.cifar_models:
        rows.append(bench_cifar(args.device, args.cifar_models, args.cifar_dir, args.cifar_epochs))
    result: dict[str, Any] = {"benchmark": "training_throughput", "rows": rows}
    if args.cross_device:
        result["cross_device"] = cross_device(256)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
