"""Every command's ``--help`` reads whole at 80 columns: no option name or type cut with an
ellipsis (rich shrinks a crowded options table's columns)."""

from __future__ import annotations

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from prover_service.cli import app as prover_app
from verifier_client.cli import app as verifier_app

APPS = {"vda-prover": prover_app, "vda-verifier": verifier_app}
COMMANDS = [(name, cmd) for name, app in APPS.items()
            for cmd in get_command(app).commands]  # type: ignore[attr-defined]  # fmt: skip


@pytest.mark.parametrize(("program", "command"), COMMANDS)
def test_help_at_80_columns_cuts_no_option(program: str, command: str) -> None:
    out = CliRunner().invoke(APPS[program], [command, "--help"], env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
    cut = [line for line in out.stdout.splitlines() if "\u2026" in line]
    assert not cut, f"{program} {command} --help at 80 columns: {cut}"
    params = get_command(APPS[program]).commands[command].params  # type: ignore[attr-defined]
    for p in params:
        for opt in getattr(p, "opts", []):
            if opt.startswith("--"):
                assert opt in out.stdout, f"{program} {command}: {opt} missing"
