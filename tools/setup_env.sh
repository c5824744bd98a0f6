#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything the tour and tests need.
# Idempotent: re-running after a successful install only re-checks a stamp of pyproject.toml.
# Override the torch build with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.14.1" or a CUDA index via PIP_INDEX_URL).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchaudio==2.11.0}"
EXTRAS="${EXTRAS:-all,dev}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.contrastive-installed"
want="$(sha256sum pyproject.toml | cut -c1-16) $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] environment up to date ($VENV)"
  exit 0
fi
# torch first, pinned to one build, so no dependency resolves a second (CUDA) torch later.
if ! "$VENV/bin/python" -c "import torch, torchaudio" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet $TORCH_SPEC
fi
echo "[setup] installing the project with extras [$EXTRAS]"
"$VENV/bin/pip" install --quiet -e ".[$EXTRAS]"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch
n = [d for d in md.distributions() if d.metadata["Name"].lower() == "torch"]
assert len(n) == 1, f"more than one torch installed: {[d.version for d in n]}"
print(f"[setup] torch {torch.__version__} OK")
PY
echo "$want" > "$stamp"
