"""Bitwise reproducibility on every code path the CPU can take, and the task contract.

The exact tasks (``digits-mlp``, ``planted``) must give the same bytes whatever the batch, the
position in it, the thread count and the instruction set torch, MKL and oneDNN dispatch to.
This machine may be AVX2 or AVX-512; each run here is compared with fresh processes forced onto
the baseline path (``ATEN_CPU_CAPABILITY=default``, ``MKL_ENABLE_INSTRUCTIONS=SSE4_2``, ...)
and onto the AVX2 path (on an AVX-512 machine, the other path), and with one at two threads on
the native path, so every instruction path is exercised on any CI machine.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from protocol.errors import InvalidParameterError, TaskError
from protocol.sampling import sample_masks, training_seeds
from protocol.tasks import TaskBase, declared, load_task
from protocol.tasks.exact import check_exact_product, exp_nonpositive, to_units

ROOT = Path(__file__).parents[2]
TASKS = ("digits-mlp:steps=12,hidden=32,batch=16,chunk_size=5", "planted:n_train=50,n_targets=4")
BASELINE = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "MKL_CBWR": "COMPATIBLE",
    "OPENBLAS_CORETYPE": "Prescott",
}
AVX2 = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
}
_SCRIPT = """
import hashlib, sys
import numpy as np, torch
torch.set_num_threads(int(sys.argv[2]))
from protocol.sampling import sample_masks, training_seeds
from protocol.tasks import load_task
from protocol.tasks.exact import exp_nonpositive
t = load_task(sys.argv[1])
m = sample_masks(bytes(32), t.n_train, 0.5, range(7), domain="isa")
s = training_seeds(bytes(32), range(7), domain="isa")
out = t.evaluate_outputs(m[::-1].copy(), s[::-1].copy())
e = exp_nonpositive(-torch.arange(100_003, dtype=torch.float64) / 1024.0)
h = hashlib.sha256(out.values[::-1].tobytes() + out.probes[::-1].tobytes() + e.numpy().tobytes())
print(torch.backends.cpu.get_cpu_capability(), h.hexdigest())
"""


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            return set(next((ln for ln in fh if ln.startswith("flags")), "").split())
    except OSError:
        return set()


def _digest_here(ref: str) -> str:
    t = load_task(ref)
    m = sample_masks(bytes(32), t.n_train, 0.5, range(7), domain="isa")
    s = training_seeds(bytes(32), range(7), domain="isa")
    out = t.evaluate_outputs(m, s)
    e = exp_nonpositive(-torch.arange(100_003, dtype=torch.float64) / 1024.0)
    h = hashlib.sha256(out.values.tobytes() + out.probes.tobytes() + e.numpy().tobytes())
    return h.hexdigest()


def _digest_in_process(ref: str, threads: int, env: dict[str, str]) -> tuple[str, str]:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, ref, str(threads)],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    capability, digest = proc.stdout.split()
    return capability, digest


@pytest.mark.parametrize("ref", TASKS)
def test_exact_tasks_give_the_same_bytes_on_both_instruction_paths_and_thread_counts(
    ref: str,
) -> None:
    here = _digest_here(ref)  # in batch order, on this machine's native path
    capability, baseline = _digest_in_process(ref, 1, BASELINE)  # reversed batch, baseline path
    assert capability == "DEFAULT"
    assert baseline == here
    if "avx2" in _cpu_flags():
        capability, avx2 = _digest_in_process(ref, 1, AVX2)  # reversed batch, AVX2 path
        assert capability == "AVX2"
        assert avx2 == here
    native_caps = {"AVX2", "AVX512"} & {torch.backends.cpu.get_cpu_capability()}
    capability, two = _digest_in_process(ref, 2, {})  # reversed batch, native path, 2 threads
    assert two == here
    assert not native_caps or capability in native_caps


def test_exact_products_refuse_configurations_that_could_round() -> None:
    check_exact_product("ok", 26.0, 26.0, 2)  # 2 x 2^(26+26) = 2^53: exact
    with pytest.raises(InvalidParameterError, match="exact product needs 54.0 bits"):
        check_exact_product("layer", 26.0, 26.0, 4)
    with pytest.raises(TaskError, match="exact product"):
        load_task("digits-mlp:hidden=100000")


def test_units_are_integers_on_the_grid_and_clamped() -> None:
    t = torch.tensor([0.1, -3.7, 100.0, 2.0**-30], dtype=torch.float64)
    u = to_units(t, 8, 4.0)
    assert torch.equal(u, torch.round(u))
    assert u.tolist() == [26.0, -947.0, 1024.0, 0.0]


def test_exp_made_of_basic_operations_is_accurate() -> None:
    x = torch.linspace(-64.0, 0.0, 20_001, dtype=torch.float64)
    rel = (exp_nonpositive(x) - torch.exp(x)).abs() / torch.exp(x)
    assert float(rel.max()) < 3e-8  # the bound stated in protocol.tasks.exact
    assert float(exp_nonpositive(torch.tensor([-1e9], dtype=torch.float64))) == pytest.approx(
        math.exp(-64.0)
    )


class _Minimal:
    name, n_train, n_targets, bound = "minimal", 4, 1, 10.0

    def spec(self) -> dict[str, object]:
        return {"task": "minimal"}

    def evaluate(self, masks: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        return masks.sum(1, keepdims=True).astype(float)


def test_a_minimal_object_gets_the_contracts_defaults() -> None:
    t = declared(_Minimal())
    assert isinstance(t, TaskBase)
    assert t.tau == 0.0 and t.chunk_size == 1024 and t.differentiable() is None
    out = t.evaluate_outputs(np.eye(4, dtype=bool), np.zeros(4, dtype=np.uint64))
    assert out.values.tolist() == [[1.0]] * 4 and out.probes.shape == (4, 0)
    assert t.device_class.startswith("cpu:")
    assert load_task("digits-logreg:iters=1").differentiable() is not None


@pytest.mark.parametrize(
    ("attr", "value", "match"),
    [
        ("tau", -1.0, "tau"),
        ("tau", float("nan"), "tau"),
        ("chunk_size", 0, "chunk_size"),
        ("chunk_size", 2.5, "chunk_size"),
        ("bound", float("inf"), "bound"),
    ],  # fmt: skip
)
def test_bad_declarations_are_refused(attr: str, value: object, match: str) -> None:
    obj = _Minimal()
    setattr(obj, attr, value)
    with pytest.raises(TaskError, match=match):
        declared(obj)


def test_a_missing_method_is_named() -> None:
    class NoSpec:
        name, n_train, n_targets, bound = "x", 2, 1, 1.0

    with pytest.raises(TaskError, match="no spec, evaluate"):
        declared(NoSpec())


def test_signing_and_builtin_lookup_do_not_import_torch() -> None:
    code = (
        "import sys, protocol, protocol.signing, protocol.messages\n"
        "from protocol.tasks import load_task\n"
        "load_task('planted')\n"
        "import verifier_client.cli, prover_service.cli\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_rows_at_any_position_of_a_chunk_match_planted() -> None:
    t = load_task("planted:n_train=30,n_targets=2,noise=0.3")
    m = sample_masks(bytes(32), 30, 0.5, range(50))
    s = training_seeds(bytes(32), range(50))
    whole = t.evaluate(m, s)
    for rows in ([0], [49], [10, 3, 7], list(range(25, 50))):
        np.testing.assert_array_equal(t.evaluate(m[rows], s[rows]), whole[rows])


def test_exact_float32_products_refuse_tf32_or_bfloat16_settings() -> None:
    from protocol.tasks.digits import DigitsMLP

    task = DigitsMLP(steps=2, hidden=8, batch=4)
    masks, seeds = np.ones((1, task.n_train), dtype=bool), np.zeros(1, dtype=np.uint64)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # bfloat16 products through oneDNN on CPU
    try:
        with pytest.raises(InvalidParameterError, match="IEEE float32 matrix products"):
            task.evaluate_outputs(masks, seeds)
    finally:
        torch.set_float32_matmul_precision(before)
    assert task.evaluate_outputs(masks, seeds).values.shape == (1, task.n_targets)


def test_power_of_two_scales_are_exact_from_the_exponent_bits() -> None:
    from protocol.tasks.exact import floor_log2, pow2

    e = torch.arange(-126, 128, dtype=torch.int32)
    assert torch.equal(pow2(e), torch.tensor([2.0**k for k in range(-126, 128)]))
    m = torch.tensor([0.0, 1.0, 1.5, 2.0, 3.0, 2.0**20 - 1, 2.0**20], dtype=torch.float32)
    assert floor_log2(m).tolist() == [-127, 0, 0, 1, 1, 19, 20]
