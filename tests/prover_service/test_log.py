"""The Prover's transparency log: every signed message it stores is a leaf, written in the same
transaction; heads are signed; every inclusion and consistency proof it serves verifies, and a
log with a removed or altered entry fails both."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import delete, update

from protocol.messages import Verdict
from protocol.signing import SignedMessage, generate_key, open_signed, sign_message
from protocol.tasks import load_task
from protocol.transparency import (
    LogProofError,
    TreeHead,
    leaf_hash,
    log_entry,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from prover_service.tables import LogLeafRow, LogNodeRow, LogStateRow
from tests.prover_service.conftest import SALT, SPOT, Prover, SignedAuth, signed_challenge

BOUND = load_task("planted:n_train=20,n_targets=2").bound


def _head(prover: Prover) -> TreeHead:
    signed = SignedMessage.model_validate(prover.client.get("/v1/log/head").json())
    return open_signed(signed, TreeHead, signer=prover.service.public_key)


def _leaf(signed: SignedMessage) -> str:
    return leaf_hash(log_entry(signed)).hex()


def _check_inclusion(prover: Prover, signed: SignedMessage, head: TreeHead) -> dict[str, Any]:
    got = prover.client.get(f"/v1/log/inclusion?leaf={_leaf(signed)}&size={head.size}")
    assert got.status_code == 200, got.text
    doc = got.json()
    proof = [bytes.fromhex(p) for p in doc["proof"]]
    verify_inclusion(bytes.fromhex(_leaf(signed)), doc["index"], head.size, proof,
                     bytes.fromhex(head.root_hash))  # fmt: skip
    return doc  # type: ignore[no-any-return]


def _check_consistency(prover: Prover, a: TreeHead, b: TreeHead) -> None:
    doc = prover.client.get(f"/v1/log/consistency?first={a.size}&second={b.size}").json()
    verify_consistency(a.size, b.size, bytes.fromhex(a.root_hash), bytes.fromhex(b.root_hash),
                       [bytes.fromhex(p) for p in doc["proof"]])  # fmt: skip


def _session(prover: Prover, attribution: str, verdict: str = "accept") -> list[SignedMessage]:
    """Challenge, response and verdict of one session, all through the API."""
    vkey = generate_key()
    challenge = signed_challenge(vkey, prover.task_hash, attribution, BOUND)
    sid = prover.client.post("/v1/challenges", json=challenge.model_dump()).json()["session_id"]
    prover.service.run_pending()
    response = SignedMessage.model_validate(
        prover.client.get(f"/v1/sessions/{sid}/response", auth=SignedAuth(vkey)).json()
    )
    v = sign_message(vkey, Verdict(session_id=sid, challenge_digest=challenge.digest,
                                   response_digest=response.digest, verdict=verdict,
                                   reason="passed" if verdict == "accept" else "not_certified",
                                   figures={}, spot_check_indices=tuple(SPOT), salt=SALT.hex(),
                                   timestamp=int(time.time())))  # fmt: skip
    posted = prover.client.post(f"/v1/sessions/{sid}/verdict", json=v.model_dump())
    assert posted.status_code == 200, posted.text
    again = prover.client.post(f"/v1/sessions/{sid}/verdict", json=v.model_dump())
    assert again.status_code == 200  # an idempotent re-post is not logged twice
    return [challenge, response, v]


def test_every_message_is_logged_and_every_proof_verifies(prover: Prover) -> None:
    heads = [_head(prover)]
    assert heads[0].size == 0
    content = prover.publish()
    manifest = SignedMessage.model_validate(
        prover.client.get(f"/v1/attributions/{content}").json()["manifest"]
    )
    messages = [manifest]
    heads.append(_head(prover))
    for verdict in ("accept", "abort", "accept"):
        messages += _session(prover, content, verdict)
        heads.append(_head(prover))
    assert [h.size for h in heads] == [0, 1, 4, 7, 10]
    kinds = [r.kind for r in prover.service.log.entries()]
    assert kinds == ["attribution.v1"] + ["challenge.v1", "response.v1", "verdict.v1"] * 3
    for head in heads:
        for n, signed in enumerate(messages[: head.size]):
            assert _check_inclusion(prover, signed, head)["index"] == n
    for a in heads:
        for b in heads:
            if a.size <= b.size:
                _check_consistency(prover, a, b)
    # a leaf appended later is not in an earlier tree; a size past the log has no tree: 404
    late = prover.client.get(f"/v1/log/inclusion?leaf={_leaf(messages[-1])}&size=3")
    assert late.status_code == 404 and late.json()["code"] == "not_found"
    assert prover.client.get("/v1/log/consistency?first=3&second=99").status_code == 404
    assert prover.client.get("/v1/log/inclusion?leaf=" + "0" * 64).status_code == 404


def test_a_refused_challenge_writes_no_leaf(prover: Prover) -> None:
    content = prover.publish()
    vkey = generate_key()
    challenge = signed_challenge(vkey, prover.task_hash, content, BOUND)
    assert prover.client.post("/v1/challenges", json=challenge.model_dump()).status_code == 201
    again = prover.client.post("/v1/challenges", json=challenge.model_dump())
    assert again.status_code == 409
    assert _head(prover).size == 2


def _tampered(prover: Prover, how: str) -> None:
    """Rewrite the log as a dishonest Prover would: leaf 2 removed, or altered; then rebuild
    its nodes and state so that the log is a well-formed tree of the new leaves."""
    svc = prover.service
    rows = [(r.kind, r.ref, r.leaf_hash) for r in svc.log.entries()]
    if how == "removed":
        rows.pop(2)
    else:
        rows[2] = (rows[2][0], rows[2][1], leaf_hash(b"something else").hex())
    frontier: list[bytes] = []
    with svc.db.begin() as s:
        s.execute(delete(LogLeafRow))
        s.execute(delete(LogNodeRow))
        for i, (kind, ref, h) in enumerate(rows):
            s.add(LogLeafRow(idx=i, kind=kind, ref=ref, leaf_hash=h))
            s.add(LogNodeRow(level=0, idx=i, hash=h))
            cur, lv, j = bytes.fromhex(h), 0, i
            while j & 1:
                cur = node_hash(frontier.pop(), cur)
                lv, j = lv + 1, j >> 1
                s.add(LogNodeRow(level=lv, idx=j, hash=cur.hex()))
            frontier.append(cur)
        compact = "".join(f.hex() for f in frontier)
        s.execute(update(LogStateRow).values(size=len(rows), frontier=compact))


@pytest.mark.parametrize("how", ["removed", "altered"])
def test_a_log_with_a_removed_or_altered_entry_fails_both_proofs(prover: Prover, how: str) -> None:
    content = prover.publish()
    messages = [SignedMessage.model_validate(
        prover.client.get(f"/v1/attributions/{content}").json()["manifest"])]  # fmt: skip
    messages += _session(prover, content, "abort")
    messages += _session(prover, content, "accept")
    before = _head(prover)  # the Verifier of the aborted session holds this head
    _tampered(prover, how)
    _session(prover, content, "accept")  # the log goes on growing
    after = _head(prover)
    assert after.size > before.size
    with pytest.raises(LogProofError):
        _check_consistency(prover, before, after)
    victim = messages[2]  # the aborted session's response
    got = prover.client.get(f"/v1/log/inclusion?leaf={_leaf(victim)}&size={after.size}")
    if got.status_code == 404:  # the log no longer holds it at all
        return
    with pytest.raises(LogProofError):
        _check_inclusion(prover, victim, after)
