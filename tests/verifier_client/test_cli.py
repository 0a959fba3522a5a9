"""The Verifier's first commands: ``residual`` and ``plan``, their JSON and their errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from verifier_client.cli import app

runner = CliRunner()


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_residual_json_has_the_relied_on_keys_and_covers_truth() -> None:
    code, out, _ = _run(
        "residual", "--task", "planted:n_train=30,n_targets=2", "--budget", "30000",
        "--seed", "3", "--json", "--no-progress",
    )  # fmt: skip
    assert code == 0
    doc = json.loads(out)
    assert {"task", "budget", "p", "targets"} <= set(doc)
    assert doc["task"] == "planted" and doc["budget"] == 30000 and doc["p"] == 0.5
    assert doc["calls"] == 30000
    assert len(doc["targets"]) == 2
    for z, row in enumerate(doc["targets"]):
        assert row["index"] == z
        assert {"b0", "b1", "residual", "variance", "ci_low", "ci_high"} <= set(row)
        assert row["ci_low"] <= row["residual"] <= row["ci_high"]
        # With this fixed seed the 95 % interval holds the exact value (it would in 95 % of seeds).
        assert row["ci_low"] <= row["exact"]["residual"] <= row["ci_high"]


def test_residual_is_reproducible_from_its_seed() -> None:
    args = ("residual", "--task", "planted:n_train=10", "--budget", "600", "--seed", "9", "--json")
    first, second = json.loads(_run(*args)[1]), json.loads(_run(*args)[1])
    first.pop("seconds"), second.pop("seconds")
    assert first == second


def test_plan_json_lists_both_estimators_and_protocols() -> None:
    code, out, _ = _run("plan", "--task", "planted:bound=4", "--epsilon", "0.5", "--json")
    assert code == 0
    doc = json.loads(out)
    for est in ("residual", "gap"):
        pl = doc["plans"][est]
        assert pl["pairs_per_level"] > 0 and pl["spot_checks"] > 0
        assert set(pl["verifier_trainings"]) == {"interactive", "noninteractive", "prover"}
        assert pl["paper_orders"]["pairs"] > 0
    assert doc["plans"]["gap"]["fresh_samples"] == 0


def test_plan_with_a_pilot_uses_bernstein() -> None:
    code, out, _ = _run(
        "plan", "--task", "planted:n_train=8,bound=3", "--epsilon", "0.5", "--pilot", "600",
        "--seed", "1", "--json",
    )  # fmt: skip
    assert code == 0
    pl = json.loads(out)["plans"]["residual"]
    assert "Bernstein" in pl["sources"]["pairs_per_level"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("residual", "--task", "nosuch", "--budget", "60"), "unknown task"),
        (("residual", "--task", "planted", "--budget", "5"), "at least 6"),
        (("residual", "--task", "planted", "--budget", "60", "--p", "1.5"), "open interval"),
        (("residual", "--task", "planted", "--budget", "60", "--rho0", "0.9"), "rho0"),
        (("residual", "--task", "planted", "--budget", "60", "--seed", "x"), "--seed"),
        (("plan", "--task", "planted", "--epsilon", "0"), "epsilon"),
        (("plan", "--task", "planted", "--epsilon", "0.5", "--delta", "2"), "delta"),
        (("plan", "--task", "planted", "--epsilon", "0.5", "--tau", "0.5"), "tau"),
    ],
)
def test_bad_input_gives_one_clear_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    code, out, err = _run(*args)
    assert code == 2
    assert message in err
    assert "Traceback" not in out + err


def test_module_entry_point_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "verifier_client", "plan", "--task", "planted:bound=4",
         "--epsilon", "1", "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["task"] == "planted"
