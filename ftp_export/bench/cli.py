"""``ftp-export bench``: prefill and decode, dense vs routed, same runtime, same process.

Prints a table, writes JSON and a PNG of speedup vs sequence length beside the linear-FLOP ideal.
Example (GPU): ftp-export bench --shape llama2-7b --device cuda --dtype bfloat16 --runtime compile
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ftp_export.bench.models import SHAPES, random_llama
from ftp_export.bench.runner import bench_decode, bench_prefill, rows_to_json
from ftp_export.errors import FTPError


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise FTPError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x]
    except ValueError:
        raise FTPError(f"expected comma-separated numbers, got {text!r}") from None
    for v in vals:
        if not 0.0 < v < 1.0:
            raise FTPError(f"--sparsity {v}: must be in (0, 1)")
    return vals


def parser() -> argparse.ArgumentParser:
    from ftp_export.cli import _Parser

    p = _Parser(prog="ftp-export bench", description="Dense vs routed timing on one runtime.")
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
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("-o", "--output", default="exported/bench", help="folder for bench.json and bench.png")
    return p


def format_tables(prefill: list[dict[str, Any]], decode: list[dict[str, Any]]) -> str:
    lines = [f"{'B':>3} {'L':>6} {'s':>5} {'dense ms':>10} {'routed ms':>10} {'speedup':>8} {'ideal':>6} {'of ideal':>9} {'mem +':>7}"]
    for r in prefill:
        mem = "-" if r["memory_overhead"] is None else f"{100 * r['memory_overhead']:.1f}%"
        lines.append(
            f"{r['batch']:>3} {r['seq_len']:>6} {r['sparsity']:>5.2f} {r['dense_ms']:>10.3f} {r['routed_ms']:>10.3f} "
            f"{r['speedup']:>8.2f} {r['ideal']:>6.2f} {100 * r['of_ideal']:>8.1f}% {mem:>7}"
        )
    lines.append("")
    lines.append(f"{'decode B':>8} {'ctx':>6} {'s':>5} {'dense ms':>10} {'routed ms':>10} {'speedup':>8}")
    for r in decode:
        lines.append(f"{r['batch']:>8} {r['context']:>6} {r['sparsity']:>5.2f} {r['dense_ms']:>10.3f} {r['routed_ms']:>10.3f} {r['speedup']:>8.2f}")
    return "\n".join(lines)


def plot(prefill: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (batch, s) in sorted({(r["batch"], r["sparsity"]) for r in prefill}):
        rows = sorted((r for r in prefill if r["batch"] == batch and r["sparsity"] == s), key=lambda r: r["seq_len"])
        xs = [r["seq_len"] for r in rows]
        line = ax.plot(xs, [r["speedup"] for r in rows], marker="o", label=f"B={batch}, s={s:.2f} measured")[0]
        ax.plot(xs, [r["ideal"] for r in rows], linestyle="--", color=line.get_color(), label=f"B={batch}, s={s:.2f} linear-FLOP ideal")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length")
    ax.set_ylabel("prefill speedup (dense / routed)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_bench(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    if a.shape not in SHAPES:
        raise FTPError(f"--shape {a.shape}: choose one of {', '.join(SHAPES)}")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise FTPError("--device cuda: no CUDA device is available")
    dtype_name = a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype_name)
    if dtype is None:
        raise FTPError(f"--dtype {dtype_name}: choose float32, bfloat16 or float16")
    model = random_llama(a.shape, a.layers, dtype, a.device)
    grid = [(b, s, sp) for b in _ints(a.batch) for s in _ints(a.seq) for sp in _floats(a.sparsity)]
    prefill = []
    for b, s, sp in tqdm(grid, desc="prefill", unit="case"):
        prefill.append(bench_prefill(model, b, s, sp, a.runtime, a.device, a.warmup, a.iters))
    decode = []
    dgrid = [(b, sp) for b in _ints(a.decode_batch) for sp in _floats(a.sparsity)]
    for b, sp in tqdm(dgrid, desc="decode", unit="case"):
        decode.append(bench_decode(model, b, a.decode_context, sp, a.device, a.warmup, a.iters))
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor() or "cpu"
    doc = {
        "shape": a.shape,
        "layers": model.config.num_hidden_layers,
        "dtype": dtype_name,
        "device": device_name,
        "runtime": a.runtime,
        "torch": torch.__version__,
        "prefill": rows_to_json(prefill),
        "decode": rows_to_json(decode),
    }
    (out / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    title = f"{a.shape} x{model.config.num_hidden_layers} blocks, {dtype_name}, {a.runtime}, {device_name}"
    plot(doc["prefill"], out / "bench.png", title)
    print(title)
    print(format_tables(doc["prefill"], doc["decode"]))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 0
