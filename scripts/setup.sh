#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: system libraries for GPAW, the project venv (.venv) with a
# CPU build of torch pinned first (so nothing pulls a multi-GB CUDA build), matfunnel and its extras.
# Usage: scripts/setup.sh [--with-mongoeco]     (re-running is cheap: a stamp records what is done)
set -euo pipefail
cd "$(dirname "$0")/.."

# Python 3.12 (the floor of today's MLIP packages: matris 1.0, torch-sim 0.6, mattersim 1.2): PYTHON=...,
# else python3.12 on PATH, else pyenv's 3.12.x
find_python() {
  for cand in ${PYTHON:-} python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    if [ -n "$cand" ] && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
      echo "$cand"; return 0
    fi
  done
  echo "[setup] no Python 3.12 found (set PYTHON=/path/to/python3.12)" >&2; return 1
}
VENV=.venv
APT_PKGS="g++ libxc-dev libfftw3-dev libopenblas-dev libscalapack-openmpi-dev libopenmpi-dev libblas-dev liblapack-dev"

missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "[setup] installing system libraries (GPAW; g++ for the fused CPU kernels):$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

stamp_key=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
stamp="$VENV/.setup-$stamp_key"
if [ ! -f "$stamp" ]; then
  if ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
    rm -rf "$VENV"; PY=$(find_python); "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip wheel setuptools
  # torch first, pinned: a CPU wheel here; GPU users pre-install their CUDA torch 2.13.0 instead
  "$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[dft,vasp,test]" "torch==2.13.0"
  rm -f "$VENV"/.setup-*
  touch "$stamp"
  echo "[setup] environment ready in $VENV"
fi

# the official Matbench Discovery metrics, for the parity tests only (its full dependency set
# pulls wandb and plotting stacks, so no deps: the metrics module needs numpy/pandas/sklearn)
if [ "${1:-}" = "--with-mongoeco" ] && ! "$VENV/bin/python" -c "import matbench_discovery" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q --no-deps "matbench-discovery==1.3.1" || echo "[setup] matbench-discovery unavailable: parity test will skip"
fi

# triton, for the kernel tests under TRITON_INTERPRET=1 on the CPU (a CUDA torch brings its own)
if [ "${1:-}" = "--with-mongoeco" ] && ! "$VENV/bin/python" -c "import triton" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "triton==3.9.0" || echo "[setup] triton unavailable: Triton interpreter tests will skip"
fi

# MatterSim, for the third-party torch-sim adapter tests only: --no-deps (its full set pulls torchaudio,
# torchvision, wandb, atomate2, mp-api, phono3py and a newer torch); these are what its model, ASE calculator
# and torch-sim wrapper import (about 15 MB)
if [ "${1:-}" = "--with-mongoeco" ] && ! "$VENV/bin/python" -c "import mattersim" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q --no-deps "mattersim==1.2.5" "torch-ema==0.3" "torchmetrics==1.9.0" \
    "lightning-utilities==0.15.3" "torch-runstats==0.2.0" "loguru==0.7.3" \
    || echo "[setup] mattersim unavailable: third-party torch-sim adapter tests will skip"
fi

# the matris package, for the MatRIS parity and torch-sim tests only: matris 1.0.0, pure Python (85 kB), --no-deps.
# Its torch path imports only torch (pinned here), numpy, ase and pymatgen (installed above) and, for its torch-sim
# model, torch-sim; nvalchemi-toolkit-ops (<0.5) and ninja serve its CUDA fast mode only, and a full install would
# downgrade torch-sim's nvalchemi-toolkit-ops 0.5 to 0.4.1. Replaces an older matris (0.1.0).
if [ "${1:-}" = "--with-mongoeco" ] && [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("matris"))' 2>/dev/null)" != "1.0.0" ]; then
  "$VENV/bin/python" -m pip install -q --no-deps "matris==1.0.0" || echo "[setup] matris unavailable: MatRIS parity tests will skip"
fi

# the FireWorks tests talk to a real MongoDB wire-protocol server (mongoeco, Python 3.13 venv)
if [ "${1:-}" = "--with-mongoeco" ]; then
  scripts/mongoeco_server.sh setup || echo "[setup] mongoeco unavailable (no Python 3.13?): FireWorks server tests will skip"
fi
