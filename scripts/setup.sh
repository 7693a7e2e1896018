#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: headless GL libraries, a Python 3.11 virtualenv in .venv, fleetrl in it.
# `make train` and `make test` call this only when pyproject.toml or this script changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Headless MuJoCo rendering (EGL via Mesa, or OSMesa), and Chromium for the console's browser test (driven by
# playwright, which then needs no browser download); installed only if missing.
pkgs=(libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 chromium)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# dm-reverb 0.14.0 has wheels for Python <= 3.11 only.
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY="$cand"; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "setup: Python 3.11 not found (dm-reverb has no wheel for newer); install python3.11 or set PYTHON=" >&2
  exit 1
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip uv
# torch first and pinned: pip takes the CPU wheel already on this machine kind; anything looser pulls CUDA builds.
.venv/bin/python -m pip install -q "torch==2.13.0"
# The rest through uv: the same versions as pip resolves, in 75 s instead of 190 s on a fresh venv (CI time).
# torch is named again so that uv keeps the CPU build pip put there. pip is the fallback.
if ! .venv/bin/python -m uv pip install -q --python .venv/bin/python -e ".[dev]" "torch==2.13.0"; then
  echo "setup: uv could not install the packages; using pip"
  .venv/bin/python -m pip install -q -e ".[dev]"
fi
touch .venv/.installed
echo "setup: done ($(.venv/bin/python --version))"
