"""Time a routed block's attention with the router's signal: the Triton kernel against today's
static query chunks and plain SDPA without any signal (DESIGN.md section 8).

LLaMA-2-7B head shape by default (32 query heads, 32 K/V heads, head size 128, bfloat16, batch 1).
Per prefill length L it times two blocks:

- ``dense``: all L tokens are queries (causal), with column sums weighted by a validity mask;
- ``topk``: ``--keep`` of the L tokens (distinct, ascending, random) are queries against all L keys.

and three implementations:

- ``triton``: :func:`ftp_export.kernels.attention_signal.attention_with_signal` with the dense
  ``allowed`` mask, as :func:`ftp_export.routed.attention.attend` calls it on CUDA;
  ``triton_kv``: the same with the structured mask (``key_valid``; no [G, Q, S] tensor);
- ``chunks``: ``_in_chunks`` over ``_shape_spans`` (attend's CUDA schedule before the kernel);
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` without a signal (causal for
  ``dense``, a boolean mask for ``topk``): the floor a fused kernel can approach.

Each case is first checked against ``chunks`` (output and column sums). Timing: CUDA events,
median over --iters after --warmup. Prints a table and writes JSON to --out. Needs a CUDA GPU and
Triton; elsewhere it exits with status 77 (skipped).

    python benchmarks/bench_attention_signal.py --out build/bench_attention_signal.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ftp_export import kernels  # noqa: E402
from ftp_export.routed.attention import _in_chunks, _shape_spans  # noqa: E402
from ftp_export.routed.block import attention_mask_for  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench_attention_signal.json", help="JSON output path")
    p.add_argument("--lengths", default="512,2048,4096", help="comma-separated prefill lengths")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--keep", type=float, default=0.6, help="query fraction of the topk block")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run in Triton's interpreter (TRITON_INTERPRET=1)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    return p.parse_args(argv)


def cuda_time(fn: Callable[[], object], warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn`` over ``iters`` calls, CUDA events (wall clock on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if not torch.cuda.is_available():
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def make_case(block: str, length: int, args: argparse.Namespace, gen: torch.Generator) -> dict:
    dtype, dev = DTYPES[args.dtype], args.device
    if block == "dense":
        q_index = torch.arange(length).unsqueeze(0)
    else:
        kept = max(1, int(args.keep * length))
        q_index = torch.sort(torch.randperm(length, generator=gen)[:kept]).values.unsqueeze(0)
    nq = q_index.shape[1]
    q = torch.randn(1, nq, args.heads, args.head_dim, generator=gen).to(dev, dtype).transpose(1, 2)  # as projected
    k = torch.randn(1, args.kv_heads, length, args.head_dim, generator=gen).to(dev, dtype)
    v = torch.randn(1, args.kv_heads, length, args.head_dim, generator=gen).to(dev, dtype)
    key_valid = torch.ones(1, length, dtype=torch.bool, device=dev)
    q_index = q_index.to(dev)
    allowed = attention_mask_for(key_valid, q_index, None)
    weight = torch.ones(1, nq, dtype=torch.bool, device=dev)
    return dict(q=q, k=k, v=v, q_index=q_index, key_valid=key_valid, allowed=allowed, weight=weight)


def runners(c: dict, block: str, scaling: float) -> dict[str, Callable[[], tuple]]:
    from ftp_export.kernels.attention_signal import attention_with_signal

    q, k, v, qi, w = c["q"], c["k"], c["v"], c["q_index"], c["weight"]
    gqa = k.shape[1] != q.shape[1]
    sdpa_mask = None if block == "dense" else c["allowed"].unsqueeze(1)

    def chunks():
        return _in_chunks(q * scaling, k, v, ~c["allowed"], w, _shape_spans(q.shape[2], k.shape[2]))

    def sdpa():
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=sdpa_mask, is_causal=sdpa_mask is None, scale=scaling, enable_gqa=gqa)
        return out, None, None

    return {
        "triton": lambda: attention_with_signal(q, k, v, qi, scaling, allowed=c["allowed"], col_weight=w),
        "triton_kv": lambda: attention_with_signal(q, k, v, qi, scaling, key_valid=c["key_valid"], col_weight=w),
        "chunks": chunks,
        "sdpa": sdpa,
    }


def check(run: dict[str, Callable[[], tuple]]) -> dict[str, float]:
    """Largest differences of the kernels from the chunked reference (output, column sums)."""
    ref_out, ref_col, _ = run["chunks"]()
    g, h, nq, dh = ref_out.shape
    ref_out = ref_out.transpose(1, 2).reshape(g, nq, h * dh).float()
    diffs = {}
    for name in ("triton", "triton_kv"):
        out, col, _ = run[name]()
        diffs[f"{name}_out"] = float((out.float() - ref_out).abs().max())
        diffs[f"{name}_colsum"] = float((col - ref_col).abs().max() / ref_col.abs().max())  # relative
    return diffs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not kernels.available(args.device) or (args.device == "cuda" and not torch.cuda.is_available()):
        print(f"SKIP: needs triton and a CUDA GPU (or --device cpu with TRITON_INTERPRET=1); device {args.device}")
        return 77
    gen = torch.Generator().manual_seed(0)
    scaling = args.head_dim**-0.5
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        for block in ("dense", "topk"):
            c = make_case(block, length, args, gen)
            run = runners(c, block, scaling)
            row = {"block": block, "L": length, "queries": c["q"].shape[2], **check(run)}
            for name, fn in run.items():
                row[f"{name}_ms"] = cuda_time(fn, args.warmup, args.iters)
            row["triton_vs_chunks"] = row["chunks_ms"] / row["triton_ms"]
            row["triton_vs_sdpa"] = row["triton_ms"] / row["sdpa_ms"]
            rows.append(row)
            del c, run
            if args.device == "cuda":
                torch.cuda.empty_cache()
    header = f"{'block':6} {'L':>5} {'Q':>5} {'triton ms':>10} {'triton_kv':>10} {'chunks ms':>10} {'sdpa ms':>8}" \
             f" {'chunks/tri':>10} {'tri/sdpa':>8} {'rel dcol':>9} {'d out':>7}"
    print(header)
    for r in rows:
        print(f"{r['block']:6} {r['L']:>5} {r['queries']:>5} {r['triton_ms']:>10.3f} {r['triton_kv_ms']:>10.3f}"
              f" {r['chunks_ms']:>10.3f} {r['sdpa_ms']:>8.3f} {r['triton_vs_chunks']:>10.2f} {r['triton_vs_sdpa']:>8.2f}"
              f" {r['triton_colsum']:>9.1e} {r['triton_out']:>7.1e}")
    meta = {"gpu": torch.cuda.get_device_name() if args.device == "cuda" else None, "torch": torch.__version__, "python": platform.python_version(),
            "args": vars(args)}
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")
    # gross errors only: one flipped bfloat16 rounding of a score moves a probability by ~1%
    bad = [r for r in rows if not r["triton_colsum"] <= 1e-2 or not r["triton_kv_colsum"] <= 1e-2]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
