"""The executor interface without Ray: the local executor is run_task, Ray stays unimported
(Verifier, ``--help``, the local executor), and a missing Ray is one clear error."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from typer.testing import CliRunner

from protocol.evaluation import run_task
from protocol.tasks import load_task
from prover_service import executor as executor_module
from prover_service.cli import app
from prover_service.executor import (
    Chunk,
    ExecutorUnavailable,
    LocalExecutor,
    current_executor,
    make_executor,
    use_executor,
)
from prover_service.training import draw_training_set

TASK = "planted:n_train=20,n_targets=2"


def test_local_executor_is_run_task_and_map_chunks_in_order() -> None:
    task = load_task(TASK)
    masks, seeds = draw_training_set(task, 2500, bytes(32), 0.5)
    want = run_task(task, masks, seeds)
    got = LocalExecutor().run(task, masks, seeds)
    assert got.values.tobytes() == want.values.tobytes()
    seen: list[int] = []
    chunks = [Chunk(a, a + 500, masks[a : a + 500], seeds[a : a + 500]) for a in (0, 500, 1000)]
    LocalExecutor().map_chunks(task, chunks, lambda c, out: seen.append(c.start))
    assert seen == [0, 500, 1000]


def test_use_executor_scopes_the_current_one() -> None:
    assert isinstance(current_executor(), LocalExecutor)
    mine = LocalExecutor()
    with use_executor(mine):
        assert current_executor() is mine
    assert current_executor() is not mine


def test_missing_ray_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_module, "ray_available", lambda: False)
    with pytest.raises(ExecutorUnavailable, match=r"pip install \.\[ray\]"):
        make_executor("ray")
    with pytest.raises(ExecutorUnavailable, match="unknown executor"):
        make_executor("slurm")
    result = CliRunner().invoke(
        app, ["train", "--task", TASK, "--count", "4", "--out", "x.npz", "--executor", "ray"]
    )
    assert result.exit_code == 2 and "pip install .[ray]" in result.output


def test_verifier_help_and_local_executor_never_import_ray() -> None:
    code = (
        "import sys, numpy as np\n"
        "import verifier_client.cli, prover_service.cli, prover_service.service\n"
        "from prover_service.executor import make_executor\n"
        "from protocol.tasks import load_task\n"
        f"t = load_task({TASK!r})\n"
        "make_executor('local').run(t, np.ones((3, 20), bool), np.arange(3, dtype=np.uint64))\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    helped: Any = subprocess.run(
        [sys.executable, "-c", "import sys; from prover_service.cli import app\n"
         "sys.argv = ['vda-prover', 'serve', '--help']\ntry:\n    app()\nexcept SystemExit:\n"
         "    pass\nassert 'ray' not in sys.modules, 'ray was imported'"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert helped.returncode == 0, helped.stderr
    assert "--executor" in helped.stdout and "--ray-address" in helped.stdout
