"""Command line of the Verifier client (typer).

Exit codes: 0 success; 2 bad input or any error (one clear line on stderr, no stack trace).
Progress goes to stderr, so ``--json`` output on stdout stays machine-readable: a live bar on a
terminal, else one line when a phase starts, every 10 % of it and when it ends (so a log shows
progress within seconds).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from protocol.budget import Pilot, plan
from protocol.errors import ProtocolError
from protocol.evaluation import evaluate_design, run_task
from protocol.residual import estimate_residual
from protocol.sampling import SEED_BYTES, ChallengeDesign, sample_masks, seed_from_text
from protocol.signing import create_key_file, load_private_key
from protocol.tasks import Task, TaskBase, load_task, spec_hash
from verifier_client.cli_options import DbOpt, JsonOpt, TaskOpt, db_url, err_console, fail
from verifier_client.client import ProverClient, TransportError
from verifier_client.limits import prover_http
from verifier_client.records import cancel, history, show
from verifier_client.report import summary_lines

if TYPE_CHECKING:
    from verifier_client.store import VerifierStore

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Verifier client for verifiable data attribution.",
)
_err = err_console
SIZING = "Sizing (default: from epsilon)"
_fail = fail
_db_url = db_url


def _store(db: str) -> VerifierStore:
    """The records at ``db``; a database file this user may not make private is exit 2."""
    from verifier_client.store import VerifierStore

    try:
        return VerifierStore(db)
    except ProtocolError as exc:
        raise _fail(str(exc)) from None


def _records(db: str | None) -> VerifierStore | None:
    """The Verifier's records for an audit: ``--db``, or ``verifier.db`` here if it exists
    (a third party without records is told its log check has no held heads)."""
    if db is None:
        if not Path("verifier.db").is_file():
            _err.print("note: no Verifier records (verifier.db, or --db): the log is checked "
                       "against no held tree head", highlight=False)  # fmt: skip
            return None
        db = "sqlite:///verifier.db"
    elif db.startswith("sqlite:///") and not Path(db.removeprefix("sqlite:///")).is_file():
        raise _fail(f"--db {db!r}: no such database")
    return _store(db)


def _parse_seed(seed: str | None) -> bytes:
    if seed is None:
        return os.urandom(SEED_BYTES)
    try:
        return seed_from_text(seed)
    except ProtocolError as exc:
        raise _fail(f"--seed: {exc}") from None


def _progress_bar(show: bool) -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=_err,
        transient=True,
        disable=not show,
    )


class PhaseProgress:
    """``progress(phase, done, total)`` for :func:`run_verification`, on stderr.

    On a terminal: one rich bar per phase. Elsewhere (a log, a pipe, CI): a line when a phase
    starts, at every further 10 % and when it completes, each with the seconds since the start.
    """

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console, self.enabled = console, enabled
        self.live = enabled and console.is_terminal
        self.bar = _progress_bar(self.live)
        self.tasks: dict[str, Any] = {}
        self.shown: dict[str, int] = {}  # phase -> last tenth printed (-1: start line only)
        self.started = time.perf_counter()

    def __enter__(self) -> PhaseProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.live:
            if phase not in self.tasks:
                self.tasks[phase] = self.bar.add_task(phase, total=max(total, 1))
            self.bar.update(self.tasks[phase], completed=done, total=max(total, 1))
            return
        tenth = 10 if total <= 0 or done >= total else (10 * done) // total
        last = self.shown.get(phase)
        if last is not None and tenth <= last:
            return
        self.shown[phase] = tenth
        at = f"[{time.perf_counter() - self.started:6.1f} s]"
        if total <= 1:  # a one-step phase: its start, then its end
            word = "done" if done >= total else "..."
            self.console.print(
                f"{at} {phase} {word}", highlight=False, markup=False, soft_wrap=True
            )
        else:
            self.console.print(f"{at} {phase}: {done:,} / {total:,} ({10 * tenth} %)",
                               highlight=False, markup=False, soft_wrap=True)  # fmt: skip

    def note(self, message: str) -> None:
        """A sentence for the user, printed above any live bar."""
        self.console.print(f"note: {message}", highlight=False, markup=False, soft_wrap=True)


def _evaluate(task: Task, design: ChallengeDesign, show: bool) -> np.ndarray:
    if not show:
        return evaluate_design(task, design)
    with _progress_bar(show) as bar:
        job = bar.add_task(f"training {task.name}", total=len(design))
        return evaluate_design(
            task, design, progress=lambda done, _t: bar.update(job, completed=done)
        )


@app.command()
def residual(
    task: TaskOpt,
    budget: Annotated[int, typer.Option(help="Calls of f to spend (6 per pair triple).")],
    p: Annotated[float, typer.Option(help="Inclusion probability of B_p.")] = 0.5,
    rho0: Annotated[float, typer.Option(help="Noise levels are (0, rho0, 2 rho0).")] = 0.2,
    confidence: Annotated[float, typer.Option(help="Confidence of the intervals.")] = 0.95,
    seed: Annotated[
        str | None, typer.Option(help="Design seed (int or 64 hex); random if unset.")
    ] = None,
    json_out: JsonOpt = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Estimate B_0, B_1 and B_{>=2} (the best MSE any linear datamodel reaches) per target."""
    try:
        t = load_task(task)
        if budget < 6:
            raise _fail(
                f"--budget must be at least 6 calls of f (one pair per level); got {budget}"
            )
        design = ChallengeDesign.saunshi(_parse_seed(seed), t.n_train, p, rho0, budget // 6)
        started = time.perf_counter()
        values = _evaluate(t, design, progress)
        est = estimate_residual(values, design, confidence=confidence)
        truth = _exact_spectrum(t, p)
    except ProtocolError as exc:
        raise _fail(str(exc)) from None
    targets: list[dict[str, Any]] = []
    for z in range(t.n_targets):
        row: dict[str, Any] = {
            "index": z,
            "b0": float(est.b0[z]),
            "b1": float(est.b1[z]),
            "residual": float(est.residual[z]),
            "variance": float(est.variance[z]),
            "ci_low": float(est.ci_low[z]),
            "ci_high": float(est.ci_high[z]),
            "std_error": float(est.std_error[z]),
            "bias_bound": float(est.bias_bound[z]),
        }
        if truth is not None:
            row["exact"] = {k: float(v[z]) for k, v in truth.items()}
        targets.append(row)
    out = {
        "task": t.name,
        "task_hash": spec_hash(t),
        "budget": budget,
        "calls": len(design),
        "p": p,
        "rho0": rho0,
        "pairs_per_level": design.pairs_per_level,
        "confidence": confidence,
        "seed": design.seed.hex(),
        "seconds": round(time.perf_counter() - started, 3),
        "targets": targets,
    }
    if json_out:
        typer.echo(json.dumps(out))
        return
    table = Table(title=f"{t.name}: residual estimate from {len(design)} calls of f (p = {p})")
    for col in ("target", "B0", "B1", "B>=2", f"{confidence:.0%} CI", "Var f", "exact B>=2"):
        table.add_column(col, justify="right")
    for row in targets:
        exact = f"{row['exact']['residual']:.4f}" if "exact" in row else "-"
        table.add_row(
            str(row["index"]), f"{row['b0']:.4f}", f"{row['b1']:.4f}", f"{row['residual']:.4f}",
            f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]", f"{row['variance']:.4f}", exact,
        )  # fmt: skip
    Console().print(table)


def _exact_spectrum(task: Task, p: float) -> dict[str, np.ndarray] | None:
    """The exact spectrum of a planted task that does not clip (ground truth), else None."""
    from protocol.tasks.planted import PlantedTask

    if not isinstance(task, PlantedTask) or task.bound < task.supremum:
        return None
    s = task.spectrum(p)
    return {"b0": s.b0, "b1": s.b1, "residual": s.residual, "variance": s.variance}


@app.command("plan")
def plan_cmd(
    task: TaskOpt,
    epsilon: Annotated[float, typer.Option(help="Reject any attribution with err(g) > epsilon.")],
    delta: Annotated[float, typer.Option(help="Failure probability.")] = 0.05,
    p: Annotated[float, typer.Option(help="Inclusion probability of B_p.")] = 0.5,
    tau: Annotated[float, typer.Option(help="CHECKEQUIV tolerance (0: exact match).")] = 0.0,
    honest_err: Annotated[
        float, typer.Option(help="Largest err an honest Prover passes with.")
    ] = 0.0,
    pilot: Annotated[
        int, typer.Option(help="Calls of f for a pilot (Bernstein bounds); 0: none.")
    ] = 0,
    seed: Annotated[str | None, typer.Option(help="Pilot design seed; random if unset.")] = None,
    b3_bound: Annotated[
        float | None, typer.Option(help="A known bound on B_{>=3} (else b^2 or the pilot's).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print every sample size of the paper's protocol (worst-case or pilot Bernstein bounds),
    for both estimators and both protocols. `verify` sizes its challenges otherwise: with the
    certificate planner, from a pilot on the Prover's own datamodel (docs/protocol.md)."""
    try:
        t = load_task(task)
        pilot_bounds = None
        if pilot:
            if pilot < 18:
                raise _fail("--pilot needs at least 18 calls (3 pairs per level)")
            design = ChallengeDesign.saunshi(_parse_seed(seed), t.n_train, p, 0.2, pilot // 6)
            pilot_bounds = Pilot.from_values(_evaluate(t, design, True), design)
        plans = {
            est: plan(
                epsilon, delta, t.bound, n_targets=t.n_targets, p=p, estimator=est, tau=tau,
                honest_err=honest_err, pilot=pilot_bounds, b3_bound=b3_bound,
            ).as_dict()
            for est in ("residual", "gap")
        }  # fmt: skip
    except ProtocolError as exc:
        raise _fail(str(exc)) from None
    rate = _training_rate(t)
    for pl in plans.values():
        vt = pl["verifier_trainings"]
        pl["seconds_here"] = {k: v / rate for k, v in vt.items()}
    out = {"task": t.name, "task_hash": spec_hash(t), "bound": t.bound, "n_targets": t.n_targets,
           "pilot_calls": pilot, "trainings_per_second_here": rate, "plans": plans}  # fmt: skip
    if json_out:
        typer.echo(json.dumps(out, default=float))
        return
    table = Table(
        title=f"{t.name}: plan for epsilon = {epsilon}, delta = {delta}, b = {t.bound:.3g}"
    )
    table.add_column("")
    for est in plans:
        table.add_column(f"{est} estimator", justify="right")
    rows = [
        ("rho0", "rho0", "{:.3f}"),
        ("pairs per level n", "pairs_per_level", "{:,}"),
        ("Prover trainings |E|", "n_subsets", "{:,}"),
        ("spot-checks k", "spot_checks", "{:,}"),
        ("fresh samples |M|", "fresh_samples", "{:,}"),
        ("corruptible values m*", "max_corrupted", "{:,}"),
        ("decision threshold", "threshold", "{:.4g}"),
    ]
    for label, key, fmt in rows:
        table.add_row(label, *(fmt.format(pl[key]) for pl in plans.values()))
    table.add_row(
        "Verifier trainings, interactive",
        *(f"{pl['verifier_trainings']['interactive']:,}" for pl in plans.values()),
    )
    table.add_row(
        "Verifier trainings, non-interactive",
        *(f"{pl['verifier_trainings']['noninteractive']:,}" for pl in plans.values()),
    )
    for label, key in (
        ("Prover time here", "prover"),
        ("Verifier time here, interactive", "interactive"),
    ):
        table.add_row(label, *(_duration(pl["seconds_here"][key]) for pl in plans.values()))
    Console().print(table)
    bound_name = "Bernstein (pilot)" if pilot_bounds else "Hoeffding (worst case)"
    Console().print(f"Sample sizes from {bound_name}; `--json` lists the source of every number.")
    Console().print(
        "These are the paper's a-priori sizes; `verify` plans smaller ones for the datamodel it "
        "is given (a pilot and the certificate's planner), and prints them with its verdict."
    )


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="Where to write the Ed25519 key (PEM, 0600).")],
) -> None:
    """Create the Verifier's signing key; prints its public key and fingerprint."""
    try:
        typer.echo(json.dumps(create_key_file(out)))
    except ProtocolError as exc:
        raise _fail(str(exc)) from None


def _load_key(key: Path | None, key_env: str | None) -> Ed25519PrivateKey:
    try:
        return load_private_key(key, key_env or ("VDA_VERIFIER_KEY" if key is None else None))
    except ProtocolError as exc:
        raise _fail(str(exc)) from None


@app.command()
def verify(
    prover: Annotated[str, typer.Option(help="The Prover's base URL.")],
    task: TaskOpt,
    epsilon: Annotated[
        str | None,
        typer.Option(help="Abort unless err(g) <= epsilon is certified; 0.5 or 5% of Var f."),
    ] = None,
    delta: Annotated[float, typer.Option(help="Failure probability.")] = 0.05,
    aggregate: Annotated[
        str, typer.Option(help="mean (over targets; default) | max (every target).")
    ] = "mean",
    reach: Annotated[
        int | None,
        typer.Option(
            help="No epsilon in mind: plan only (no challenge), and print the smallest "
            "epsilon each route reaches within this many trainings here."
        ),
    ] = None,
    validity: Annotated[
        str,
        typer.Option(
            help="auto (clt where n min(p,1-p)^2 >= 50, else betting) | betting (sound at any "
            "p, wide) | clt (normal approximation) | finite (empirical Bernstein)."
        ),
    ] = "auto",
    layout: Annotated[str, typer.Option(help="shared-base (default) | pairs.")] = "shared-base",
    attribution: Annotated[
        str,
        typer.Option(
            help="Attribution hash; 'latest' (the Prover's newest, reused with a note; "
            "--method/--budget only when it has none) or 'new' (always compute one)."
        ),
    ] = "latest",
    protocol: Annotated[
        str,
        typer.Option(
            help="auto (the cheapest route that reaches epsilon, said before the Prover "
            "trains) | interactive | noninteractive (checking alone) | witness (certifiable "
            "tasks) | naive (a baseline)."
        ),
    ] = "auto",
    estimator: Annotated[
        str, typer.Option(help="gap (the certificate) | residual (the paper's, a baseline).")
    ] = "gap",
    pairs: Annotated[
        int | None,
        typer.Option(
            rich_help_panel=SIZING, help="Bases (pairs) per level; default: from epsilon."
        ),
    ] = None,
    spot_checks: Annotated[
        int | None,
        typer.Option(
            rich_help_panel=SIZING, help="Secret spot-checks retrained here; default: from epsilon."
        ),
    ] = None,
    spot_fraction: Annotated[
        float,
        typer.Option(rich_help_panel=SIZING, help="Planner: spot-checks as a fraction of |E|."),
    ] = 0.1,
    pilot: Annotated[
        int, typer.Option(rich_help_panel=SIZING, help="Planner: bases of the local pilot.")
    ] = 32,
    max_prover_trainings: Annotated[
        int,
        typer.Option(rich_help_panel=SIZING, help="Refuse plans that need more Prover trainings."),
    ] = 1_000_000,
    fresh: Annotated[
        int, typer.Option(rich_help_panel=SIZING, help="Fresh local samples (residual/naive).")
    ] = 0,
    tau: Annotated[
        float | None,
        typer.Option(help="CHECKEQUIV tolerance; default the task's tau, never below it."),
    ] = None,
    honest_err: Annotated[
        float, typer.Option(help="Baselines: largest err an honest Prover passes with.")
    ] = 0.0,
    method: Annotated[
        str, typer.Option(help="Method of a new attribution (none yet, or --attribution new).")
    ] = "ridge",
    budget: Annotated[
        int, typer.Option(help="Its budget in trainings (4,000: err ~0.06 on digits-logreg).")
    ] = 4000,
    db: DbOpt = "sqlite:///verifier.db",
    key: Annotated[
        Path | None, typer.Option(help="Signing key file (or $VDA_VERIFIER_KEY).")
    ] = None,
    key_env: Annotated[str | None, typer.Option(help="Env variable holding the PEM key.")] = None,
    resume: Annotated[
        str | None, typer.Option(help="Finish a recorded, incomplete session.")
    ] = None,
    seed: Annotated[
        str | None,
        typer.Option(
            help="Fix the design (subsets, training seeds) for a repeatable run; the "
            "nonce, salt and spot-checks stay random."
        ),  # fmt: skip
    ] = None,
    json_out: JsonOpt = False,
    progress: Annotated[bool, typer.Option(help="Show progress on stderr.")] = True,
) -> None:
    """Verify a Prover's attribution; exit 0 accept, 1 abort, 2 error. With --reach N instead
    of --epsilon, plan only: the smallest epsilon each route reaches within N trainings here
    (exit 0; no challenge is sent)."""
    from verifier_client.run import Options

    signing_key = _load_key(key, key_env)
    fields: dict[str, Any] = dict(
        delta=delta, aggregate=aggregate, validity=validity, layout=layout, protocol=protocol,
        estimator=estimator, pairs_per_level=pairs, spot_checks=spot_checks,
        spot_fraction=spot_fraction, pilot=pilot, max_prover_trainings=max_prover_trainings,
        fresh_samples=fresh, tau=tau, honest_err=honest_err, attribution=attribution,
        method=method, budget=budget, reach_trainings=reach,
    )  # fmt: skip
    try:  # refused before any traffic: a bad option is the user's error, not the Prover's
        from verifier_client.api import parse_epsilon
        from verifier_client.api import verify as verify_api

        if (epsilon is None) == (reach is None):
            raise _fail("give --epsilon (verify), or --reach N without it (plan only)")
        eps, relative = parse_epsilon(epsilon) if epsilon is not None else (1.0, False)
        Options(task=task, epsilon=eps, relative=relative, **fields).validate()
    except ProtocolError as exc:
        raise _fail(str(exc)) from None
    started = time.perf_counter()
    try:
        with PhaseProgress(_err, progress) as show:
            result = verify_api(
                prover, task, epsilon, key=signing_key, db=db, seed=seed, resume=resume,
                progress=show, notify=show.note, **fields,
            )  # fmt: skip
    except (ProtocolError, TransportError) as exc:
        raise _fail(str(exc)) from None
    result["seconds"] = round(time.perf_counter() - started, 3)
    if json_out:
        typer.echo(json.dumps(result))
    elif result.get("plan_only"):
        print_reach(Console(), result)
    else:
        print_summary(Console(), result)
    if result.get("plan_only"):
        raise typer.Exit(code=0)  # a plan, not a verdict
    raise typer.Exit(code=0 if result["verdict"] == "accept" else 1)


def print_reach(console: Console, result: dict[str, Any]) -> None:
    """``verify --reach N``: per route, the smallest epsilon its plan reaches within N
    trainings here, in absolute units and as a share of the pilot's Var f."""
    from verifier_client.routes import NAMES

    n = result["trainings_here"]
    table = Table(title=f"{result['task']} ({result['aggregate']}, delta = {result['delta']}): "
                        f"the smallest epsilon within {n:,} trainings here")  # fmt: skip
    for col in ("route", "epsilon", "share of Var f", "trainings here", "Prover trainings",
                "time here"):  # fmt: skip
        table.add_column(col, justify="left" if col == "route" else "right",
                         no_wrap=col == "route")  # fmt: skip
    for route, r in result["reach"].items():
        if r is None:
            table.add_row(NAMES[route], "out of reach" if route != "witness" else "not offered",
                          "", "", "", "")  # fmt: skip
            continue
        table.add_row(NAMES[route], f"{r['epsilon']:.3g}", f"{100 * r['share_of_var_f']:.1f} %",
                      f"{r['verifier_trainings']:,.0f}", f"{r['prover_trainings']:,}",
                      _duration(r["seconds"]))  # fmt: skip
    console.print(table)
    best = result["best"]
    if best is None:
        console.print(f"No route certifies any epsilon within {n:,} trainings here; raise --reach.")
        return
    eps = result["reach"][best]["epsilon"]
    console.print(
        f"Smallest: {eps:.3g} by {NAMES[best]} (Var f ~ {result['var_f_pilot']:.3g} from the "
        f"{result['pilot_trainings']:,}-training pilot, not counted above). Plans are sized for "
        f"an attribution with err = epsilon / 2; verify with --epsilon {eps:.3g} or more.",
        highlight=False,
    )


def print_summary(console: Console, result: dict[str, Any], indent: str = "") -> None:
    """The verdict line in colour, then the plain summary lines (:func:`summary_lines`)."""
    colour = "green" if result["verdict"] == "accept" else "red"
    lines = summary_lines(result)
    console.print(f"{indent}[bold {colour}]{escape(lines[0])}[/]", highlight=False, soft_wrap=True)
    for line in lines[1:]:
        console.print(f"{indent}{line}", highlight=False, markup=False, soft_wrap=True)


# What an offline audit (--file) cannot check: the Prover's transparency log is online only.
OFFLINE_SKIPS = (
    "log: the tree head signed by the Prover (offline: give --prover URL SESSION)",
    "log: every message of the transcript included in the Prover's log (offline)",
    "log: consistency with the tree heads held in --db (offline)",
)


@app.command("audit")
def audit_cmd(
    task: Annotated[str, typer.Option(help="The task the session trained (its hash is checked).")],
    session: Annotated[str | None, typer.Argument(help="The Prover's session id.")] = None,
    prover: Annotated[str | None, typer.Option(help="The Prover's base URL.")] = None,
    file: Annotated[Path | None, typer.Option(help="A saved transcript bundle instead.")] = None,
    save: Annotated[Path | None, typer.Option(help="Also save the fetched bundle here.")] = None,
    prover_key: Annotated[
        str | None, typer.Option(help="Expected Prover public key (hex).")
    ] = None,
    key: Annotated[Path | None, typer.Option(help="Key to sign the transcript request.")] = None,
    db: Annotated[
        str | None,
        typer.Option(
            help="The Verifier's records (default verifier.db, if there): held log "
            "heads, sessions and verdicts to check the Prover against.",
            callback=_db_url,
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check every signature and hash of a transcript and recompute its decision; exit 0 if it
    matches the recorded verdict, 1 if not (or if anything the Prover shows disagrees with what
    is signed or recorded), 2 on error. Online, also check the Prover's transparency log: the
    transcript's inclusion, consistency with every tree head held in the Verifier's records,
    and that every session they hold is still logged and shown with the verdict signed here;
    the session's record then keeps the new head."""
    skipped: list[str] = []
    from verifier_client.audit import audit, audit_session, load_bundle, save_bundle

    try:
        t = load_task(task)
        if file is not None:
            report = audit(load_bundle(file), t, prover_key)
            skipped = list(OFFLINE_SKIPS)
        elif prover is not None and session is not None:
            signing_key = load_private_key(key) if key is not None else None
            store = _records(db)
            with prover_http(prover, 120) as http:
                client = ProverClient(http, key=signing_key)
                records = store.all() if store is not None else []
                report, bundle, head = audit_session(client, session, t, records, prover_key,
                                                     signing_key)  # fmt: skip
                if save is not None and bundle is not None:
                    save_bundle(bundle, save)
            record = store.get(session) if store is not None else None
            if store is not None and record is not None and head is not None and report.ok:
                store.update(record.id, log_head_json=head.model_dump_json())
        else:
            raise _fail("give --prover URL SESSION, or --file TRANSCRIPT")
    except (ProtocolError, TransportError) as exc:
        raise _fail(str(exc)) from None
    except (KeyError, TypeError) as exc:
        raise _fail(f"malformed transcript: missing {exc}") from None
    if json_out:
        typer.echo(json.dumps(report.as_dict() | {"not_checked": skipped}))
    else:
        for c in report.checks:
            mark = "[green]ok[/]" if c["ok"] else "[red]FAILED[/]"
            Console().print(f"{mark}  {c['check']} {c['detail']}")
        for what in skipped:
            Console().print(f"[yellow]not checked[/]  {what}", highlight=False)
        word = "[green]MATCHES[/]" if report.ok else "[red]DOES NOT MATCH[/]"
        if report.recomputed is None and report.recorded is None:
            Console().print("nothing recomputed: the Prover shows no transcript of this "
                            f"session: {word}")  # fmt: skip
        else:
            Console().print(f"recomputed {report.recomputed}; recorded {report.recorded}: "
                            f"{word}")  # fmt: skip
    raise typer.Exit(code=0 if report.ok else 1)


@app.command()
def demo(
    epsilon: Annotated[
        float, typer.Option(help="Tolerated mean err over the targets (Var f is ~0.85).")
    ] = 0.2,
    budget: Annotated[int, typer.Option(help="Trainings for each Prover's attribution.")] = 4000,
    spot_fraction: Annotated[
        float, typer.Option(help="Share of the challenge the Verifier retrains.")
    ] = 0.2,
    max_prover_trainings: Annotated[
        int, typer.Option(help="Cap on a challenge (a Prover the planner cannot size).")
    ] = 2400,
    pairs: Annotated[
        int | None, typer.Option(help="Shared bases (4 Prover trainings each); default: planner.")
    ] = None,
    spot_checks: Annotated[
        int | None, typer.Option(help="Secret spot-checks; default: planner.")
    ] = None,
    seed: Annotated[
        str, typer.Option(help="Derive the Verifier's secrets from this (same figures each run).")
    ] = "1",
    task: Annotated[
        str, typer.Option(help="digits-logreg in float32 (default) or float64 (digits-logreg).")
    ] = "digits-logreg:dtype=float32",
    keep: Annotated[Path | None, typer.Option(help="Keep keys, databases and logs here.")] = None,
    protocol: Annotated[
        str, typer.Option(help="interactive (both transcripts audited), auto or noninteractive.")
    ] = "interactive",
    json_out: JsonOpt = False,
) -> None:
    """The whole story on digits-logreg: an honest and a cheating Prover, both verified at once
    (accept, abort), both audited; prints the certificates in words and where the time went."""
    from verifier_client.demo import run_demo

    try:
        results = run_demo(
            Console(stderr=json_out), pairs, budget, epsilon, keep, spot_checks,
            seed_from_text(seed), spot_fraction, max_prover_trainings, task, seed_label=seed,
            protocol=protocol,
        )  # fmt: skip
    except (ProtocolError, TransportError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    if json_out:
        typer.echo(json.dumps(results))
    provers = [results["honest"], results["cheating"]]
    ok = provers[0]["verdict"] == "accept" and provers[1]["verdict"] == "abort"
    audited = all(r["audit"] is None or r["audit"]["ok"] for r in provers)  # None: checked alone
    raise typer.Exit(code=0 if ok and audited else 1)


app.command()(history)
app.command()(show)
app.command()(cancel)


def _training_rate(task: TaskBase) -> float:
    """Trainings per second on this machine, measured on one chunk of random subsets."""
    count = int(min(max(task.chunk_size, 2), 256))
    masks = sample_masks(os.urandom(SEED_BYTES), task.n_train, 0.5, range(count), domain="rate")
    seeds = np.arange(count, dtype=np.uint64)
    run_task(task, masks[:2], seeds[:2])  # warm-up
    t0 = time.perf_counter()
    run_task(task, masks, seeds)
    return count / max(time.perf_counter() - t0, 1e-9)


def _duration(seconds: float) -> str:
    for unit, size in (("years", 3.15e7), ("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.1f} s"


def _db_errors() -> tuple[type[Exception], ...]:
    """SQLAlchemy's error class once the store has loaded sqlalchemy (none can be raised
    before), so that ``--help`` does not import it."""
    exc = sys.modules.get("sqlalchemy.exc")
    return () if exc is None else (exc.SQLAlchemyError,)


def main() -> None:
    """Entry point of ``python -m verifier_client`` and the ``vda-verifier`` script."""
    try:
        app()
    except _db_errors() as exc:  # the records' database: unreachable, refused, damaged
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        _err.print(f"[bold red]error:[/] the records' database failed: {escape(first)}",
                   highlight=False, soft_wrap=True)  # fmt: skip
        sys.exit(2)
    except KeyboardInterrupt:
        _err.print("interrupted")
        sys.exit(2)
