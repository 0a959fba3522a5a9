"""``verify``, ``history``, ``show`` and ``audit`` as a user runs them: exit codes and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from protocol.signing import generate_key, save_private_key
from tests.e2e.test_end_to_end import TASK, prover
from verifier_client.cli import app

runner = CliRunner()


def test_verify_accept_abort_and_error_exit_codes(tmp_path: Path) -> None:
    key = tmp_path / "v.pem"
    save_private_key(generate_key(), key)
    db = f"sqlite:///{tmp_path}/v.db"
    common = [
        "--task",
        TASK,
        "--epsilon",
        "0.6",
        "--key",
        str(key),
        "--db",
        db,
        # Random secrets here (the CLI draws its own), sizes from the planner. The honest err is
        # ~0.01 (certified well below 0.6); paying nothing (scale:0) has err 1.25 = 2 epsilon.
        "--max-prover-trainings",
        "20000",
        "--protocol",
        "interactive",  # a session with the Prover to audit (auto may check alone)
        "--json",
        "--no-progress",
    ]
    sessions = []
    for spec, code, verdict in ((None, 0, "accept"), ("scale:0", 1, "abort")):
        with prover(tmp_path / (spec or "honest"), spec) as url:
            result = runner.invoke(app, ["verify", "--prover", url, *common])
            assert result.exit_code == code, (result.stdout[-600:], result.stderr)
            doc = json.loads(result.stdout)
            assert doc["verdict"] == verdict
            for k in (
                "session",
                "reason",
                "figures",
                "prover_trainings",
                "local_trainings",
                "times",
                "epsilon",
                "delta",
                "certified_epsilon",
                "aggregate",
                "certificate",
            ):
                assert k in doc, k
            parts = ("point", "statistical", "corruption", "tau_slack", "bias")
            total = sum(doc["certificate"][p] for p in parts)
            assert abs(total - doc["certified_epsilon"]) < 1e-9 * max(1.0, abs(total))
            assert doc["epsilon"] == 0.6 and doc["delta"] == 0.05 and doc["aggregate"] == "mean"
            sessions.append(doc["session"])
            audited = runner.invoke(
                app,
                [
                    "audit",
                    doc["session"],
                    "--prover",
                    url,
                    "--task",
                    TASK,
                    "--key",
                    str(key),
                    "--json",
                ],
            )
            assert audited.exit_code == 0 and json.loads(audited.stdout)["ok"]
    history = json.loads(runner.invoke(app, ["history", "--db", db, "--json"]).stdout)
    assert [h["session"] for h in history] == sessions
    shown = json.loads(runner.invoke(app, ["show", sessions[1], "--db", db, "--json"]).stdout)
    assert shown["reason"] == "not_certified"
    refused = runner.invoke(app, ["verify", "--prover", "http://127.0.0.1:9", *common])
    assert refused.exit_code == 2 and "ConnectError" in refused.stderr
    missing_key = runner.invoke(
        app,
        [
            "verify",
            "--prover",
            "http://x",
            "--task",
            TASK,
            "--epsilon",
            "0.6",
            "--key",
            str(tmp_path / "none"),
        ],
    )
    assert missing_key.exit_code == 2 and "key file" in missing_key.stderr


def test_epsilon_in_percent_and_bad_options_are_refused_before_any_traffic(tmp_path: Path) -> None:
    key = tmp_path / "v.pem"
    save_private_key(generate_key(), key)
    base = ["verify", "--prover", "http://127.0.0.1:9", "--task", TASK, "--key", str(key)]
    for eps, message in (("x%", "number or a percentage"), ("150%", "below 100 %"),
                         ("-1", "epsilon > 0")):  # fmt: skip
        out = runner.invoke(app, [*base, "--epsilon", eps])
        assert out.exit_code == 2 and message in out.stderr, out.stderr
    bad = runner.invoke(app, [*base, "--epsilon", "5%", "--aggregate", "median"])
    assert bad.exit_code == 2 and "unknown aggregate" in bad.stderr


def test_the_summary_says_what_was_certified() -> None:
    from verifier_client.report import summary_lines

    cert = {"certified_epsilon": 0.11, "aggregate": "mean", "delta": 0.05, "point": 0.07,
            "statistical": 0.006, "corruption": 0.025, "tau_slack": 0.0, "bias": 0.009,
            "max_corrupted": 34}  # fmt: skip
    result = {"verdict": "accept", "reason": "certified", "certificate": cert, "epsilon": 0.25,
              "epsilon_absolute": 0.25, "sizes": {"variance_lower_bound": 0.8,
              "predicted_width": 0.05}, "session": "s", "prover_trainings": 12000,
              "local_trainings": 1300, "detail": ""}  # fmt: skip
    lines = summary_lines(result)
    assert lines[0] == (
        "ACCEPT: certified, the attribution's mean err over the targets is at most 0.11 "
        "(you asked <= 0.25), at 95 % confidence"
    )
    assert "corruption 0.025" in lines[1] and "estimate 0.07" in lines[1]
    assert any("err (the 'gap')" in line for line in lines)
    assert "trainings: Prover 12,000 for the challenge, this machine 1,300" in lines[-2]
    assert lines[-1] == "  session s"
    aborted = summary_lines(result | {"verdict": "abort", "reason": "not_certified",
                                      "relative": True, "epsilon": 0.05})  # fmt: skip
    assert aborted[0].startswith("ABORT (not_certified): the attribution's mean err over the")
    assert "above the 5 % of Var f = 0.25 you asked" in aborted[0]
    assert not any("{" in line for line in lines + aborted)  # never a dict repr
