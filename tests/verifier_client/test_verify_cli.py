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
        "0.3",
        "--key",
        str(key),
        "--db",
        db,
        # Random seeds here (the CLI draws its own): 20,000 pairs per level make the honest gap
        # ~0.01 +- 0.01 and the halved one ~0.3 +- 0.03 against the threshold 0.15, so neither
        # verdict is left to chance (at 2,000 pairs the halved one passes ~4 % of the time:
        # docs/estimators.md, acceptance rates).
        "--pairs",
        "20000",
        "--json",
        "--no-progress",
    ]
    sessions = []
    for spec, code, verdict in ((None, 0, "accept"), ("scale:0.5", 1, "abort")):
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
                "guarantee",
            ):
                assert k in doc, k
            assert "gap_ci_high_max" in doc["figures"]
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
    shown = json.loads(runner.invoke(app, ["show", sessions[1], "--db", db]).stdout)
    assert shown["reason"] == "estimate_above_threshold"
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
            "0.3",
            "--key",
            str(tmp_path / "none"),
        ],
    )
    assert missing_key.exit_code == 2 and "key file" in missing_key.stderr
