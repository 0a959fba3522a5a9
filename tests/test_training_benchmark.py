"""benchmarks/training_throughput.py's digits-mlp row at a tiny size (its rates mean nothing
here): it runs the compiled loop and the torch chain beside the float32 trainer, and reports
that the two exact implementations gave the same bytes."""

from __future__ import annotations

import pytest

from protocol.tasks import mlp_kernels


@pytest.mark.skipif(not mlp_kernels.available(), reason="numba is not installed")
def test_mlp_row_compares_the_two_exact_implementations() -> None:
    from benchmarks.training_throughput import bench_mlp

    row = bench_mlp("cpu", models=3, threads=1, reps=1)
    assert row["exact_implementation"] == "numba"
    assert row["torch_chain_bit_identical"] is True
    assert len(row["per_rep_wall_rates"]["torch_chain"]) == 1
    assert row["models_per_second"] > 0 and row["torch_chain_median_models_per_second"] > 0
