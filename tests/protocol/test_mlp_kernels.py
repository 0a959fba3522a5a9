"""digits-mlp's compiled training loop (protocol.tasks.mlp_kernels) gives the torch chain's bits.

The loop is a second implementation of DigitsMLP._sgd; tau = 0 holds only if both give the
same bits everywhere. Checked here: equality with the torch chain (dead models, the first-order
term of fine-tuning, several sizes), the recorded bytes of version 3 with numba compiling for
a generic x86-64, for Haswell (AVX2) and for this CPU, and OpenBLAS on its SSE3 kernels; no
fused multiply-add in the compiled code (with a control that the scan finds one where
``fastmath`` allows it); concurrent trainings equal serial ones; bad input is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from protocol.errors import InvalidParameterError
from protocol.tasks import mlp_kernels
from protocol.tasks.digits_mlp import DigitsMLP
from tests.protocol.test_trained_tasks import MLP_V3_SHA256

pytestmark = pytest.mark.skipif(not mlp_kernels.available(), reason="numba is not installed")
ROOT = Path(__file__).parents[2]
FMA = ("vfmadd", "vfmsub", "vfnmadd", "vfnmsub", "vfmaddsub", "vfmsubadd")


def _task(kernels: str, **kw: int) -> DigitsMLP:
    task = DigitsMLP(**{"steps": 25, "hidden": 32, "batch": 16, **kw})
    task.kernels = kernels
    return task


def _weights(task: DigitsMLP, masks: torch.Tensor, seeds: np.ndarray) -> bytes:
    w1, w2 = task._train_weights(masks, seeds)
    return w1.numpy().tobytes() + w2.numpy().tobytes()


@pytest.mark.parametrize(
    "kw", [{}, {"hidden": 128, "batch": 64, "steps": 12}, {"hidden": 7, "batch": 3, "steps": 40}]
)
def test_loop_gives_the_torch_chains_bits(kw: dict[str, int]) -> None:
    rng = np.random.default_rng(11)
    masks = torch.tensor(rng.random((5, DigitsMLP.n_train)) < 0.3)
    masks[2] = False  # a model with no data: its updates are masked out
    seeds = rng.integers(0, 2**63, 5).astype(np.uint64)
    fused, chain = _task("numba", **kw), _task("torch", **kw)
    assert _weights(fused, masks, seeds) == _weights(chain, masks, seeds)
    one = _weights(fused, masks[3:4], seeds[3:4])  # a model alone equals it in the batch
    assert one == _weights(chain, masks[3:4], seeds[3:4])


def test_finetuning_with_and_without_the_first_order_term() -> None:
    rng = np.random.default_rng(12)
    fused, chain = _task("numba", finetune_steps=9), _task("torch", finetune_steps=9)
    start = fused.full_model()
    assert torch.equal(start, chain.full_model())
    weights = torch.tensor(rng.random((4, fused.n_train)), dtype=torch.float32)
    linear = torch.tensor(rng.standard_normal((start.shape[0], 4)) * 1e-3, dtype=torch.float32)
    for lin in (linear, None):
        a, b = fused.finetune(weights, lin, start), chain.finetune(weights, lin, start)
        assert a.numpy().tobytes() == b.numpy().tobytes()
    assert not torch.equal(
        fused.finetune(weights, linear, start), fused.finetune(weights, None, start)
    )


_RECORDED = """
import hashlib, json, numpy as np
from protocol.tasks.digits_mlp import DigitsMLP
from protocol.tasks import mlp_kernels
rng = np.random.default_rng(5)
masks = rng.random((6, 1497)) < 0.5
task = DigitsMLP(steps=30, hidden=32, batch=16)
task.kernels = "numba"
out = task.evaluate_outputs(masks, np.arange(6, dtype=np.uint64))
blob = np.ascontiguousarray(out.values).tobytes() + np.ascontiguousarray(out.probes).tobytes()
print(json.dumps(hashlib.sha256(blob).hexdigest()))
"""


@pytest.mark.parametrize(
    "env",
    [
        {"NUMBA_CPU_NAME": "generic", "OPENBLAS_CORETYPE": "Prescott"},
        {"NUMBA_CPU_NAME": "haswell", "OPENBLAS_CORETYPE": "Haswell"},
        {},
    ],
    ids=["generic", "haswell", "host"],
)
def test_recorded_bytes_for_every_cpu_target(env: dict[str, str]) -> None:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT), "VDA_MLP_KERNELS": ""}
    out = subprocess.run(
        [sys.executable, "-c", _RECORDED], env=full, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == MLP_V3_SHA256


_ASM = """
import json, re, sys
import numpy as np, torch
from numba import njit
from numba.core.registry import CPUDispatcher
from protocol.tasks import _mlp_numba
from protocol.tasks.digits_mlp import DigitsMLP
task = DigitsMLP(steps=2, hidden=8, batch=4)
task.kernels = "numba"
task._train_weights(torch.ones((2, task.n_train), dtype=torch.bool), np.arange(2, dtype=np.uint64))
found, names = {}, []
for name, obj in vars(_mlp_numba).items():
    if isinstance(obj, CPUDispatcher):
        names.append(name)
        for asm in obj.inspect_asm().values():
            found[name] = sorted(set(re.findall(r"^\\s+(v?f[a-z]*madd\\w*|v?f[a-z]*msub\\w*)\\s",
                                                asm, re.M)))
@njit(fastmath=True)
def control(a, b, c):
    for i in range(a.size):
        c[i] = a[i] * b[i] + c[i]
x = np.ones(64, dtype=np.float32)
control(x, x, x.copy())
ctl = sorted(set(re.findall(r"^\\s+(vfmadd\\w*)\\s", next(iter(control.inspect_asm().values())),
                            re.M)))
print(json.dumps({"found": found, "names": names, "control": ctl}))
"""


@pytest.mark.parametrize("cpu", ["host", "haswell"])
def test_compiled_code_has_no_fused_multiply_add(tmp_path: Path, cpu: str) -> None:
    # A fresh cache directory: numba will not show the assembly of code it loaded from cache.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_CACHE_DIR": str(tmp_path)}
    if cpu != "host":
        env["NUMBA_CPU_NAME"] = cpu
    out = subprocess.run(
        [sys.executable, "-c", _ASM], env=env, capture_output=True, text=True, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"sgd", "_update", "_softmax_grad"} <= set(report["found"]), report
    assert all(not ops for ops in report["found"].values()), report["found"]
    # The scan can fail: the same pattern finds FMAs where fastmath allows contraction (every
    # CPU that numba targets here, haswell and this one, has FMA).
    assert report["control"], "the FMA scan found nothing in a fastmath a*b+c loop"


def test_concurrent_trainings_equal_serial_ones() -> None:
    task = _task("numba")
    rng = np.random.default_rng(13)
    chunks = [
        (
            torch.tensor(rng.random((3, task.n_train)) < 0.5),
            rng.integers(0, 2**63, 3).astype(np.uint64),
        )
        for _ in range(4)
    ]
    serial = [_weights(task, m, s) for m, s in chunks]
    results: list[bytes | None] = [None] * len(chunks)
    start = threading.Barrier(len(chunks))

    def work(i: int) -> None:
        start.wait()
        results[i] = _weights(task, *chunks[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(chunks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == serial


def _args() -> dict[str, object]:
    k, h, d, c, steps, b, n = 2, 4, 65, 10, 3, 2, 5
    f = np.float32
    masters = tuple(
        np.zeros(shape, dtype=f)
        for shape in [(k, h, d), (k, h, d), (k, c, h), (k, c, h), (k, c), (k, c)]
    )
    constants = dict.fromkeys(mlp_kernels.FLOAT_CONSTANTS, 0.5)
    return dict(
        masters=masters, picks=np.zeros((k, steps, b), dtype=np.int64),
        y=np.zeros(n, dtype=np.int64), xpool=np.zeros((n, d), dtype=f), linear=None, live=None,
        constants=constants, dz_bits=10, e1=-12, terms=tuple(2.0**-j for j in range(9)),
    )  # fmt: skip


def test_bad_constants_and_layouts_are_refused() -> None:
    mlp_kernels.sgd(**_args())  # the well-formed call runs
    bad = _args()
    bad["constants"] = {**bad["constants"], "mom": 0.9}  # not a float32
    with pytest.raises(InvalidParameterError, match="mom"):
        mlp_kernels.sgd(**bad)
    bad = _args()
    bad["terms"] = (1.0, 1.0, 0.5, 1 / 6, 0.1, 0.1, 0.1, 0.1, 0.1)
    with pytest.raises(InvalidParameterError, match="float32"):
        mlp_kernels.sgd(**bad)
    bad = _args()
    w1 = bad["masters"][0]  # type: ignore[index]
    bad["masters"] = (np.asfortranarray(w1), *bad["masters"][1:])  # type: ignore[index]
    with pytest.raises(InvalidParameterError, match="C-contiguous"):
        mlp_kernels.sgd(**bad)


def test_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    task = _task("auto")
    assert task._fused
    monkeypatch.setenv("VDA_MLP_KERNELS", "torch")
    assert not mlp_kernels.available() and not task._fused
    monkeypatch.delenv("VDA_MLP_KERNELS")
    monkeypatch.setattr(mlp_kernels, "available", lambda: False)
    assert not task._fused  # auto falls back to the torch chain
    task.kernels = "numba"
    with pytest.raises(InvalidParameterError, match="numba"):
        _ = task._fused


def test_compiles_without_a_cache_where_no_cache_directory_is_writable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from protocol.tasks import _mlp_numba

    calls: list[bool] = []

    def fake_njit(cache: bool, **options: object) -> object:
        calls.append(cache)
        if cache:  # what numba raises when it finds no cache locator
            raise RuntimeError("cannot cache function 'f': no locator available for file")
        return lambda fn: fn

    monkeypatch.setattr(_mlp_numba, "njit", fake_njit)

    def f() -> int:
        return 1

    assert _mlp_numba._jit(f) is f and calls == [True, False]


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(picks=np.full((2, 3, 2), 5, dtype=np.int64)), "outside the pool"),
        (lambda a: a.update(picks=np.zeros((3, 3, 2), dtype=np.int64)), "picks"),
        (lambda a: a.update(y=np.full(5, 10, dtype=np.int64)), "classes"),
        (lambda a: a.update(xpool=np.zeros((5, 64), dtype=np.float32)), "pool"),
        (lambda a: a.update(live=np.ones(3, dtype=np.float32)), "live"),
        (
            lambda a: a.update(masters=(*a["masters"][:2], np.zeros((2, 10, 5), np.float32),
                                        *a["masters"][3:])),
            "expected",
        ),
    ],
)  # fmt: skip
def test_out_of_bounds_input_is_refused_before_the_unchecked_loop(change, match) -> None:  # type: ignore[no-untyped-def]
    args = _args()
    change(args)
    with pytest.raises(InvalidParameterError, match=match):
        mlp_kernels.sgd(**args)
