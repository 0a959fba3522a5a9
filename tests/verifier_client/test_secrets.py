"""A chosen seed fixes the design, never a secret (issue 21, item 15).

``verify --seed 4242`` used to derive the nonce, the salt and the spot-checks from the seed:
the Prover, which sees the challenge, tried small integers until one gave the nonce, and then
knew which subsets would be checked before answering. Here the Prover's side of that attack
runs against two seeded verifications: it recovers the seed from the design (allowed: E is
public in the challenge anyway), and that seed gives neither the nonce, nor the salt, nor the
spot-check set.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protocol.errors import InvalidParameterError
from protocol.messages import Challenge
from protocol.sampling import seed_from_text
from protocol.signing import SignedMessage, generate_key
from tests.verifier_client import test_failure_kinds as fk
from verifier_client.api import verify
from verifier_client.cli import app

world = fk.world  # the honest Prover of the failure-kinds tests


def _derived(seed: bytes, label: str, n: int) -> bytes:
    return hashlib.sha256(seed + label.encode()).digest()[:n]


def test_a_chosen_seed_fixes_the_design_and_gives_no_secret_away(world: fk.World) -> None:
    seed = seed_from_text("4242")
    runs = [world.verify(seed=seed, pairs_per_level=8, spot_checks=6) for _ in range(2)]
    assert all(r["status"] == "decided" for r in runs)
    rows = world.store.all()
    challenges = [
        Challenge.model_validate(SignedMessage.model_validate_json(r.challenge_json).payload)
        for r in rows
    ]
    secrets = [json.loads(r.secret_json) for r in rows]
    # the design is repeatable: the same subsets E (a repeatable run's figures) ...
    assert challenges[0].challenge_seed == challenges[1].challenge_seed
    # ... and the secrets are not: fresh nonce, salt and commitment each time
    assert challenges[0].nonce != challenges[1].nonce
    assert secrets[0]["salt"] != secrets[1]["salt"]
    assert challenges[0].spot_check_commitment != challenges[1].spot_check_commitment
    # the Prover's attack: find the seed from what the challenge shows (it can) ...
    found = [
        s for s in (seed_from_text(str(i)) for i in range(10_000))
        if _derived(s, "challenge", 32).hex() == challenges[0].challenge_seed
    ]  # fmt: skip
    assert found == [seed]
    # ... and with it derive the secrets as main did: none of them is the one used
    n_subsets = len(challenges[0].design(20))
    for challenge, secret in zip(challenges, secrets, strict=True):
        assert _derived(seed, "nonce", 16).hex() != challenge.nonce
        assert _derived(seed, "salt", 32).hex() != secret["salt"]
        guess = sorted(random.Random(_derived(seed, "spots", 16)).sample(range(n_subsets), 6))  # noqa: S311
        assert guess != secret["spot_checks"]


def test_secrets_from_a_seed_are_for_tests_only(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="tests only"):
        verify("http://127.0.0.1:9", "planted", 0.5, key=generate_key(),
               db=f"sqlite:///{tmp_path}/v.db", secrets_seed=b"x")  # fmt: skip
    args = ["verify", "--prover", "http://127.0.0.1:9", "--task", "planted", "--epsilon", "0.5",
            "--secrets-seed", "1"]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2 and "No such option" in out.output
    assert not (tmp_path / "v.db").exists()
