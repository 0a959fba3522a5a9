"""scripts/install.sh's choice of torch build, through its dry run (``VDA_INSTALL_DRY_RUN=1``):
the pip commands it would run, on a fake environment whose ``python -m pip install --dry-run
--report`` answers as pip's configured sources would, with and without a fake ``nvidia-smi``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
CPU_WHEEL = {"version": "2.13.0+cpu", "requires_dist": ["filelock", "sympy>=1.13.3"]}
CUDA_WHEEL = {"version": "2.13.0", "requires_dist": [
    "filelock", 'nvidia-cuda-runtime-cu12==12.8.90; platform_system == "Linux"']}  # fmt: skip

FAKE_PYTHON = """#!/usr/bin/env bash
# pip as the configured sources would answer: --report writes the metadata of $OFFERED
echo "$*" >> "$CALLS"
if [[ " $* " == *" --dry-run "* ]]; then
  [ -n "$OFFERED" ] || exit 1
  while [ $# -gt 0 ]; do
    if [ "$1" = --report ]; then
      printf '{"install": [{"metadata": %s}]}' "$OFFERED" > "$2"; fi
    shift
  done
fi
"""


def _install(tmp_path: Path, offered: dict | None, gpu: bool, **env: str) -> list[str]:  # type: ignore[type-arg]
    """The torch command the dry run prints, with the fake pip's calls checked."""
    venv, bin_dir = tmp_path / "venv", tmp_path / "bin"
    (venv / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    fake = venv / "bin" / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    if gpu:
        smi = bin_dir / "nvidia-smi"
        smi.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H100 (UUID: GPU-0)"\n')
        smi.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), *(d for d in os.environ["PATH"].split(os.pathsep)
                                            if not (Path(d) / "nvidia-smi").exists())])  # fmt: skip
    calls = tmp_path / "calls"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install.sh")],
        env={"PATH": path, "HOME": str(tmp_path), "VENV": str(venv), "PYTHON": sys.executable,
             "VDA_INSTALL_DRY_RUN": "1", "CALLS": str(calls),
             "OFFERED": json.dumps(offered) if offered else "", **env},  # fmt: skip
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    probes = calls.read_text().splitlines() if calls.exists() else []
    # a dry run changes nothing: only the metadata probe reached pip
    assert all("--dry-run" in c for c in probes), probes
    (torch,) = [line for line in printed if "torch==2.13.0" in line]
    assert any(line.endswith("-e .[dev,ray,trak,dattri]") for line in printed)
    return torch.split()


def _index(argv: list[str]) -> str | None:
    return argv[argv.index("--index-url") + 1] if "--index-url" in argv else None


def test_no_gpu_and_a_cpu_wheel_in_pips_sources_takes_it(tmp_path: Path) -> None:
    assert _index(_install(tmp_path, CPU_WHEEL, gpu=False)) is None


def test_no_gpu_and_only_a_cuda_wheel_takes_the_cpu_index(tmp_path: Path) -> None:
    assert _index(_install(tmp_path, CUDA_WHEEL, gpu=False)) == CPU_INDEX


def test_no_gpu_and_no_wheel_at_all_takes_the_cpu_index(tmp_path: Path) -> None:
    assert _index(_install(tmp_path, None, gpu=False)) == CPU_INDEX


def test_a_gpu_takes_the_cuda_build(tmp_path: Path) -> None:
    assert _index(_install(tmp_path / "a", CUDA_WHEEL, gpu=True)) is None
    # pip's sources offer only a CPU build: the CUDA index instead
    assert _index(_install(tmp_path / "b", CPU_WHEEL, gpu=True)) == CUDA_INDEX


def test_torch_index_url_overrides_the_choice(tmp_path: Path) -> None:
    argv = _install(tmp_path, CPU_WHEEL, gpu=True, TORCH_INDEX_URL="https://example.org/whl")
    assert _index(argv) == "https://example.org/whl"


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a real GPU here")
def test_this_machine_the_dry_run_prints_a_cpu_choice(tmp_path: Path) -> None:
    """On this (GPU-less) machine with the real pip: the configured sources' wheel if it is a
    CPU one, else the CPU index; never plain PyPI's CUDA build."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")],
                          env={**os.environ, "VENV": str(Path(sys.executable).parents[1]),
                               "VDA_INSTALL_DRY_RUN": "1"},  # fmt: skip
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (torch,) = [line for line in done.stdout.splitlines() if "torch==2.13.0" in line]
    report = tmp_path / "r.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps",
                    "--ignore-installed", "--quiet", "--report", str(report), "torch==2.13.0"],
                   capture_output=True, timeout=300, check=False)  # fmt: skip
    offered = json.loads(report.read_text())["install"][0]["metadata"] if report.exists() else {}
    if "+cpu" in offered.get("version", ""):
        assert "--index-url" not in torch
    else:
        assert CPU_INDEX in torch
