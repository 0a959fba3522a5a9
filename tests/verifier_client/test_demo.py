"""``make demo`` end to end at small sizes: two real Prover processes on digits, the honest one
certified and the cheat aborted, both audited, and the output a buyer reads."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from verifier_client.demo import run_demo


@pytest.mark.slow
def test_the_demo_accepts_the_honest_prover_aborts_the_cheat_and_says_why(tmp_path: Path) -> None:
    out = io.StringIO()
    # Small sizes: ridge with 200 trainings has mean err ~0.5 on digits-logreg, so epsilon = 3
    # (the halved attribution's err is ~9: aborted at any size). 800 trainings = 200 bases, the
    # fewest at which clt is allowed at p = 1/2 (below, the betting bound is far wider).
    results = run_demo(Console(file=out, width=100), budget=200, epsilon=3.0,
                       keep=tmp_path / "keep", max_prover_trainings=800)  # fmt: skip
    honest, cheat = results["honest"], results["cheating"]
    assert honest["verdict"] == "accept" and honest["certified_epsilon"] <= 3.0
    assert cheat["verdict"] == "abort" and cheat["reason"] == "not_certified"
    assert cheat["certified_epsilon"] > 3.0 and cheat["prover_trainings"] <= 800
    # the route: interactive (as the demo asks, so both transcripts are audited), said with
    # the others' costs before the Prover trains; the honest Verifier trains no more than
    # checking alone would have (at p = 1/2 they tie: clt on the checked bases needs 200)
    plans = {c["route"]: c for c in honest["routes"]["routes"]}
    assert honest["protocol"] == honest["routes"]["chosen"] == "interactive"
    alone = (
        honest["sizes"]["pilot_trainings"]
        + plans["noninteractive"]["verifier_training_equivalents"]
    )
    assert honest["local_trainings"] <= alone
    assert honest["audit"]["ok"]
    # the cheat's inflated spread puts the interactive plan past the cap: it is checked alone
    # (no transcript to audit) or, where that cannot reach epsilon either, interactively
    assert cheat["protocol"] in ("interactive", "noninteractive")
    assert cheat["audit"] is None if cheat["protocol"] == "noninteractive" else cheat["audit"]["ok"]
    text = out.getvalue()
    assert "epsilon = 3 (mean err over the targets)" in text
    assert "honest Prover: ACCEPT: certified, the attribution's mean err" in text
    assert "cheating Prover: ABORT (not_certified)" in text
    assert "err (the 'gap')" in text and "threshold: accept iff" in text
    assert "time, Prover" in text and "time, Verifier" in text and "CPU time: Provers" in text
    assert "{'" not in text  # no dict repr
    assert (
        "route: interactive: the Prover trains 800" in text and "Otherwise: checking alone" in text
    )
    assert "checking alone would have trained" in text
    assert (tmp_path / "keep" / "honest.log").exists()  # --keep keeps the Provers' logs
