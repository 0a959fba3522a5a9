"""The dependency direction of the design card, checked by walking every import.

``protocol`` is pure: it imports neither service nor any web/database library; the services
never import each other. Public ``__all__`` lists are sorted and name real objects.
"""

from __future__ import annotations

import ast
import importlib
import re
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


def _cited_sources() -> list[Path]:
    code = [p for pkg in FORBIDDEN for p in sorted((ROOT / pkg).rglob("*.py"))]
    return [*code, ROOT / "docs" / "service.md"]


def test_protocol_citations_name_sections_of_docs_protocol_md() -> None:
    """The code (and so /openapi.json) and docs/service.md cite docs/protocol.md by anchor;
    every anchor cited exists, and nothing cites PROTOCOL.md, which lives outside the repo."""
    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', (ROOT / "docs/protocol.md").read_text()))
    assert {"datamodels", "noise-stability", "two-message-protocol", "certificate"} <= anchors
    cited: set[str] = set()
    for path in _cited_sources():
        text = path.read_text()
        where = path.relative_to(ROOT)
        assert "PROTOCOL.md" not in text, f"{where} cites PROTOCOL.md, not in this repository"
        found = re.findall(r"protocol\.md#([a-z0-9-]+)", text)
        missing = set(found) - anchors
        assert not missing, f"{where} cites docs/protocol.md#{sorted(missing)}, no such anchor"
        cited.update(found)
    assert cited, "no citation of docs/protocol.md found"
