"""The Verifier's log checks (``verifier_client.audit.audit_log``) against a real Prover app: an
honest log passes; a log that forgot or altered an aborted session fails consistency with the
head its Verifier held, and inclusion, and the report says which."""

from __future__ import annotations

import pytest

from protocol.signing import SignedMessage
from prover_service.sessions import LOCAL
from tests.prover_service.conftest import Prover
from tests.prover_service.test_log import _session, _tampered
from verifier_client.audit import AuditReport, audit_log
from verifier_client.client import ProverClient


def _transcript(prover: Prover, session_id: str) -> dict:  # type: ignore[type-arg]
    return prover.service.sessions.transcript(session_id, LOCAL)


def test_an_honest_log_passes_every_check(prover: Prover) -> None:
    content = prover.publish()
    first = _session(prover, content, "abort")
    client = ProverClient(prover.client)
    client.info()
    held, _ = client.log_head()
    _session(prover, content, "accept")
    rep = AuditReport()
    head = audit_log(rep, client, _transcript(prover, first[1].payload["session_id"]), [held])
    assert head is not None and head.payload["size"] == 7
    assert [c["ok"] for c in rep.checks] == [True, True, True], rep.checks


@pytest.mark.parametrize("how", ["removed", "altered"])
def test_a_log_that_forgets_an_aborted_session_is_caught(prover: Prover, how: str) -> None:
    content = prover.publish()
    aborted = _session(prover, content, "abort")
    client = ProverClient(prover.client)
    client.info()
    held, _ = client.log_head()  # what the aborted session's Verifier kept with its verdict
    transcript = _transcript(prover, aborted[1].payload["session_id"])
    _tampered(prover, how)  # leaf 2: the aborted session's response
    _session(prover, content, "accept")
    rep = AuditReport()
    audit_log(rep, client, transcript, [held])
    by_name = {c["check"]: c for c in rep.checks}
    assert by_name["log: tree head signed by the Prover"]["ok"]
    included = by_name["log: every message of the transcript is included"]
    assert not included["ok"] and included["detail"].startswith("response:")
    consistent = by_name["log: consistent with the held head of size 4"]
    assert not consistent["ok"]


def test_a_head_signed_by_another_key_is_refused(prover: Prover) -> None:
    from protocol.signing import generate_key, sign_message
    from protocol.transparency import TreeHead

    content = prover.publish()
    aborted = _session(prover, content, "abort")
    client = ProverClient(prover.client)
    client.info()
    forged = sign_message(generate_key(), TreeHead(size=1, root_hash="0" * 64, timestamp=0))
    rep = AuditReport()
    audit_log(
        rep,
        client,
        _transcript(prover, aborted[1].payload["session_id"]),
        [SignedMessage.model_validate(forged.model_dump())],
    )
    assert not rep.checks[-1]["ok"] and "unexpected key" in rep.checks[-1]["detail"]
