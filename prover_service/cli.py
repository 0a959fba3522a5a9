"""Command line of the Prover service (typer).

Only the read-only task listing exists so far; ``serve``, ``train`` and ``attribute`` arrive
with their issues.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from protocol.errors import ProtocolError
from protocol.tasks import load_task, spec_hash

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prover service.")


@app.command()
def info(
    task: Annotated[str, typer.Option(help="Task: a built-in name[:k=v,...] or FILE.py:FACTORY.")],
) -> None:
    """Print a task's spec and its hash as JSON."""
    try:
        t = load_task(task)
    except ProtocolError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(json.dumps({"task_hash": spec_hash(t), "spec": t.spec()}))


@app.callback()
def _root() -> None:
    """Prover service for verifiable data attribution."""


def main() -> None:
    """Entry point of ``python -m prover_service`` and the ``vda-prover`` script."""
    app()
