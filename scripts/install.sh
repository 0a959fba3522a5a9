#!/usr/bin/env bash
# Creates (or reuses) a virtual environment and installs the project with its dev tools.
# The same script installs the Docker images, so what the tests run is what ships.
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-dev}
cd "$(dirname "$0")/.."
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first and pinned: 2.13.0 is the CPU wheel on disk; anything looser pulls a CUDA build.
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet -e ".[${EXTRAS}]"
