"""``ftp-export bench``: prefill and decode, dense vs routed, same runtime, same process.

Prints a table, writes JSON and a PNG of speedup vs sequence length beside the linear-FLOP ideal.
Example (GPU): ftp-export bench --shape llama2-7b --device cuda --dtype bfloat16 --runtime compile
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from tqdm import tqdm

from ftp_export.bench.models import SHAPES, random_llama
from ftp_export.bench.report import format_tables, plot, title
from ftp_export.bench.runner import bench_decode, bench_prefill, rows_to_json
from ftp_export.cli.parser import Parser, comma_floats, comma_ints
from ftp_export.devices import resolve_device, torch_dtype
from ftp_export.errors import FTPError


def _sparsities(text: str) -> list[float]:
    vals = comma_floats(text)
    for v in vals:
        if not 0.0 < v < 1.0:
            raise FTPError(f"--sparsity {v}: must be in (0, 1)")
    return vals


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="ftp-export bench", description="Dense vs routed timing on one runtime.")
    p.add_argument("--shape", default="tiny", help=f"random-weight model shape: {', '.join(SHAPES)}")
    p.add_argument("--layers", type=int, help="number of blocks (default: the shape's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="bfloat16 on CUDA, float32 on CPU by default")
    p.add_argument("--runtime", default="eager", choices=["eager", "compile"])
    p.add_argument("--batch", default="1", help="prefill batch sizes, e.g. 1,8")
    p.add_argument("--seq", default="64,128", help="prefill lengths, e.g. 512,2048,4096")
    p.add_argument("--sparsity", default="0.4", help="overall sparsities, e.g. 0.22,0.4,0.6")
    p.add_argument("--decode-batch", default="1", help="decode batch sizes, e.g. 1,8,32")
    p.add_argument("--decode-context", type=int, default=128)
    p.add_argument(
        "--logits", default="last", choices=["last", "all"],
        help="prefill logits on both sides: last position only (default, as generation) or all positions",
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("-o", "--output", default="exported/bench", help="folder for bench.json and bench.png")
    return p


def cmd_bench(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    if a.shape not in SHAPES:
        raise FTPError(f"--shape {a.shape}: choose one of {', '.join(SHAPES)}")
    device = str(resolve_device(a.device))
    dtype_name = a.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    model = random_llama(a.shape, a.layers, torch_dtype(dtype_name), device)
    grid = [(b, s, sp) for b in comma_ints(a.batch) for s in comma_ints(a.seq) for sp in _sparsities(a.sparsity)]
    prefill = []
    for b, s, sp in tqdm(grid, desc="prefill", unit="case"):
        prefill.append(bench_prefill(model, b, s, sp, a.runtime, device, a.warmup, a.iters, a.logits))
    decode = []
    dgrid = [(b, sp) for b in comma_ints(a.decode_batch) for sp in _sparsities(a.sparsity)]
    for b, sp in tqdm(dgrid, desc="decode", unit="case"):
        decode.append(bench_decode(model, b, a.decode_context, sp, device, a.warmup, a.iters))
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"
    doc = {
        "shape": a.shape,
        "layers": model.config.num_hidden_layers,
        "dtype": dtype_name,
        "device": device_name,
        "runtime": a.runtime,
        "logits": a.logits,  # prefill logits of both sides: 'last' position or 'all'
        "torch": torch.__version__,
        "prefill": rows_to_json(prefill),
        "decode": rows_to_json(decode),
    }
    (out / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc["prefill"], out / "bench.png", title(doc))
    print(title(doc))
    print(format_tables(doc["prefill"], doc["decode"]))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 0
