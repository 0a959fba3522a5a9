"""The dependency direction of the design card, checked by walking every import.

``protocol`` is pure: it imports neither service nor any web/database library; the services
never import each other. Public ``__all__`` lists are sorted and name real objects.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
FORBIDDEN = {
    "protocol": {
        "prover_service",
        "verifier_client",
        "fastapi",
        "uvicorn",
        "httpx",
        "sqlalchemy",
        "starlette",
        "requests",
        "typer",
        "rich",
    },
    "prover_service": {"verifier_client"},
    "verifier_client": {"prover_service"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependency_direction(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no modules"
    for path in files:
        bad = _imports(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "module",
    [
        "protocol",
        "protocol.sampling",
        "protocol.residual",
        "protocol.budget",
        "protocol.datamodel",
        "protocol.tasks",
        "protocol.errors",
        "protocol.codec",
        "protocol.evaluation",
        "protocol.signing",
        "protocol.messages",
        "protocol.checkequiv",
        "protocol.decision",
        "protocol.wire",
        "protocol.transcript",
        "protocol.witness_route",
        "prover_service.api.schemas",
        "verifier_client.client",
    ],
)
def test_public_api_is_sorted_and_real(module: str) -> None:
    mod = importlib.import_module(module)
    names = list(mod.__all__)
    assert names == sorted(names)
    for name in names:
        assert hasattr(mod, name), f"{module}.__all__ names missing {name}"


def test_layout_of_the_design_card_exists() -> None:
    for part in ("protocol", "prover_service", "verifier_client", "tests", "docker", "docs"):
        assert (ROOT / part).is_dir(), part
    assert (ROOT / "docker-compose.yml").is_file()
