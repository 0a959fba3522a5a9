"""``from verifier_client import verify`` and the command line a first user runs: the same
certificate from both, progress without a terminal, a reused attribution said out loud, full
ids in ``history`` and ``show`` by prefix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import verifier_client
from protocol.errors import InvalidParameterError
from protocol.signing import generate_key, save_private_key
from tests.serving import serve_prover
from verifier_client.cli import app
from verifier_client.store import Record, VerifierStore

runner = CliRunner()
TASK = "planted:n_train=20,n_targets=2"
# planted N = 20: an honest ridge attribution with 400 trainings has err ~0.01, certified well
# below 0.6 at planner sizes (tests/e2e/test_end_to_end.py).
COMMON = ["--task", TASK, "--epsilon", "0.6", "--budget", "400",
          "--max-prover-trainings", "20000"]  # fmt: skip
# What --seed fixes: the design (pilot, subsets, training seeds), so the sizes and trainings.
# The spot-checked bases stay secret and random (issue 21), and since the certificate includes
# the checked bases' own bound, it differs run to run; both must still accept.
FIGURES = ("verdict", "reason", "sizes", "prover_trainings", "local_trainings")


def _key(tmp_path: Path) -> Path:
    key = tmp_path / "v.pem"
    save_private_key(generate_key(), key)
    return key


def test_the_public_api_is_sorted_and_importable() -> None:
    assert verifier_client.__all__ == sorted(verifier_client.__all__)
    for name in verifier_client.__all__:
        assert getattr(verifier_client, name).__doc__, name
    from verifier_client import verify

    assert verify is verifier_client.api.verify


def test_api_and_cli_give_the_same_certificate_for_the_same_seed(tmp_path: Path) -> None:
    key = _key(tmp_path)
    with serve_prover(tmp_path / "p1", TASK) as url:
        db = f"sqlite:///{tmp_path}/cli.db"
        args = ["verify", "--prover", url, *COMMON, "--key", str(key), "--db", db, "--seed", "7"]
        out = runner.invoke(app, [*args, "--json"])
        assert out.exit_code == 0, (out.stdout[-500:], out.stderr[-500:])
        cli = json.loads(out.stdout)
    with serve_prover(tmp_path / "p2", TASK) as url:  # a second, identical Prover
        api = verifier_client.verify(
            url, TASK, 0.6, key=key, db=f"sqlite:///{tmp_path}/api.db", seed=7, budget=400,
            max_prover_trainings=20000,
        )  # fmt: skip
    assert api["verdict"] == "accept"
    for name in FIGURES:
        assert api[name] == cli[name], name
    # the same challenge design
    assert api["certificate"]["n_subsets"] == cli["certificate"]["n_subsets"]
    assert api["certified_epsilon"] <= 0.6 and cli["certified_epsilon"] <= 0.6
    with pytest.raises(InvalidParameterError, match="unexpected keyword"):
        verifier_client.verify(url, TASK, 0.6, key=key, pairs=3)


def test_verify_reports_progress_without_a_terminal_and_reused_attributions(
    tmp_path: Path,
) -> None:
    key = _key(tmp_path)
    db = f"sqlite:///{tmp_path}/v.db"
    with serve_prover(tmp_path / "p", TASK) as url:
        # the interactive route: sessions with the Prover to list (auto may check alone)
        base = ["verify", "--prover", url, "--key", str(key), "--db", db, "--protocol",
                "interactive"]  # fmt: skip
        first = runner.invoke(app, [*base, *COMMON])
        assert first.exit_code == 0, first.stderr[-800:]
        # CliRunner's stderr is no terminal: one line per phase start, not a live bar
        for phase in ("attribution (Prover training)", "pilot (training here)",
                      "challenge (Prover training)", "spot-checks (training here)",
                      "certificate"):  # fmt: skip
            assert f"] {phase}" in first.stderr, phase
        summary = first.stdout
        assert summary.startswith("ACCEPT: certified, the attribution's mean err")
        assert "err (the 'gap')" in summary and "{'" not in summary  # words, not a dict repr
        assert "existing attribution" not in first.stderr
        # A second verify with another budget reuses the Prover's attribution and says so
        again = runner.invoke(app, [*base, *COMMON[:-4], "--budget", "800", "--json"])
        assert again.exit_code == 0
        note = "verifying the Prover's existing attribution"
        assert note in again.stderr and "(ridge, 400 trainings)" in again.stderr
        reused = json.loads(again.stdout)
        assert reused["attribution"]["trainings"] == 400 and not reused["attribution"]["new"]
        assert any(note in n for n in reused["notes"])
        # --attribution new asks for one with the budget given
        new = runner.invoke(app, [*base, *COMMON[:-4], "--budget", "800", "--attribution",
                                  "new", "--json"])  # fmt: skip
        assert new.exit_code == 0 and note not in new.stderr
        fresh = json.loads(new.stdout)
        assert fresh["attribution"]["trainings"] == 800 and fresh["attribution"]["new"]
        assert fresh["attribution"]["hash"] != reused["attribution"]["hash"]
    # history: whole ids, whatever the width; show: by a unique prefix
    listed = runner.invoke(app, ["history", "--db", db], env={"COLUMNS": "60"})
    sessions = [r.prover_session for r in VerifierStore(db).all()]
    assert len(sessions) == 3
    for sid in sessions:
        assert sid and sid in listed.stdout
    shown = runner.invoke(app, ["show", sessions[0][:10], "--db", db, "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["session"] == sessions[0]


def test_history_table_keeps_whole_ids_on_a_narrow_terminal(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/v.db"
    store = VerifierStore(db)
    ids = ["abc" + "0" * 28 + "1", "abc" + "0" * 28 + "2", "f" * 32]
    for rid in ids:
        store.add(Record(id=rid, prover_url="u", prover_key="k", task_hash="t", task_ref="t",
                         attribution_hash="a", protocol="interactive", estimator="gap",
                         challenge_json="{}", secret_json="{}"))  # fmt: skip
    table = runner.invoke(app, ["history", "--db", db],
                          env={"FORCE_COLOR": "1", "COLUMNS": "80", "NO_COLOR": ""})  # fmt: skip
    assert table.exit_code == 0 and "┃" in table.stdout  # the table, not the plain lines
    for rid in ids:
        assert rid in table.stdout
    ambiguous = runner.invoke(app, ["show", "abc", "--db", db])
    assert ambiguous.exit_code == 2
    assert "starts 2 session ids" in ambiguous.stderr
    assert len(ambiguous.stderr.strip().splitlines()) == 1
    shown = runner.invoke(app, ["show", "f", "--db", db, "--json"])
    assert json.loads(shown.stdout)["record"] == ids[2]
    missing = runner.invoke(app, ["show", "0", "--db", db])
    assert missing.exit_code == 2 and "no recorded verification" in missing.stderr
