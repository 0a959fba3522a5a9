"""The recorded verifications on the command line: ``history`` (a table with headers),
``show`` (a readable summary; ``--json`` for the whole record) and ``cancel`` (stop the
Prover's job of an unfinished one). SESSION is the id ``verify`` prints on its last line
(``session ...``), the Prover's, or any unique prefix of one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from protocol.errors import ProtocolError
from protocol.signing import load_private_key
from verifier_client.cancel import cancel_record
from verifier_client.cli_options import DbOpt, JsonOpt, fail
from verifier_client.client import ProverClient, TransportError
from verifier_client.report import summary_lines

if TYPE_CHECKING:
    from verifier_client.store import Record, VerifierStore

__all__ = ["cancel", "history", "show", "when"]

SessionArg = Annotated[
    str, typer.Argument(help="Session id (verify's `session ...` line, or a unique prefix).")
]
HEADERS = ("session", "created (UTC)", "task", "status", "verdict", "reason", "epsilon asked",
           "certified", "protocol", "Prover trainings", "local")  # fmt: skip


def when(t: float | None) -> str:
    """A Unix time as an ISO date and time in UTC (``2026-01-31 14:05:09``)."""
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def open_store(db: str) -> VerifierStore:
    """The records at ``db``; a database file this user may not make private is exit 2."""
    from verifier_client.store import VerifierStore  # here: --help stays fast

    try:
        return VerifierStore(db)
    except ProtocolError as exc:
        raise fail(str(exc)) from None


def find(store: VerifierStore, session: str) -> Record:
    """The record of a session id, record id or unique prefix of either (exit 2 otherwise)."""
    row = store.get(session)
    if row is None and session:
        found = [
            r for r in store.all()
            if r.id.startswith(session) or (r.prover_session or "").startswith(session)
        ]  # fmt: skip
        if len(found) > 1:
            ids = ", ".join(r.prover_session or r.id for r in found[:3])
            more = ", ..." if len(found) > 3 else ""
            raise fail(f"{session!r} starts {len(found)} session ids ({ids}{more}): give more")
        row = found[0] if found else None
    if row is None:
        raise fail(f"no recorded verification {session!r}: `vda-verifier history` lists them")
    return row


def asked(result: dict[str, Any]) -> str:
    """What was asked, as typed and in absolute units: ``10 % of Var f = 0.017``."""
    eps, absolute = result.get("epsilon"), result.get("epsilon_absolute")
    if eps is None:
        return "-"
    if result.get("relative"):
        tail = f" = {float(absolute):.3g}" if absolute is not None else ""
        return f"{100 * float(eps):.3g} % of Var f{tail}"
    return f"{float(eps):.3g}"


def _cells(store: VerifierStore, row: Record) -> tuple[str, ...]:
    from verifier_client.run import result_of

    r = result_of(store, row.id, None)
    cert = r.get("certified_epsilon")
    return (r["session"], when(r["created_at"]), row.task_ref, r["status"],
            str(r["verdict"] or "-"), str(r["reason"] or "-"), asked(r),
            "-" if cert is None else f"{cert:.3g}", r["protocol"],
            f"{r['prover_trainings']:,}", f"{r['local_trainings']:,}")  # fmt: skip


def history(db: DbOpt = "sqlite:///verifier.db", json_out: JsonOpt = False) -> None:
    """Every recorded verification, oldest first, with column headers."""
    store = open_store(db)
    rows = store.all()
    if json_out:
        typer.echo(json.dumps([r.as_dict() for r in rows]))
        return
    cells = [_cells(store, r) for r in rows]
    console = Console()
    if not console.is_terminal:  # a pipe or a log: a header line, whole ids, one line each
        typer.echo("  ".join(h.replace(" ", "_") for h in HEADERS))
        for cell in cells:
            typer.echo("  ".join(c.replace(" ", "_") if i != 6 else c.replace(" ", "")
                                 for i, c in enumerate(cell)))  # fmt: skip
        return
    table = Table(title="verifications")
    width = max((len(c[0]) for c in cells), default=7)
    table.add_column(HEADERS[0], no_wrap=True, min_width=width)  # never cut: `show` takes it
    for col in HEADERS[1:]:
        table.add_column(col, overflow="fold")  # narrow terminals: folded, never cut
    for cell in cells:
        table.add_row(*cell)
    console.print(table)


def show_lines(store: VerifierStore, row: Record) -> list[str]:
    """The readable summary of one record: what was asked of whom, when, and the verdict."""
    from verifier_client.run import result_of

    r = result_of(store, row.id, None)
    lines = [
        f"session {r['session']} (local record {row.id})",
        f"  task {row.task_ref} (spec hash {row.task_hash[:16]}...)",
        f"  Prover {row.prover_url} (key {row.prover_key[:16]}...), attribution "
        f"{row.attribution_hash[:16]}...",
        f"  asked: epsilon {asked(r)}, delta {r['delta']:g}, protocol {row.protocol}",
        f"  created {when(row.created_at)} UTC; verdict "
        + ("delivered to the Prover" if r["verdict_posted"] else "not delivered"),
    ]
    if r["status"] != "decided":
        sid = r["session"]
        lines.append(f"  INCOMPLETE: no verdict yet; `vda-verifier verify --resume {sid}` "
                     f"finishes it, `vda-verifier cancel {sid}` stops its Prover job")  # fmt: skip
        return lines
    lines.extend(summary_lines(r, explain=False)[:-1])  # its last line is the session id
    return lines


def show(
    session: SessionArg, db: DbOpt = "sqlite:///verifier.db", json_out: JsonOpt = False
) -> None:
    """One recorded verification: a summary (task, epsilon as asked and absolute, verdict,
    certified bound, dates, trainings); ``--json`` prints the whole record."""
    store = open_store(db)
    row = find(store, session)
    if json_out:
        typer.echo(json.dumps(row.as_dict(), indent=1))
        return
    for line in show_lines(store, row):
        typer.echo(line)


def cancel(
    session: SessionArg,
    db: DbOpt = "sqlite:///verifier.db",
    key: Annotated[
        Path | None, typer.Option(help="Signing key file (or $VDA_VERIFIER_KEY).")
    ] = None,
    key_env: Annotated[str | None, typer.Option(help="Env variable holding the PEM key.")] = None,
) -> None:
    """Cancel the Prover's job of an unfinished verification (signed with the key that started
    it); the record stays incomplete, and `verify --resume SESSION` restarts the job."""
    store = open_store(db)
    row = find(store, session)
    sid = row.prover_session or row.id
    if row.status == "decided":
        raise fail(f"session {sid} is decided ({row.verdict}): nothing runs on the Prover")
    try:
        signing_key = load_private_key(
            key, key_env or ("VDA_VERIFIER_KEY" if key is None else None)
        )
        with httpx.Client(base_url=row.prover_url, timeout=60) as http:
            client = ProverClient(http, key=signing_key)
            client.info()
            job, now = cancel_record(client, row)
    except (ProtocolError, TransportError) as exc:
        raise fail(str(exc)) from None
    if job is None:
        typer.echo(f"session {sid}: the challenge never reached the Prover; nothing runs there")
        return
    word = job.status if now else f"already {job.status}"
    typer.echo(f"session {sid}: the Prover's job {job.id} is {word} ({job.done:,} of "
               f"{job.total:,} trainings done); the record stays incomplete: "
               f"`vda-verifier verify --resume {sid}` restarts it")  # fmt: skip
