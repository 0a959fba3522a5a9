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


# -- the import graph between modules (issue 22) ---------------------------------------------
PACKAGES = ("protocol", "prover_service", "verifier_client")
# The Prover's outer layer: the only modules that may import its composition root.
SERVICE_USERS = {"prover_service.app", "prover_service.api.deps", "prover_service.publishing"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the modules of the three packages it imports: every import statement, at
    module level, in functions and under ``TYPE_CHECKING`` alike (a type-only import is a
    dependency of the design too). ``from a import b`` counts a.b if it is a module, else a."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                out.update(r for a in node.names if (r := resolve(a.name)))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    r = full if full in mods else resolve(base)
                    if r:
                        out.add(r)
        out.discard(mod)
        graph[mod] = out
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules() -> None:
    graph = _graph()
    assert len(graph) > 100  # the walk found the packages' modules
    assert _cycles(graph) == []


def test_no_part_of_the_prover_reaches_back_into_the_service() -> None:
    """The composition root (``prover_service.service``) builds the parts; only the outer layer
    (the app, the API's dependency, the Python API) imports it, and no signature anywhere takes
    an ``Any``-typed service."""
    graph = _graph()
    users = {m for m, out in graph.items() if "prover_service.service" in out}
    assert users <= SERVICE_USERS, sorted(users - SERVICE_USERS)
    untyped = re.compile(r"\b(svc|service)\s*:\s*Any\b")
    for mod, path in _modules().items():
        assert not untyped.search(path.read_text()), f"{mod} takes an Any-typed service"
