"""The image's file tree, built without a Docker engine: what docker/Dockerfile COPYs from the
build context that .dockerignore leaves, installed by the same scripts/install.sh with the same
constraints.txt, and its entry points run.

The install goes into a fresh virtual environment whose dependencies resolve against this
environment's site-packages (a ``.pth`` line), so pip installs the project from the image tree
and finds every pinned dependency already there instead of downloading torch again.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def copy_sources() -> list[str]:
    """The context paths the Dockerfile COPYs (``COPY src... dest``; no --from stages)."""
    sources: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"]:
            args = [w for w in words[1:] if not w.startswith("--")]
            assert not any(w.startswith("--from") for w in words), line
            sources += args[:-1]
    return sources


def ignore_patterns() -> list[str]:
    """.dockerignore's patterns (comments and blank lines dropped; no ``!`` exceptions)."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip().strip("/") for p in lines if p.strip() and not p.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not modelled here"
    return patterns


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: a path is left out if it or any folder above it matches a pattern
    (``**`` matches any number of folders)."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(prefix.split("/")[-1],
                                                                 pattern[3:]):  # fmt: skip
                return True
    return False


def build_context_tree(dest: Path) -> list[str]:
    """Copy what the image gets into ``dest``; the relative paths copied."""
    patterns = ignore_patterns()
    copied: list[str] = []
    for source in copy_sources():
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        assert not ignored(source, patterns), f"COPY {source}: left out by .dockerignore"
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            rel = file.relative_to(ROOT).as_posix()
            if ignored(rel, patterns):
                continue
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, dest / rel)
            copied.append(rel)
    return copied


def test_dockerignore_keeps_the_build_context_small() -> None:
    patterns = ignore_patterns()
    for heavy in (".venv", ".git", "verifier.db", "prover.key", "arrays", "out",
                  "prover_service/__pycache__/app.cpython-311.pyc", "x.egg-info"):  # fmt: skip
        assert ignored(heavy, patterns), heavy
    for needed in ("pyproject.toml", "constraints.txt", "scripts/install.sh",
                   "prover_service/templates/audit.html", "protocol/__init__.py"):  # fmt: skip
        assert not ignored(needed, patterns), needed


def test_dockerfile_owns_data_exposes_the_port_and_pins_installs() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"mkdir -p /data && chown vda:vda /data", text)
    assert "VOLUME /data" in text and "EXPOSE 8000" in text
    assert text.index("chown vda:vda /data") < text.index("USER vda")
    assert "constraints.txt" in copy_sources()
    assert re.search(r"^RUN .*bash scripts/install\.sh", text, re.M)
    assert "-c constraints.txt" in (ROOT / "scripts" / "install.sh").read_text()


@pytest.mark.slow
def test_the_image_tree_installs_through_install_sh_and_its_commands_run(tmp_path: Path) -> None:
    app = tmp_path / "app"
    copied = build_context_tree(app)
    assert "prover_service/templates/audit.html" in copied
    assert not any(p.startswith(("tests/", ".venv/", "docs/")) for p in copied)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (site / "here.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "VENV": str(venv), "EXTRAS": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", str(app / "scripts" / "install.sh")], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    python = venv / "bin" / "python"
    where = subprocess.run(
        [str(python), "-c", "import prover_service, verifier_client, protocol; "
         "print(prover_service.__file__, verifier_client.__file__, protocol.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert all(Path(p).is_relative_to(app) for p in where), where
    modules = sorted(
        ".".join(p.relative_to(app).with_suffix("").parts).removesuffix(".__init__")
        for pkg in ("protocol", "prover_service", "verifier_client")
        for p in (app / pkg).rglob("*.py")
    )
    # every module but the entry points (they run the CLI) and those needing an extra
    wanted = [m for m in modules if not m.endswith("__main__") and m not in EXTRA_MODULES]
    script = f"import importlib\nfor name in {wanted!r}:\n    importlib.import_module(name)\n"
    imported = subprocess.run([str(python), "-c", script], cwd=tmp_path, capture_output=True,
                              text=True)  # fmt: skip
    assert imported.returncode == 0, imported.stderr[-2000:]
    for command in ([str(python), "-m", "prover_service", "--help"],
                    [str(python), "-m", "verifier_client", "--help"],
                    [str(venv / "bin" / "vda-prover"), "--help"],
                    [str(venv / "bin" / "vda-verifier"), "--help"]):  # fmt: skip
        ran = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
        assert ran.returncode == 0 and "Usage" in ran.stdout, (command, ran.stderr[-800:])


# Runtime dependencies no module imports by name, and why they are still needed.
INDIRECT = {
    "jinja2": "fastapi.templating renders the /audit page with it",
    "scipy": "protocol/distributions.py imports scipy.stats by name on first use (importlib)",
}
# Modules that need an optional extra at import time (never imported unless it is chosen).
EXTRA_MODULES = {"prover_service.ray_executor": "ray"}


def _imports(first_party: tuple[str, ...]) -> tuple[dict[str, set[str]], set[str]]:
    """Third-party top-level names imported at module level (name -> modules), and all names
    imported anywhere (lazy imports in functions included)."""
    import ast

    module_level: dict[str, set[str]] = {}
    anywhere: set[str] = set()
    for pkg in first_party:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            module = module.removesuffix(".__init__")
            tree = ast.parse(path.read_text())
            top = set(map(id, tree.body))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module.split(".")[0]]
                else:
                    continue
                for name in names:
                    if name in sys.stdlib_module_names or name in first_party:
                        continue
                    anywhere.add(name)
                    if id(node) in top:
                        module_level.setdefault(name, set()).add(module)
    return module_level, anywhere


def test_runtime_dependencies_are_what_the_packages_import() -> None:
    import importlib.metadata as md
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {Requirement(r).name.lower() for r in project["dependencies"]}
    extras = {k: {Requirement(r).name.lower() for r in v}
              for k, v in project["optional-dependencies"].items()}  # fmt: skip
    for requirement in project["dependencies"]:
        req = Requirement(requirement)
        assert req.name == "torch" or any(s.operator == "<" for s in req.specifier), (
            f"{requirement}: give it an upper bound (below its next major)"
        )
    dists = md.packages_distributions()
    module_level, anywhere = _imports(("protocol", "prover_service", "verifier_client"))
    for name, modules in sorted(module_level.items()):
        owners = {d.lower() for d in dists.get(name, [name])}
        if modules <= set(EXTRA_MODULES):
            extra = {EXTRA_MODULES[m] for m in modules}
            assert all(owners & extras[e] for e in extra), (name, modules)
        else:
            assert owners & runtime, f"{name} (imported by {sorted(modules)}) is not a dependency"
    imported = {d.lower() for name in anywhere for d in dists.get(name, [name])}
    for dep in sorted(runtime - imported):
        assert dep in INDIRECT, (
            f"{dep} is a runtime dependency nothing imports: move it to an extra"
        )
    assert "matplotlib" not in runtime and "matplotlib" in extras["bench"]
