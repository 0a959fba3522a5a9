"""benchmarks/gpu.py, the command a lent GPU runs, works: on CPU at a tiny size here (its
figures mean nothing), on CUDA at the same size where a device is present (``gpu`` marker).
Checked: the JSON's shape, the exact task equal to the CPU's bytes, the projected cost from
the planner's sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _run(device: str) -> dict:  # type: ignore[type-arg]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", device, "--tiny"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    out: dict = json.loads(proc.stdout)  # type: ignore[type-arg]
    return out


def _check(result: dict, device: str) -> None:  # type: ignore[type-arg]
    rows = {r["task"]: r for r in result["rows"]}
    assert set(rows) == {"digits-logreg", "digits-mlp", "cifar10-resnet"}
    assert all(r["models_per_second"] > 0 and r["device"] == device for r in rows.values())
    assert rows["digits-mlp"]["declared_tau"] == 0.0
    assert rows["digits-mlp"]["bitwise_equal_to_cpu"] is True
    assert result["exact_tasks_max_abs_difference_vs_cpu"] == 0.0
    logreg = rows["digits-logreg"]
    assert logreg["max_abs_difference_vs_cpu"] <= logreg["declared_tau"]
    cost = result["projected_cifar10_verification"]
    assert cost["prover_trainings"] >= 1
    expected = cost["prover_trainings"] * rows["cifar10-resnet"]["seconds_per_model"] / 3600
    assert cost["prover_gpu_hours"] == pytest.approx(expected)
    assert result["memory"]


def test_the_gpu_benchmark_runs_on_cpu_at_a_tiny_size() -> None:
    _check(_run("cpu"), "cpu")


@pytest.mark.gpu
def test_the_gpu_benchmark_on_cuda_matches_the_cpu_bytes() -> None:
    _check(_run("cuda"), "cuda")
