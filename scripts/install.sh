#!/usr/bin/env bash
# Creates (or reuses) a virtual environment and installs the project.
# The same script installs the Docker images, so what the tests run is what ships.
#   VENV    where the environment lives (default .venv)
#   PYTHON  interpreter that creates it (default python3)
#   EXTRAS  optional dependency groups (default dev,ray,trak,dattri: what the tests need; "" for a
#           runtime-only image, "ray" for a Prover that fans out on Ray)
#   TORCH_INDEX_URL  where torch comes from (images set the CPU or CUDA wheel index)
# Every version is pinned by constraints.txt (regenerate it with `make constraints`), so CI, a
# developer's .venv and the images install the same packages.
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS-dev,ray,trak,dattri}
cd "$(dirname "$0")/.."
PIN=()
[ -f constraints.txt ] && PIN=(-c constraints.txt)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first and pinned: on this project's machines 2.13.0 is the CPU wheel on disk; a looser
# requirement pulls a multi-GB CUDA build.
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "$VENV/bin/python" -m pip install --quiet ${PIN[@]+"${PIN[@]}"} "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
else
  "$VENV/bin/python" -m pip install --quiet ${PIN[@]+"${PIN[@]}"} "torch==2.13.0"
fi
if [ -n "$EXTRAS" ]; then
  "$VENV/bin/python" -m pip install --quiet ${PIN[@]+"${PIN[@]}"} -e ".[${EXTRAS}]"
else
  "$VENV/bin/python" -m pip install --quiet ${PIN[@]+"${PIN[@]}"} -e .
fi
