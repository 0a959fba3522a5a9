#!/usr/bin/env bash
# Creates (or reuses) a virtual environment and installs the project.
# The same script installs the Docker images, so what the tests run is what ships.
#   VENV    where the environment lives (default .venv)
#   PYTHON  interpreter that creates it (default python3)
#   EXTRAS  optional dependency groups (default dev,ray,trak,dattri: what the tests need; "" for a
#           runtime-only image, "ray" for a Prover that fans out on Ray)
#   TORCH_INDEX_URL  where torch comes from; overrides the choice below (the images set it)
#   TORCH_CUDA_INDEX_URL  the CUDA wheel index for a GPU machine whose pip sources offer only
#           a CPU build (default https://download.pytorch.org/whl/cu128)
#   VDA_INSTALL_DRY_RUN=1  print the commands that would change the environment, run none
#
# torch 2.13.0 is installed first, from where the machine needs it:
#   - TORCH_INDEX_URL set: from there;
#   - an NVIDIA GPU (nvidia-smi lists one): the CUDA build (pip's sources if they offer one,
#     else TORCH_CUDA_INDEX_URL);
#   - no GPU: a CPU build (pip's configured sources if they offer one, e.g. a local wheel
#     folder, else PyTorch's CPU index: plain PyPI would pull a multi-GB CUDA build).
# What pip's sources offer is read from `pip install --dry-run --report` (metadata only): a CPU
# wheel has a `+cpu` version or no nvidia-* dependency.
# Every version is pinned by constraints.txt (regenerate it with `make constraints`), so CI, a
# developer's .venv and the images install the same packages.
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS-dev,ray,trak,dattri}
TORCH=torch==2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu
CUDA_INDEX=${TORCH_CUDA_INDEX_URL:-https://download.pytorch.org/whl/cu128}
DRY=${VDA_INSTALL_DRY_RUN:-}
cd "$(dirname "$0")/.."
PIN=()
[ -f constraints.txt ] && PIN=(-c constraints.txt)

run() {  # a command that changes the environment: printed in a dry run, else run
  if [ -n "$DRY" ]; then printf '%s\n' "$*"; else "$@"; fi
}

has_gpu() {  # nvidia-smi present and listing at least one GPU
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '
}

offered_build() {  # what pip's configured sources would install for torch: cpu, cuda or none
  local report
  local py="$VENV/bin/python"
  [ -x "$py" ] || py=$PYTHON  # a dry run before the venv exists
  report=$(mktemp)
  if ! "$py" -m pip install --dry-run --no-deps --ignore-installed --quiet \
      --report "$report" "$TORCH" >/dev/null 2>&1; then
    rm -f "$report"; echo none; return
  fi
  "$PYTHON" - "$report" <<'PY'
import json, sys
try:
    meta = json.load(open(sys.argv[1]))["install"][0]["metadata"]
except (OSError, ValueError, KeyError, IndexError):
    print("none")
    raise SystemExit
version, deps = meta.get("version", ""), meta.get("requires_dist") or []
cuda = "+cu" in version or any(d.lower().startswith("nvidia-") for d in deps)
print("cpu" if "+cpu" in version or not cuda else "cuda")
PY
  rm -f "$report"
}

torch_index() {  # the --index-url for torch, or "" for pip's configured sources
  if [ -n "${TORCH_INDEX_URL:-}" ]; then echo "$TORCH_INDEX_URL"; return; fi
  local offered
  offered=$(offered_build)
  if has_gpu; then
    [ "$offered" = cuda ] && echo "" || echo "$CUDA_INDEX"
  else
    [ "$offered" = cpu ] && echo "" || echo "$CPU_INDEX"
  fi
}

[ -x "$VENV/bin/python" ] || run "$PYTHON" -m venv "$VENV"
run "$VENV/bin/python" -m pip install --quiet --upgrade pip
INDEX=$(torch_index)
if [ -n "$INDEX" ]; then
  run "$VENV/bin/python" -m pip install --quiet ${PIN[@]+"${PIN[@]}"} "$TORCH" --index-url "$INDEX"
else
  run "$VENV/bin/python" -m pip install --quiet ${PIN[@]+"${PIN[@]}"} "$TORCH"
fi
if [ -n "$EXTRAS" ]; then
  run "$VENV/bin/python" -m pip install --quiet ${PIN[@]+"${PIN[@]}"} -e ".[${EXTRAS}]"
else
  run "$VENV/bin/python" -m pip install --quiet ${PIN[@]+"${PIN[@]}"} -e .
fi
