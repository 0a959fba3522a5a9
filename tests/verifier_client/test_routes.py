"""The route chooser (``verify --protocol auto``): the cheapest route that reaches epsilon, said
in words before the Prover trains, and what it says is what the run then spends."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

import verifier_client
from protocol.errors import InvalidParameterError
from protocol.signing import generate_key, save_private_key
from tests.serving import serve_prover
from verifier_client.cli import app
from verifier_client.routes import RouteCost, choose, plan_sentence, spot_trainings
from verifier_client.run import Sizes

runner = CliRunner()
TASK = "planted:n_train=20,n_targets=2"


def _cost(route: str, cost: float, reaches: bool = True, why: str = "") -> RouteCost:
    sizes = None if why else Sizes(0.5, 0.05, 100, 40, "planner (pilot)")
    return RouteCost(route, sizes, cost, 400 if route != "noninteractive" else 0, cost * 0.01,
                     reaches, why=why)  # fmt: skip


def test_the_cheapest_route_that_reaches_epsilon_is_chosen() -> None:
    inter, alone = _cost("interactive", 160), _cost("noninteractive", 800)
    witness = _cost("witness", 4.5)
    assert choose([inter, alone, witness]).route == "witness"
    assert choose([inter, alone, _cost("witness", math.inf, False, "not certifiable")]) is inter
    # a cheaper route cut short of epsilon by a cap loses to one that reaches it
    assert choose([_cost("interactive", 10, reaches=False), alone]) is alone
    # none reaches: interactive (the Prover's trainings, not this machine's, are then cut)
    cut = [_cost("interactive", 10, False), _cost("noninteractive", 9, False)]
    assert choose(cut).route == "interactive"
    # a tie goes to checking alone (no Prover, all of delta on its own values)
    tie = _cost("noninteractive", 160)
    assert choose([inter, tie]) is tie and choose([tie, inter]) is tie
    text = plan_sentence(alone, [inter, alone, witness], forced=False)
    assert text.startswith("route: checking alone: the Prover trains none, this machine trains 800")
    assert "Otherwise: interactive: the Prover trains 400, this machine retrains 160" in text
    assert "witness: the Prover trains 400, this machine checks" in text


@pytest.mark.parametrize(("k", "per_base", "n", "want"),
                         [(40, 4, 100, 40), (41, 4, 100, 44), (1, 4, 100, 4), (10**6, 4, 100, 400),
                          (0, 4, 100, 0)])  # fmt: skip
def test_spot_trainings_are_whole_bases_as_the_session_draws_them(
    k: int, per_base: int, n: int, want: int
) -> None:
    assert spot_trainings(Sizes(1.0, 0.05, n, k, "given"), per_base) == want


def _key(tmp_path: Path) -> Path:
    key = tmp_path / "v.pem"
    save_private_key(generate_key(), key)
    return key


@pytest.mark.parametrize("protocol", ["auto", "interactive", "noninteractive"])
def test_the_plan_said_before_the_prover_trains_is_what_the_run_spends(
    tmp_path: Path, protocol: str
) -> None:
    key = _key(tmp_path)
    with serve_prover(tmp_path / "p", TASK) as url:
        out = runner.invoke(app, [
            "verify", "--prover", url, "--task", TASK, "--epsilon", "0.6", "--budget", "400",
            "--max-prover-trainings", "20000", "--protocol", protocol, "--key", str(key),
            "--db", f"sqlite:///{tmp_path}/v.db", "--seed", "5", "--json",
        ])  # fmt: skip
    assert out.exit_code == 0, (out.stdout[-600:], out.stderr[-600:])
    result = json.loads(out.stdout)
    routes = result["routes"]
    plans = {c["route"]: c for c in routes["routes"]}
    assert set(plans) == {"interactive", "noninteractive", "witness"}
    assert plans["witness"]["unavailable"] == "the task is not certifiable"
    chosen = plans[routes["chosen"]]
    assert routes["forced"] is (protocol != "auto")
    assert result["protocol"] == routes["chosen"]
    if protocol == "auto":  # the cheapest that reaches epsilon
        reaching = [c for c in plans.values() if c["reaches_epsilon"]]
        assert chosen["verifier_training_equivalents"] == min(
            c["verifier_training_equivalents"] for c in reaching
        )
    else:
        assert routes["chosen"] == protocol
    # what was said is what was spent: the pilot plus the route's own trainings
    pilot = result["sizes"]["pilot_trainings"]
    spent = result["local_trainings"] - pilot
    if routes["chosen"] == "noninteractive" and "first_look_trainings" in chosen:
        early = any(n.startswith("checking alone: certified at the first look") for n in
                    result["notes"])  # fmt: skip
        assert spent == (chosen["first_look_trainings"] if early else
                         chosen["worst_case_trainings"])  # fmt: skip
    else:
        assert spent == chosen["verifier_training_equivalents"]
    assert result["prover_trainings"] == chosen["prover_trainings"]
    said = [n for n in result["notes"] if n.startswith("route: ")]
    assert len(said) == 1 and "Otherwise:" in said[0]
    assert ("as asked (--protocol)" in said[0]) is (protocol != "auto")
    assert "route: " in out.stderr  # said on the terminal too, before the Prover trains
    assert result["verdict"] == "accept"


def test_a_forced_witness_route_on_a_task_that_has_none_is_refused_before_the_prover_trains(
    tmp_path: Path,
) -> None:
    key = _key(tmp_path)
    with serve_prover(tmp_path / "p", TASK) as url:
        with pytest.raises(InvalidParameterError, match="not certifiable"):
            verifier_client.verify(url, TASK, 0.6, key=key, db=f"sqlite:///{tmp_path}/v.db",
                                   budget=400, protocol="witness")  # fmt: skip


def test_a_cut_plan_says_the_epsilon_it_can_reach() -> None:
    from verifier_client.run import reachable_epsilon

    def bases_for(eps: float) -> int:  # a width ~ 1 / sqrt(n): n = (2 / eps)^2
        return math.ceil((2.0 / eps) ** 2)

    reach = reachable_epsilon(bases_for, 100, 0.05)  # 100 bases reach eps = 0.2
    assert reach is not None and 0.2 <= reach <= 0.2 * 1.01 and bases_for(reach) <= 100
    assert reachable_epsilon(bases_for, 0, 0.05) is None  # nothing fits


@pytest.mark.parametrize(("p", "cap", "bases"), [(0.5, 1200, 200), (0.1, 10**7, 5000)])
def test_under_clt_the_interactive_route_checks_as_many_bases_as_clt_needs(
    p: float, cap: int, bases: int
) -> None:
    # certify runs clt on the checked bases only at k min(p, 1-p)^2 >= 50 (else the range-priced
    # betting bound): the session's sizes check at least that many whole bases, and say so
    from typing import Any, cast

    from protocol.certificate import default_validity
    from protocol.tasks import load_task
    from verifier_client.run import Options, Run

    task = load_task(TASK)
    opts = Options(task=TASK, epsilon=0.6, p=p, seed=b"5")
    run = Run(cast(Any, None), cast(Any, None), cast(Any, None), opts, "", None)
    sizes = run.sizes(task, task.optimal_datamodel(), cap, trusted=False, quiet=True)
    n = sizes.pairs_per_level
    assert default_validity(p, n) == "clt" and n >= bases
    assert spot_trainings(sizes, 4) == sizes.spot_checks == 4 * bases
    assert "spot-checks raised to" in sizes.source


def test_reach_says_the_smallest_epsilon_within_a_budget_and_verify_keeps_to_it(
    tmp_path: Path,
) -> None:
    """``verify --reach N`` (no epsilon): per route the smallest epsilon whose plan fits in N
    trainings here; verifying at that epsilon plans (and spends) no more than N, and 3 % below
    it the plan does not fit."""
    key, budget = _key(tmp_path), 3000
    db = f"sqlite:///{tmp_path}/v.db"
    with serve_prover(tmp_path / "p", TASK) as url:
        base = ["verify", "--prover", url, "--task", TASK, "--budget", "400", "--key", str(key),
                "--db", db, "--seed", "5", "--max-prover-trainings", "200000"]  # fmt: skip
        out = runner.invoke(app, [*base, "--reach", str(budget), "--json"])
        assert out.exit_code == 0, (out.stdout[-600:], out.stderr[-600:])
        plan = json.loads(out.stdout)
        assert plan["plan_only"] and plan["trainings_here"] == budget
        assert plan["reach"]["witness"] is None  # the planted task is not certifiable
        alone = plan["reach"]["noninteractive"]
        assert alone is not None and alone["verifier_trainings"] <= budget
        assert plan["best"] in ("interactive", "noninteractive")
        text = runner.invoke(app, [*base, "--reach", str(budget)])
        assert text.exit_code == 0 and "Smallest:" in text.stdout, text.stdout[-600:]
        assert verifier_client.run.VerifierStore(db).all() == []  # nothing sent or recorded

        def planned(epsilon: float) -> dict[str, object]:
            done = runner.invoke(app, [*base, "--epsilon", f"{epsilon:.6g}", "--protocol",
                                       "noninteractive", "--json"])  # fmt: skip
            assert done.exit_code in (0, 1), (done.stdout[-600:], done.stderr[-600:])
            result = json.loads(done.stdout)
            plans = {c["route"]: c for c in result["routes"]["routes"]}
            return {"plan": plans["noninteractive"], "spent": result["local_trainings"]}

        at = planned(alone["epsilon"])
        worst = at["plan"].get("worst_case_trainings", at["plan"]["verifier_training_equivalents"])  # type: ignore[union-attr]
        assert worst <= budget and at["spent"] <= budget + plan["pilot_trainings"], at
        below = planned(alone["epsilon"] / 1.03)["plan"]
        assert below.get("worst_case_trainings", below["verifier_training_equivalents"]) > budget  # type: ignore[union-attr]
    for bad in (["--reach", "0"], ["--reach", "100", "--epsilon", "0.5"], []):
        done = runner.invoke(app, [*base, *bad])
        assert done.exit_code == 2 and "Traceback" not in done.output, (bad, done.output[-400:])


def test_given_spot_checks_too_few_for_clt_are_said_before_the_prover_trains(
    tmp_path: Path,
) -> None:
    """Sizes given by hand skip the planner's raise: 10 checked bases of 250 under clt make the
    checked bases' bounds pay the range, and verify says so (with the count to give) first."""
    key = _key(tmp_path)
    with serve_prover(tmp_path / "p", TASK) as url:
        result = verifier_client.verify(url, TASK, 0.6, key=key, db=f"sqlite:///{tmp_path}/v.db",
                                        budget=400, pairs_per_level=250, spot_checks=40,
                                        protocol="interactive", poll_s=0.02)  # fmt: skip
    said = [n for n in result["notes"] if n.startswith("only 10 of the 250 bases")]
    assert len(said) == 1 and "--spot-checks 800 or more" in said[0], result["notes"]
    assert result["certificate"]["validity"] == "clt"
