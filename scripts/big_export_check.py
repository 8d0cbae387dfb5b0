"""Export a model of real width with random weights and report the export's peak memory: the check
behind README's "exporting a 7B model" guidance (issue 18). Builds a Hugging Face folder (random
LlamaForCausalLM of ``--shape`` width with ``--layers`` blocks, the embedded model's tokenizer),
makes a uniform schedule for it, exports it (``ftp-export``, parity included) and prints each
step's peak resident memory and time.

    python scripts/big_export_check.py --shape llama2-7b --layers 4 -o /tmp/big   # 4.3 GB float32
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _peak_children_gib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # Linux: KiB


def _run(step: str, args: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ftp_export.cli", *args], capture_output=True, text=True)
    took = time.perf_counter() - t0
    tail = proc.stdout.strip().splitlines()[-8:] + proc.stderr.strip().splitlines()[-3:]
    print(f"== {step}: exit {proc.returncode}, {took:.0f} s, peak RSS of any step so far {_peak_children_gib():.1f} GiB")
    print("\n".join(tail))
    return {"step": step, "exit": proc.returncode, "seconds": round(took, 1), "peak_rss_gib_so_far": round(_peak_children_gib(), 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama2-7b")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--target", default="onnx")
    p.add_argument("--no-parity", action="store_true", help="export only (ftp-export --no-parity)")
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args()
    import torch

    from ftp_export.architectures import DEFAULT_MODEL_DIR
    from ftp_export.bench.models import random_llama

    root = Path(a.output)
    folder, out = root / "model", root / f"export-{a.target}-{a.dtype}{'-no-parity' if a.no_parity else ''}"
    if not (folder / "config.json").is_file():
        t0 = time.perf_counter()
        model = random_llama(a.shape, a.layers, torch.float32, "cpu")
        model.config.max_position_embeddings = 4096
        model.save_pretrained(folder)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy2(DEFAULT_MODEL_DIR / name, folder / name)
        n = sum(t.numel() for t in model.parameters())
        del model
        print(f"== model: {n / 1e9:.2f} B parameters, {n * 4 / 1e9:.1f} GB float32, written in {time.perf_counter() - t0:.0f} s")
    steps = []
    schedule = root / "s40.json"
    if not schedule.is_file():
        # few, short calibration windows: the decode thresholds' quality is not what this checks
        steps.append(_run("schedule", ["schedule", "--uniform", "0.4", "--model", str(folder), "-o", str(schedule),
                                       "--samples", "8", "--max-context", "128"]))
    steps.append(_run("export", ["--model", str(folder), "--schedule", str(schedule), "--target", a.target, "--dtype", a.dtype,
                                 "-o", str(out), *(["--no-parity"] if a.no_parity else ["--parity-tokens", "4"])]))
    files = {f.name: round(f.stat().st_size / 1e9, 3) for f in sorted(out.iterdir()) if f.is_file() and f.stat().st_size > 1e6} if out.is_dir() else {}
    print(json.dumps({"shape": a.shape, "layers": a.layers, "dtype": a.dtype, "steps": steps, "files_gb": files}, indent=1))
    return max(s["exit"] for s in steps)


if __name__ == "__main__":
    sys.exit(main())
