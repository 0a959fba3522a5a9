"""The executor interface without Ray: the local executor is run_task, Ray stays unimported
(Verifier, ``--help``, the local executor), a missing Ray is one clear error, and an
attribution job resumes from the chunks it kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
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
from prover_service.ledger import JobLedger
from prover_service.service import ProverService
from prover_service.training import draw_training_set
from tests.prover_service.conftest import make_settings

TASK = "planted:n_train=20,n_targets=2"


class Killed(BaseException):
    """A simulated SIGKILL: escapes the job lane's ``except Exception``."""


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


def test_attribution_job_resumes_from_its_kept_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped after its first chunk, an attribution job re-trains only the other two on restart
    and publishes the same datamodel as an uninterrupted run."""
    (tmp_path / "ref").mkdir()
    (tmp_path / "live").mkdir()
    ref = ProverService(make_settings(tmp_path / "ref", tasks=[TASK]))
    task_hash = next(iter(ref.tasks))
    want = ref.attributions.submit(task_hash, "ridge", 3000, 0.5, "")  # 3 chunks of 1024
    ref.run_pending()
    assert ref.job(want.id).status == "done"

    live = tmp_path / "live"
    first = ProverService(make_settings(live, tasks=[TASK]))
    job = first.attributions.submit(task_hash, "ridge", 3000, 0.5, "")
    put = JobLedger.put

    def put_then_die(self: JobLedger, start: int, stop: int, out: Any) -> None:
        put(self, start, stop, out)
        raise Killed  # the process dies here: nothing else is written

    monkeypatch.setattr(JobLedger, "put", put_then_die)
    with pytest.raises(Killed):
        first.run_pending()
    assert first.job(job.id).status == "running"
    monkeypatch.setattr(JobLedger, "put", put)

    trained: list[int] = []
    run_chunks = LocalExecutor.map_chunks
    monkeypatch.setattr(LocalExecutor, "map_chunks",
                        lambda self, t, chunks, cb: (trained.extend(c.start for c in chunks),
                                                     run_chunks(self, t, chunks, cb)))  # fmt: skip
    second = ProverService(make_settings(live, tasks=[TASK]))
    second.run_pending()
    done = second.job(job.id)
    assert done.status == "done" and done.result == ref.job(want.id).result
    assert trained == [1024, 2048]
