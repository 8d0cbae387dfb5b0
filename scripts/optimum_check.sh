#!/usr/bin/env bash
# optimum's ORTModelForCausalLM on an `ftp-export --target onnx` folder, greedy tokens against the
# PyTorch routed model (scripts/optimum_check.py). optimum-onnx caps transformers below 4.58, so it
# runs in its own venv (OPTIMUM_VENV, default .venv-optimum, made on first use; needs the package
# registry). Run from this project's venv:  bash scripts/optimum_check.sh exported/FOLDER
set -euo pipefail
folder=${1:?usage: bash scripts/optimum_check.sh EXPORT_FOLDER}
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${OPTIMUM_VENV:-$root/.venv-optimum}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # torch pinned as in README; optimum-onnx 0.1 wants optimum 2.1 and transformers < 4.58
  "$venv/bin/pip" install -q "torch==2.13.0" "optimum-onnx[onnxruntime]" "transformers<4.58"
fi
ref=$(mktemp)
trap 'rm -f "$ref"' EXIT
python "$root/scripts/optimum_check.py" reference "$folder" > "$ref"
"$venv/bin/python" "$root/scripts/optimum_check.py" optimum "$folder" "$ref"
