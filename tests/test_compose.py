"""The docker files, checked without a Docker engine: the compose file parses, its commands
exist with the flags it passes, and the image installs through the tests' install script."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.main import get_command

from prover_service.cli import app as prover_app
from verifier_client.cli import app as verifier_app

ROOT = Path(__file__).parents[1]


def _flags(app: object, command: str) -> set[str]:
    click_group = get_command(app)  # type: ignore[arg-type]
    cmd = click_group.commands[command]  # type: ignore[attr-defined]
    return {opt for param in cmd.params for opt in getattr(param, "opts", [])} | {
        opt for param in cmd.params for opt in getattr(param, "secondary_opts", [])
    }


def test_compose_commands_use_real_cli_flags() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    default = {n: s for n, s in doc["services"].items() if "profiles" not in s}
    assert set(default) == {"prover", "verifier"}
    assert {n for n, s in doc["services"].items() if "ray" in s.get("profiles", [])} == {
        "ray-head",
        "ray-worker",
        "prover-ray",
    }
    apps = {"verifier_client": verifier_app, "prover_service": prover_app}
    for name, service in doc["services"].items():
        if service.get("entrypoint") == ["ray"]:
            continue  # Ray's own CLI
        assert service["image"] in ("vda:latest", "vda-ray:latest"), name
        module, command, *rest = service["command"]
        flags = _flags(apps[module], command)
        used = {arg for arg in rest if arg.startswith("--")}
        assert used <= flags, f"{name}: unknown flags {sorted(used - flags)}"


def test_compose_demands_secrets_and_waits_for_a_healthy_prover() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    doc = yaml.safe_load(text)
    assert "${VDA_PROVER_KEY_PEM:?" in text and "${VDA_VERIFIER_KEY_PEM:?" in text
    assert doc["services"]["prover"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert "healthcheck" in doc["services"]["prover"]
    assert doc["services"]["verifier"]["depends_on"]["prover"]["condition"] == "service_healthy"
    for name in ("prover", "verifier", "prover-ray"):
        assert any(v.endswith(":/data") for v in doc["services"][name]["volumes"])


def test_image_installs_through_the_tests_install_script() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"RUN .*bash scripts/install\.sh", text)
    for package in ("protocol", "prover_service", "verifier_client"):
        assert f"COPY {package} ./{package}" in text
    assert "install.sh" in (ROOT / "Makefile").read_text()
