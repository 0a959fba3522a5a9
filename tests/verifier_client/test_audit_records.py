"""``audit`` against the Verifier's own records, by default (issue 21, item 16).

A real Prover on loopback decides two sessions with one Verifier (S1, and S2 aborted: an
epsilon no challenge this small can certify); the records (``verifier.db`` in the working
folder, as ``verify`` leaves them) hold each verdict and the log's head after it. Then the
Prover lies as a database can: S2's three log entries dropped and the tree rebuilt, S2 deleted
altogether, or its unsigned ``sessions.verdict`` flipped from abort to accept. ``audit`` with
no ``--db`` must fail each (exit 1), never pass (0) or call it an error (2).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import delete, update
from typer.testing import CliRunner

from protocol.signing import generate_key, save_private_key
from protocol.transparency import node_hash
from prover_service.app import create_app
from prover_service.service import ProverService
from prover_service.tables import LogLeafRow, LogNodeRow, LogStateRow, SessionArrayRow, SessionRow
from tests.prover_service.conftest import TASK, make_settings
from tests.serving import serve
from verifier_client.api import verify
from verifier_client.cli import app


@dataclass
class Decided:
    url: str
    service: ProverService
    key: Path
    sessions: list[str]  # S1, S2 (aborted)

    def audit(self, session: str) -> tuple[int, dict[str, object] | str]:
        args = ["audit", session, "--prover", self.url, "--task", TASK, "--key", str(self.key),
                "--json"]  # fmt: skip
        out = CliRunner().invoke(app, args)
        try:
            return out.exit_code, json.loads(out.stdout)
        except ValueError:
            return out.exit_code, out.output

    def rewrite_log(self, drop: str) -> None:
        """The log without ``drop``'s entries, rebuilt into a well-formed tree (as a Prover that
        forgets a session would)."""
        svc = self.service
        rows = [(r.kind, r.ref, r.leaf_hash) for r in svc.log.entries() if r.ref != drop]
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


@pytest.fixture
def decided(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Decided]:
    monkeypatch.chdir(tmp_path)  # where verify left verifier.db: audit reads it by default
    key = generate_key()
    save_private_key(key, tmp_path / "verifier.key")
    (tmp_path / "p").mkdir()
    application = create_app(make_settings(tmp_path / "p", run_worker=True))
    with serve(application) as url:
        sessions = []
        for epsilon in (0.5, 1e-4):
            result = verify(url, TASK, epsilon, key=key, db="sqlite:///verifier.db", budget=100,
                            pairs_per_level=4, spot_checks=2, poll_s=0.02)  # fmt: skip
            assert result["status"] == "decided" and result["verdict_posted"]
            sessions.append(str(result["session"]))
        assert result["verdict"] == "abort"
        yield Decided(url, application.state.service, tmp_path / "verifier.key", sessions)
    application.state.service.engine.dispose()


def _failed(report: dict[str, object] | str) -> dict[str, str]:
    assert isinstance(report, dict), report
    return {c["check"]: c["detail"] for c in report["checks"] if not c["ok"]}  # type: ignore[attr-defined,index]


def test_an_honest_prover_passes_with_the_records_read_by_default(decided: Decided) -> None:
    for session in decided.sessions:
        code, report = decided.audit(session)
        assert code == 0 and _failed(report) == {}, report
        names = [c["check"] for c in report["checks"]]  # type: ignore[index]
        assert "log: every session a held head covers is included (2 held)" in names
        assert "the Prover shows the verdict signed here" in names


def test_a_rewritten_log_fails_the_audit_of_another_session(decided: Decided) -> None:
    s1, s2 = decided.sessions
    decided.rewrite_log(drop=s2)  # main: exit 0 without --db
    code, report = decided.audit(s1)
    failed = _failed(report)
    assert code == 1
    assert any(name.startswith("log: consistent with the held head") for name in failed)
    assert s2 in failed["log: every session a held head covers is included (2 held)"]


def test_a_session_deleted_at_the_prover_fails_the_audit_not_an_error(decided: Decided) -> None:
    s1, s2 = decided.sessions
    decided.rewrite_log(drop=s2)
    with decided.service.db.begin() as s:
        s.execute(delete(SessionArrayRow).where(SessionArrayRow.session_id == s2))
        s.execute(delete(SessionRow).where(SessionRow.id == s2))
    code, report = decided.audit(s2)  # main: exit 2 (the 404 an error)
    assert code == 1
    assert "recorded here: abort" in _failed(report)["the Prover shows the session decided here"]
    code, report = decided.audit(s1)
    assert code == 1
    assert s2 in _failed(report)["the Prover still shows every session decided here (2)"]


def test_an_unsigned_verdict_flipped_to_accept_fails_the_audit(decided: Decided) -> None:
    s2 = decided.sessions[1]
    with decided.service.db.begin() as s:
        s.execute(update(SessionRow).where(SessionRow.id == s2).values(verdict="accept"))
    code, report = decided.audit(s2)  # main: MATCHES, exit 0
    assert code == 1
    detail = _failed(report)["unsigned fields agree with the signed verdict"]
    assert "transcript.verdict is 'accept', signed 'abort'" in detail
    assert "session.verdict is 'accept', signed 'abort'" in detail


def test_a_session_checked_alone_is_refused_in_words_and_the_others_still_pass(
    decided: Decided,
) -> None:
    """Checking alone leaves the Prover no transcript: its audit is a clear error (exit 2, main:
    'recomputed None; recorded None: DOES NOT MATCH', exit 1), and its record does not disturb
    the audit of the Prover's sessions."""
    alone = verify(decided.url, TASK, 0.5, key=decided.key, db="sqlite:///verifier.db",
                   budget=100, pairs_per_level=4, spot_checks=0, protocol="noninteractive",
                   poll_s=0.02)  # fmt: skip
    assert alone["status"] == "decided" and alone["protocol"] == "noninteractive", alone
    code, out = decided.audit(str(alone["session"]))
    assert code == 2 and isinstance(out, str), out
    assert "checked alone" in out and "no transcript" in out and "Traceback" not in out
    code, report = decided.audit(decided.sessions[0])
    assert code == 0 and _failed(report) == {}, report
