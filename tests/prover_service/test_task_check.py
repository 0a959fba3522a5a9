"""check-task: what it measures, what it advises, its exit code; serve's start-up check (in
the background: /v1/info at once, work refused until the check passes)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from protocol.signing import generate_key, save_private_key
from prover_service.app import create_app
from prover_service.cli import app
from prover_service.errors import TaskUnavailable
from prover_service.settings import Settings
from prover_service.task_check import check_task, quick_check, recommend_tau

FIXTURE = Path(__file__).parents[1] / "fixtures" / "rounding_task.py"
FALSE_CLAIM = f"{FIXTURE}:claims_bitwise"
DECLARED = f"{FIXTURE}:declares_tau"
WINE = f"{Path(__file__).parents[2] / 'examples' / 'wine_mlp.py'}:make_task"


def test_recommended_tau_is_ten_times_the_largest_difference_rounded_up() -> None:
    assert recommend_tau(0.0) == 0.0
    assert recommend_tau(8.9e-16) == pytest.approx(9e-15)
    assert recommend_tau(1.47e-13) == pytest.approx(2e-12)
    assert recommend_tau(5e-5) == pytest.approx(5e-4)


def test_an_exact_task_is_bitwise_in_every_variant_including_other_processes() -> None:
    report = check_task("planted:n_train=30,n_targets=2", rows=6)
    assert report.bitwise and report.ok and report.recommended_tau == 0.0
    assert {"alone", "positions", "chunks of 1", "2 threads", "baseline instruction set"} <= set(
        report.identical
    )
    assert "ATEN_CPU_CAPABILITY=default" in report.device_classes["baseline instruction set"]


def test_a_false_bitwise_claim_is_measured_and_refused() -> None:
    report = check_task(FALSE_CLAIM, rows=8, processes=False)
    assert not report.bitwise and not report.ok
    assert 0 < report.largest < 1e-13  # rounding level
    assert report.recommended_tau >= 10 * report.largest
    assert "does NOT hold" in report.advice() and "Declare tau" in report.advice()
    fixed = check_task(DECLARED, rows=8, processes=False)
    assert fixed.ok and not fixed.bitwise and fixed.declared_tau == 1e-12


def test_check_task_command_exit_codes() -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["check-task", "--task", FALSE_CLAIM, "--rows", "6",
                              "--no-processes", "--json"])  # fmt: skip
    assert bad.exit_code == 1, bad.output
    assert '"ok": false' in bad.output and '"recommended_tau"' in bad.output
    good = runner.invoke(app, ["check-task", "--task", DECLARED, "--rows", "6", "--no-processes"])
    assert good.exit_code == 0, good.output
    assert "holds" in good.output
    missing = runner.invoke(app, ["check-task", "--task", "no-such-task"])
    assert missing.exit_code == 2 and "unknown task" in missing.output


def test_serve_refuses_a_task_that_breaks_its_declaration(tmp_path: Path) -> None:
    save_private_key(generate_key(), tmp_path / "p.pem", overwrite=True)

    def settings(task: str, check: bool = True) -> Settings:
        return Settings(db=f"sqlite:///{tmp_path}/p.db", key_file=tmp_path / "p.pem",
                        tasks=[task], check_tasks=check, run_worker=False)  # fmt: skip

    liar = create_app(settings(FALSE_CLAIM)).state.service
    assert liar.checks.wait(timeout=600)
    (task_hash,) = liar.tasks
    with pytest.raises(TaskUnavailable, match="refusing to serve.*Declare tau") as refused:
        liar.task(task_hash)
    assert refused.value.code == "task_refused" and refused.value.retry_after is None
    honest = create_app(settings(DECLARED)).state.service  # an honest declaration is served
    assert honest.checks.wait(timeout=600)
    honest.task(next(iter(honest.tasks)))
    skipped = create_app(settings(FALSE_CLAIM, check=False)).state.service  # operator's choice
    skipped.task(next(iter(skipped.tasks)))


def test_serve_answers_info_during_the_start_up_check_and_refuses_work_until_it_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    import prover_service.task_check as task_check

    release, started = threading.Event(), threading.Event()

    def slow_check(task: Any, rows: int = 4) -> Any:
        started.set()
        assert release.wait(timeout=600)
        return quick_check(task, rows)

    monkeypatch.setattr(task_check, "quick_check", slow_check)
    save_private_key(generate_key(), tmp_path / "p.pem", overwrite=True)
    config = Settings(db=f"sqlite:///{tmp_path}/p.db", key_file=tmp_path / "p.pem",
                      tasks=[DECLARED], run_worker=False)  # fmt: skip
    app = create_app(config)
    svc = app.state.service
    with TestClient(app) as http:  # the app's start-up starts the check
        assert started.wait(timeout=600)
        info = http.get("/v1/info")
        assert info.status_code == 200 and len(info.json()["tasks"]) == 1
        task_hash = info.json()["tasks"][0]["task_hash"]
        with pytest.raises(TaskUnavailable) as busy:
            svc.task(task_hash)
        assert busy.value.status == 503 and busy.value.code == "task_not_ready"
        assert busy.value.retry_after == task_check.StartupChecks.RETRY_AFTER_S
        release.set()
        assert svc.checks.wait(timeout=600)
        assert svc.task(task_hash) is svc.tasks[task_hash]


def test_the_example_task_keeps_its_declared_tau() -> None:
    from protocol.tasks import load_task

    task = load_task(WINE)
    report = quick_check(task, rows=3)
    assert report.ok, report.advice()
    assert task.n_train == 128 and task.n_targets == 50 and task.tau == 1e-4


@pytest.mark.parametrize("ref", ["digits-logreg", "digits-logreg:dtype=float32"])
def test_both_logreg_precisions_keep_their_declared_tau(ref: str) -> None:
    # float32 once broke its tau (2.2e-3 > 1e-3) when the gradient was a difference of GEMMs.
    from protocol.tasks import load_task

    report = quick_check(load_task(ref), rows=4)
    assert report.ok, report.advice()
