"""Realised decode skip rate of every routed block at several context lengths, on held-out Brown text.

Issue 16's acceptance: within +-0.05 of each block's sparsity over >= 500 teacher-forced decoded
tokens per block and length. Tokens are decoded with the schedule's thresholds in force
(:func:`ftp_export.calibration.thresholds.measure_decode_skip_rates`: ``--windows`` windows spread
over the held-out split, each decoding ``--decode-tokens`` tokens around the context length).

    python scripts/decode_skip_rates.py --model smollm2-135m --schedule s22.json --schedule s40.json \
        --lengths 64,256,1024,2048 -o decode_skip_rates.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ftp_export.architectures import load_model, load_tokenizer, resolve_model
from ftp_export.calibration.thresholds import measure_decode_skip_rates
from ftp_export.evaluation.assets import materialise_brown
from ftp_export.evaluation.harness import split_ids
from ftp_export.evaluation.scoring import Encoder
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.schedule import load_schedule


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="local HF folder or alias (default: the embedded model)")
    p.add_argument("--schedule", action="append", required=True)
    p.add_argument("--lengths", default="64,256,1024,2048")
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("-o", "--output", default="decode_skip_rates.json")
    a = p.parse_args(argv)
    lengths = [int(x) for x in a.lengths.split(",")]
    ref = resolve_model(a.model)
    hf = load_model(ref, torch.float32, "cpu")
    tokenizer = load_tokenizer(ref)
    tokenizer.model_max_length = 1 << 40
    # the held-out split as ftp-eval tokenises it: documents without special tokens, joined by EOS
    eos = getattr(tokenizer, "eos_token_id", None)
    stream = torch.tensor(split_ids(materialise_brown(None), "held_out", Encoder(tokenizer).encode, eos), dtype=torch.int64)
    out, worst_all = {}, 0.0
    for path in a.schedule:
        sched = load_schedule(path)
        model = RoutedCausalLM(hf, sched).eval()
        rates = measure_decode_skip_rates(model, stream, lengths, windows=a.windows, decode_tokens=a.decode_tokens,
                                          batch_size=a.batch_size)
        worst = rates.worst(sched.block_sparsity)
        worst_all = max(worst_all, worst)
        out[Path(path).stem] = {"block_sparsity": sched.block_sparsity, "calibrated_lengths": sched.decode_thresholds.lengths,
                                **rates.to_json(), "worst_abs_error": worst}
        print(f"{Path(path).stem}: decoded tokens per block and length {rates.tokens}; worst |realised - scheduled| {worst:.3f}")
        print("block  sparsity  " + "  ".join(f"{n:>6d}" for n in lengths))
        for b, rs in enumerate(rates.rates):
            if rs is not None:
                print(f"{b:5d}  {sched.block_sparsity[b]:8.3f}  " + "  ".join(f"{r:6.3f}" for r in rs))
    Path(a.output).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.output}")
    return 0 if worst_all <= a.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
