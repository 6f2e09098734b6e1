#!/usr/bin/env bash
# Create .venv in the repo root with reelora installed (editable) plus test extras. Idempotent: a rerun
# with an unchanged pyproject.toml does nothing.
#
# torch: on a machine with a CUDA GPU whose python already has a CUDA torch, the venv sees that torch
# (--system-site-packages) and pip keeps it. Elsewhere torch==$REELORA_TORCH (default 2.13.0) is
# installed first: our CPU machines take it from a local CPU wheel, so nothing pulls GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
TORCH_PIN=${REELORA_TORCH:-2.13.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1

has_cuda_torch() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 &&
    "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1
}

if [ ! -x .venv/bin/python ]; then
  if has_cuda_torch "$PY"; then
    echo "setup: CUDA torch found in $PY; the venv will reuse it"
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=".venv/.reelora-setup-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && python -c "import reelora, torch" >/dev/null 2>&1; then
  echo "setup: .venv is up to date"
  exit 0
fi

if ! python -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing torch==$TORCH_PIN"
  pip install -q "torch==$TORCH_PIN"
fi
echo "setup: installing reelora (editable) with test extras"
pip install -q -e ".[test]"
rm -f .venv/.reelora-setup-*
touch "$stamp"
python -c "import torch, diffusers, peft, reelora; print(f'setup: ok (torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}, reelora {reelora.__version__})')"
