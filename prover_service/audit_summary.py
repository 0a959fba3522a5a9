"""What a reader of the ``/audit`` pages should know about a session, in words and rounded
figures: the task, what the Verifier asked (ε as typed and in absolute units, δ and how it was
split), the verdict, the certified bound, who trained what, when, and whether the checks and
the log passed. Pure functions of a session's stored messages (and the served task's name);
the checks themselves are :func:`prover_service.audit_page.audit_session`'s."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

from protocol.messages import Challenge
from protocol.signing import SignedMessage
from protocol.tasks import TaskBase
from prover_service.tables import SessionRow

__all__ = [
    "SummarySources",
    "asked_delta",
    "asked_epsilon",
    "attribution_payload",
    "iso_date",
    "summary",
    "trust",
]


def iso_date(t: float | None) -> str:
    """A Unix time as an ISO 8601 date and time in UTC (``2026-01-31 14:05 UTC``)."""
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _g(x: float) -> str:
    return f"{x:.3g}"


def asked_epsilon(c: Challenge) -> str:
    """ε as the Verifier typed it, and in absolute units: ``10 % of Var f (0.017 absolute)``."""
    if c.epsilon_share is not None:
        return f"{100 * c.epsilon_share:.3g} % of Var f ({_g(c.epsilon)} absolute)"
    return f"{_g(c.epsilon)} (absolute)"


def asked_delta(c: Challenge) -> str:
    """δ as asked, with its split when part went to the lower bound on Var f."""
    if c.delta_total is None:
        return _g(c.delta)
    rest = c.delta_total - c.delta
    return (f"{_g(c.delta_total)} in total: {_g(c.delta)} for the certificate, {_g(rest)} for "
            "the lower bound on Var f that turned the share into absolute units")  # fmt: skip


class _SignedAttributions(Protocol):
    def attribution(self, content_hash: str) -> tuple[SignedMessage, bytes]: ...


class SummarySources(Protocol):
    """What a summary reads (the Prover service provides it): the served tasks and the signed
    attributions."""

    @property
    def tasks(self) -> Mapping[str, TaskBase]: ...

    @property
    def attributions(self) -> _SignedAttributions: ...


def _task_name(row: SessionRow, service: SummarySources | None) -> str:
    task = service.tasks.get(row.task_hash) if service is not None else None
    return str(task.name) if task is not None else f"task {row.task_hash[:12]}…"


def summary(row: SessionRow, service: SummarySources | None = None) -> dict[str, Any]:
    """One line of the sessions table: task, verdict, ε as asked, certified err, δ, trainings
    and the date. The Prover's trainings are the challenge's size |E|; the Verifier's, the
    spot-checks it opened in its verdict (its pilot, if any, is not in the transcript)."""
    challenge = Challenge.model_validate(json.loads(row.challenge_json)["payload"])
    verdict = json.loads(row.verdict_json)["payload"] if row.verdict_json else {}
    figures = verdict.get("figures", {})
    return {
        "id": row.id, "status": row.status, "verdict": row.verdict or "-",
        "reason": verdict.get("reason", ""), "task": _task_name(row, service),
        "task_hash": row.task_hash, "epsilon": challenge.epsilon,
        "epsilon_asked": asked_epsilon(challenge), "delta": challenge.delta,
        "delta_asked": asked_delta(challenge), "delta_total": challenge.delta_total,
        "aggregate": challenge.aggregate,
        "certified": figures.get("certified_epsilon"),
        "prover_trainings": challenge.n_subsets,
        "verifier_trainings": len(verdict.get("spot_check_indices", ())),
        "created_at": row.created_at, "created": iso_date(row.created_at),
        "challenged": iso_date(challenge.timestamp),
        "decided": iso_date(verdict["timestamp"]) if verdict.get("timestamp") else "-",
    }  # fmt: skip


def trust(s: dict[str, Any], rep: Any, attribution: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The "what to trust" lines of a session page, (label, text): from :func:`summary`, the
    recomputed audit ``rep`` and the attribution's signed manifest payload (or None)."""
    confidence = f"{100 * (1 - (s['delta_total'] or s['delta'])):.4g} %"  # the whole verdict's
    what = "mean err over the targets" if s["aggregate"] == "mean" else "err on every target"
    if s["certified"] is not None:
        bound = f"{what} ≤ {_g(s['certified'])}, at {confidence} confidence"
    else:
        bound = "none (no certificate: the response or a spot-check failed)"
    verdict = s["verdict"].upper() + (f" ({s['reason']})" if s["reason"] else "")
    outcome = "recomputed here and it matches" if rep.ok else "recomputed here: it DOES NOT match"
    made = "-"
    if attribution is not None:
        made = (f"{attribution.get('method')} with {int(attribution.get('trainings', 0)):,} "
                "trainings, by the Prover")  # fmt: skip
        tool = attribution.get("provenance") or {}
        if tool.get("tool"):
            made = (f"{attribution.get('method')}: scores from {tool['tool']} "
                    f"{tool.get('tool_version', '')} ({int(tool.get('outside_trainings', 0)):,} "
                    f"trainings there), calibrated by the Prover on "
                    f"{int(tool.get('calibration_trainings', 0)):,}")  # fmt: skip
    log = [c for c in rep.checks if "transparency log" in c["check"]]
    others = [c for c in rep.checks if c not in log]
    failed = [c["check"] for c in others if not c["ok"]]
    return [
        ("task", f"{s['task']} (spec hash {s['task_hash'][:16]}…)"),
        ("asked", f"ε = {s['epsilon_asked']}, {what}; δ = {s['delta_asked']}"),
        ("verdict", f"{verdict}, signed by the Verifier; {outcome}"),
        ("certified bound", bound),
        ("attribution", made),
        ("trainings", f"Prover {s['prover_trainings']:,} (the challenge); Verifier "
                      f"{s['verifier_trainings']:,} (the spot-checks it re-trained)"),
        ("when", f"challenge {s['challenged']}, verdict {s['decided']}"),
        ("signatures and hashes", "all passed" if not failed else "FAILED: " + "; ".join(failed)),
        ("transparency log", "every message included" if log and all(c["ok"] for c in log)
         else "FAILED: " + "; ".join(c["detail"] for c in log) if log else "not checked"),
    ]  # fmt: skip


def attribution_payload(service: SummarySources, row: SessionRow) -> dict[str, Any] | None:
    """The session's attribution manifest (its signed payload), None if the Prover lacks it
    (the page's checks then say so)."""
    try:
        return dict(service.attributions.attribution(row.attribution_hash)[0].payload)
    except Exception:  # noqa: BLE001 - a missing or damaged attribution is the checks' to report
        return None
