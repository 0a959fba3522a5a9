"""Command line of the Prover service (typer).

Exit codes: 0 success; 2 bad input or any error (one clear line on stderr, no stack trace).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from protocol.errors import InvalidParameterError, ProtocolError
from protocol.sampling import seed_from_text, training_seeds
from protocol.signing import (
    create_key_file,
)
from protocol.tasks import load_task, spec_hash
from prover_service.attribution.calibration import RECOMMENDED_CALIBRATION, read_scores
from prover_service.errors import ServiceError
from prover_service.publishing import attribute as api_attribute
from prover_service.publishing import publish as api_publish
from prover_service.training import draw_training_set, read_masks, train_to_file, write_npz

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prover service.")
_err = Console(stderr=True)

TaskOpt = Annotated[str, typer.Option(help="Task: a built-in name[:k=v,...] or FILE.py:FACTORY.")]
ExecutorOpt = Annotated[
    str, typer.Option(help="Where trainings run: local (this process) or ray (pip install .[ray]).")
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(help="Ray cluster to join (HOST:6379 or ray://HOST:10001); default RAY_ADDRESS "
                 "or a local instance."),
]  # fmt: skip


ScoresOpt = Annotated[
    Path | None,
    typer.Option(help="Outside scores: .npy, .npz, .pt, TRAK's scores/*.mmap or .csv; (Z, N) or "
                 "(N, Z) (see --orientation)."),
]  # fmt: skip
OrientationOpt = Annotated[
    str | None,
    typer.Option(help="train-by-target ((N, Z), as TRAK and dattri write) or target-by-train "
                 "((Z, N)); inferred from the shape when N != Z, required when N = Z."),
]  # fmt: skip
KeyOpt = Annotated[
    str | None,
    typer.Option("--array-key", help="The array to read from an .npz or a .pt dict of several."),
]


def _warn(message: str) -> None:
    _err.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _say_quality(details: dict[str, object]) -> None:
    """The ``--evaluate`` figures in a sentence on stderr (they are in the JSON too)."""
    q = details.get("quality")
    if isinstance(q, dict):
        exact = f", err {q['err']:.4g} (exact)" if q.get("err") is not None else ""
        _note(f"on {q['held_out']:,} fresh held-out subsets: LDS {q['lds']:.3f} "
              f"(sd {q['lds_sd']:.3f} over targets), MSE {q['mse']:.4g}{exact}")  # fmt: skip


def _note(message: str) -> None:
    _err.print(f"note: {escape(message)}", highlight=False, soft_wrap=True)


def _progress_bar(show: bool) -> Progress:
    return Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=_err, transient=True, disable=not show,
    )  # fmt: skip


def _fail(message: str) -> typer.Exit:
    _err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code=2)


@app.command()
def info(task: TaskOpt) -> None:
    """Print a task's spec and its hash as JSON."""
    try:
        t = load_task(task)
    except ProtocolError as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps({"task_hash": spec_hash(t), "spec": t.spec()}))


@app.command()
def train(
    task: TaskOpt,
    out: Annotated[
        Path, typer.Option(help="Output .npz: masks_packed, n_train, seeds, values (f), probes.")
    ],
    count: Annotated[int, typer.Option(help="Random subsets to train (ignored with --masks).")] = 0,
    seed: Annotated[str, typer.Option(help="Seed of masks and training seeds (int or hex).")] = "0",
    p: Annotated[float, typer.Option(help="Inclusion probability of the random subsets.")] = 0.5,
    masks: Annotated[Path | None, typer.Option(help=".npy (K, N) 0/1 or a train .npz.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
) -> None:
    """Train K subsets and write them in one .npz: masks_packed (bit-packed masks, with
    n_train), seeds, values (f, K x Z) and probes; reruns give identical bytes, on either
    executor."""
    from prover_service.executor import ExecutorUnavailable, make_executor, use_executor

    try:
        runner = make_executor(executor, ray_address)
    except ExecutorUnavailable as exc:
        raise _fail(str(exc)) from None
    try:
        t = load_task(task)
        key = seed_from_text(seed)
        if masks is not None:
            m = read_masks(masks, t.n_train)
            seeds = training_seeds(key, range(len(m)))
        else:
            m, seeds = draw_training_set(t, count, key, p)
        started = time.perf_counter()
        with _progress_bar(progress) as bar:
            job = bar.add_task(f"training {t.name}", total=len(m))
            with use_executor(runner):
                summary = train_to_file(
                    t, m, seeds, out, progress=lambda done, _n: bar.update(job, completed=done)
                )
    except ProtocolError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot write {str(out)!r}: {exc.strerror}") from None
    except RuntimeError as exc:  # the executor's: ChunkLost, a cluster that went away
        raise _fail(f"{type(exc).__name__}: {exc}") from None
    finally:
        runner.close()
    seconds = time.perf_counter() - started
    summary |= {"task": t.name, "seconds": round(seconds, 3),
                "models_per_second": round(len(m) / max(seconds, 1e-9), 2)}  # fmt: skip
    typer.echo(json.dumps(summary))


@app.command()
def attribute(
    task: TaskOpt,
    method: Annotated[
        str,
        typer.Option(
            help="influence, ridge, lasso, loo, daunce, daunce-blackbox, trak, dattri-if or "
            "import; settings after a colon, e.g. trak:proj_dim=128"
        ),
    ],
    budget: Annotated[int, typer.Option(help="Trainings to spend (calibration ones included).")],
    p: Annotated[float, typer.Option(help="Inclusion probability of the sampled subsets.")] = 0.5,
    seed: Annotated[
        str, typer.Option(help="Seed of every subset and perturbation (int or hex).")
    ] = "0",
    scores: ScoresOpt = None,
    orientation: OrientationOpt = None,
    key: KeyOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the datamodel .npz here.")] = None,
    evaluate: Annotated[
        int, typer.Option(help="Also report LDS and MSE on N fresh held-out subsets (N trainings).")
    ] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Compute an attribution (a datamodel) and print a summary as JSON. With --method import,
    the scores' format, shape and orientation are checked before any training, and the
    calibration's quality is reported (warnings on stderr)."""
    try:
        t = load_task(task)
        started = time.perf_counter()
        loaded = None
        if scores is not None and method == "import":
            loaded = read_scores(scores, t, orientation, key)
            if loaded.inferred:
                _note(loaded.note())
        with _progress_bar(progress) as bar:
            job = bar.add_task(f"{method} on {t.name}", total=budget)
            result = api_attribute(
                t, method, budget, p=p, seed=seed, scores=loaded if loaded else scores,
                orientation=orientation, key=key, evaluate=evaluate,
                progress=lambda done, total: bar.update(job, completed=done, total=total),
            )  # fmt: skip
        for warning in result.details.get("warnings", []):
            _warn(warning)
        _say_quality(result.details)
        dm = result.datamodel
        if out is not None:
            write_npz(out, {
                "intercept": dm.intercept, "weights": dm.weights,
                "content_hash": np.array(dm.content_hash), "method": np.array(result.method),
                "trainings": np.array(result.trainings), "task_hash": np.array(spec_hash(t)),
                "p": np.array(p), "details": np.array(json.dumps(result.details)),
            })  # fmt: skip
    except ProtocolError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot write {str(out)!r}: {exc.strerror}") from None
    summary = {
        "task": t.name, "method": result.method, "trainings": result.trainings,
        "content_hash": dm.content_hash, "n_targets": dm.n_targets, "n_train": dm.n_train,
        "mean_abs_weight": float(np.abs(dm.weights).mean()),
        "seconds": round(time.perf_counter() - started, 3),
        "details": {k: v for k, v in result.details.items() if k != "lambda"},
        "file": None if out is None else str(out),
    }  # fmt: skip
    typer.echo(json.dumps(summary))


@app.command()
def publish(
    task: TaskOpt,
    datamodel: Annotated[
        Path | None,
        typer.Option(
            help="A complete outside datamodel: .npz with intercept (Z,) and weights, "
            "published as it is (no training)."
        ),
    ] = None,
    scores: ScoresOpt = None,
    budget: Annotated[
        int, typer.Option(help="Calibration trainings for --scores (64 or more advised).")
    ] = RECOMMENDED_CALIBRATION,
    orientation: OrientationOpt = None,
    key: KeyOpt = None,
    p: Annotated[
        float, typer.Option(help="Inclusion probability of the calibration subsets.")
    ] = 0.5,
    seed: Annotated[str, typer.Option(help="Seed of the calibration subsets (int or hex).")] = "0",
    tool: Annotated[str, typer.Option(help="The outside tool (traker, dattri, ...).")] = "unknown",
    tool_version: Annotated[str, typer.Option(help="Its version.")] = "",
    setting: Annotated[
        list[str] | None,
        typer.Option(help="A setting of the tool, NAME=VALUE (repeatable), signed as provenance."),
    ] = None,
    outside_trainings: Annotated[
        int,
        typer.Option(
            help="Trainings the tool spent (its checkpoints); counted in the manifest's trainings."
        ),
    ] = 0,
    db: Annotated[
        str, typer.Option(help="The Prover's database (as serve --db).")
    ] = "sqlite:///prover.db",
    prover_key: Annotated[
        Path | None, typer.Option("--key", help="The Prover's signing key (keygen), as serve.")
    ] = None,
    prover_key_env: Annotated[
        str | None, typer.Option("--key-env", help="Env variable holding the PEM key.")
    ] = None,
    evaluate: Annotated[
        int, typer.Option(help="Also report LDS and MSE on N fresh held-out subsets (N trainings).")
    ] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Publish an outside attribution into the Prover's database, signed, with its provenance
    (tool, version, settings, outside trainings) in the manifest; serve --db then serves it.
    Prints the content hash and the calibration's figures as JSON; warnings go to stderr."""
    try:
        settings = _parse_settings(setting or [])
        started = time.perf_counter()
        with _progress_bar(progress and scores is not None) as bar:
            job = bar.add_task(f"calibrating on {task}", total=budget)
            result = api_publish(
                task, datamodel=datamodel, scores=scores, budget=budget, p=p, seed=seed,
                orientation=orientation, key=key, tool=tool, tool_version=tool_version,
                settings=settings, outside_trainings=outside_trainings, db=db,
                prover_key=prover_key, prover_key_env=prover_key_env, evaluate=evaluate,
                progress=lambda done, total: bar.update(job, completed=done, total=total),
            )  # fmt: skip
    except ProtocolError as exc:
        raise _fail(str(exc)) from None
    except ServiceError as exc:
        raise _fail(exc.detail) from None
    except OSError as exc:
        raise _fail(f"cannot publish: {exc}") from None
    for note in result.notes:
        _note(note)
    for warning in result.warnings:
        _warn(warning)
    _say_quality(result.details)
    typer.echo(json.dumps(result.as_dict() | {"seconds": round(time.perf_counter() - started, 3)}))


def _parse_settings(items: list[str]) -> dict[str, object]:
    """NAME=VALUE pairs; a VALUE that parses as JSON (a number, true/false) keeps its type."""
    out: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidParameterError(f"--setting must be NAME=VALUE; got {item!r}")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out[name] = parsed if isinstance(parsed, str | int | float | bool) else value
    return out


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="Where to write the Ed25519 key (PEM, 0600).")],
) -> None:
    """Create the Prover's signing key; prints its public key and fingerprint."""
    try:
        typer.echo(json.dumps(create_key_file(out)))
    except ProtocolError as exc:
        raise _fail(str(exc)) from None


@app.command()
def serve(
    task: Annotated[list[str], typer.Option(help="Task to serve (repeatable).")],
    key: Annotated[Path | None, typer.Option(help="Signing key file (see keygen).")] = None,
    key_env: Annotated[str | None, typer.Option(help="Env variable holding the PEM key.")] = None,
    db: Annotated[
        str,
        typer.Option(
            show_default=False,
            help="SQLAlchemy URL of the database, or a file path (SQLite); default "
            "sqlite:///prover.db.",
        ),
    ] = "sqlite:///prover.db",
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    adversary: Annotated[str | None, typer.Option(help="Cheat (tests and demos): SPEC.")] = None,
    public_transcripts: Annotated[
        bool,
        typer.Option(
            "--public-transcripts",
            rich_help_panel="Switches",
            show_default=False,
            help="Anyone may read sessions, responses, arrays, transcripts (default: off).",
        ),
    ] = False,
    check_tasks: Annotated[
        bool,
        typer.Option(
            rich_help_panel="Switches",
            show_default=False,
            help="Check each task's declared tau at start-up (check-task, short; default: on).",
        ),
    ] = True,
    verifier_keys: Annotated[
        Path | None, typer.Option(help="Allow-list: one Verifier public key (hex) per line.")
    ] = None,
    open_registration: Annotated[
        bool,
        typer.Option(
            "--open-registration",
            rich_help_panel="Switches",
            show_default=False,
            help="Without --verifier-keys, let any key spend compute within its "
            "quotas even on a public address (loopback always may; default: off).",
        ),
    ] = False,
    max_budget: Annotated[int, typer.Option(help="Largest attribution budget.")] = 100_000,
    max_subsets: Annotated[int, typer.Option(help="Largest challenge |E|.")] = 250_000,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
) -> None:
    """Run the Prover service (FastAPI on uvicorn, with header and body time-outs and
    connection caps: prover_service/server.py); checks each task's declared tau, its database
    and every stored array first (one line and exit 2 if damaged), then resumes unfinished
    jobs. On an address other than loopback it needs --verifier-keys (an allow-list) or
    --open-registration. More settings (quotas, disk, time-outs) come from VDA_PROVER_*
    variables (prover_service/settings.py)."""
    import uvicorn
    from pydantic import ValidationError

    from prover_service.app import create_app
    from prover_service.errors import ServiceError
    from prover_service.executor import ExecutorUnavailable
    from prover_service.server import server_config
    from prover_service.settings import Settings
    from prover_service.task_check import check_served_tasks

    try:
        settings = Settings(db=db, key_file=key, key_env=key_env, tasks=task, adversary=adversary,
                            public_transcripts=public_transcripts, check_tasks=check_tasks,
                            verifier_keys_file=verifier_keys, max_budget=max_budget,
                            max_subsets=max_subsets, executor=executor,  # type: ignore[arg-type]  # pydantic validates the str: 'bad setting executor'
                            ray_address=ray_address)  # fmt: skip
        if (
            not _loopback(host)
            and not open_registration
            and not (settings.verifier_keys or settings.verifier_keys_file)
        ):
            raise _fail(
                f"refusing to serve {host} with open registration: give --verifier-keys FILE "
                "(an allow-list), or --open-registration to let any key in within its quotas"
            )
        if check_tasks:
            for ref, advice in check_served_tasks(task, settings.resolved_array_dir()):
                raise _fail(f"refusing to serve {ref!r}: {advice}")
        application = create_app(settings)
        started = time.perf_counter()
        bad = application.state.service.check_integrity()
        if bad:
            where = settings.resolved_array_dir()
            raise _fail(
                f"array store {str(where)!r} is damaged: {len(bad)} file(s) do not "
                f"match their SHA-256 names (first: {bad[0]}); remove them, restart"
            )
        _err.print(f"integrity check: database and arrays ok in "
                   f"{time.perf_counter() - started:.2f} s", highlight=False)  # fmt: skip
    except (ProtocolError, ServiceError) as exc:
        raise _fail(str(exc.detail if isinstance(exc, ServiceError) else exc)) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _fail(f"bad setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    except OSError as exc:
        raise _fail(f"cannot start: {exc}") from None
    except ExecutorUnavailable as exc:
        raise _fail(str(exc)) from None
    uvicorn.Server(server_config(application, settings, host, port)).run()


def _loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or name (only this machine can connect)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command("check-task")
def check_task_cmd(
    task: TaskOpt,
    rows: Annotated[int, typer.Option(help="Rows (subsets) to train in every variant.")] = 12,
    processes: Annotated[
        bool, typer.Option(help="Also 1/2 threads and the baseline instruction set (subprocesses).")
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Measure how far honest runs of the same (mask, seed) differ (alone, in batches,
    shuffled, repeated, at 1 and 2 threads, on both instruction sets) and say what tau to
    declare; exit 1 when the task's declared tau is smaller than what was measured."""
    from prover_service.task_check import check_task

    try:
        with _err.status("checking") as status:
            report = check_task(
                task, rows, processes=processes,
                progress=lambda what: status.update(f"checking {task}: {what}"),
            )  # fmt: skip
    except ProtocolError as exc:
        raise _fail(str(exc)) from None
    if json_out:
        typer.echo(json.dumps(report.as_dict()))
    else:
        from rich.table import Table

        table = Table(title=f"check-task {task} ({rows} rows)")
        for col in ("variant", "largest |difference|", "bit-identical"):
            table.add_column(col, justify="right")
        for name, diff in report.differences.items():
            table.add_row(name, f"{diff:.3g}", "yes" if report.identical[name] else "no")
        Console().print(table)
        colour = "green" if report.ok else "red"
        Console().print(f"[{colour}]declared tau = {report.declared_tau:g}; {report.advice()}[/]")
    raise typer.Exit(code=0 if report.ok else 1)


def main() -> None:
    """Entry point of ``python -m prover_service`` and the ``vda-prover`` script."""
    app()
