#!/usr/bin/env bash
# Create benchmarks/.venv-peers with the peer libraries used for comparison
# (torchdiffeq, diffrax/jax/optax, casadi). Safe to re-run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-peers"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet)

# torch first, pinned: 2.13.0 is the local CPU build; an unpinned torch
# would pull a multi-GB CUDA build.
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" torchdiffeq
"${pip[@]}" jax diffrax optax
"${pip[@]}" casadi numpy

printf '.venv-peers/\n' > "$here/.gitignore"

"$venv/bin/python" - <<'PY'
from importlib.metadata import version
names = ["torch", "torchdiffeq", "jax", "jaxlib", "diffrax", "optax", "casadi", "numpy"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
