"""What every command of the Verifier's command line shares: the error line (exit 2), the
``--db``, ``--json`` and ``--task`` options, and stderr's console."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["DbOpt", "JsonOpt", "TaskOpt", "db_url", "err_console", "fail"]

err_console = Console(stderr=True)

TaskOpt = Annotated[str, typer.Option(help="Task: a built-in name[:k=v,...] or FILE.py:FACTORY.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on stderr; the exit (code 2) to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def db_url(db: str | None) -> str | None:
    """``--db``: a SQLAlchemy URL, or a bare file path taken as SQLite. A file in a folder that
    does not exist, or a URL of no known database, is one line and exit 2 (not created)."""
    if db is None:
        return None
    url = db if "://" in db else f"sqlite:///{Path(db).expanduser()}"
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        folder = Path(url.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise fail(f"cannot create database {db!r}: folder {str(folder)!r} does not exist")
    from sqlalchemy.engine import make_url  # here, not at import: --help stays fast
    from sqlalchemy.exc import SQLAlchemyError

    try:
        make_url(url).get_dialect()
    except (SQLAlchemyError, ValueError) as exc:
        raise fail(f"--db {db!r} is not a database URL (or a file path): {exc}") from None
    return url


DbOpt = Annotated[
    str, typer.Option(help="SQLAlchemy URL of the records, or a file (SQLite).", callback=db_url)
]
