"""Benchmark the ftp plugin kernels (PyTorch extension build of plugins/) against plain torch.

Prefill, LLaMA-2-7B shapes by default (D = 4096, bf16, keep 0.6): per (B, L) it times

- ``ftp``: FtpTopKGather (selection + row gather) and FtpTopKScatter (active rows back over the
  residual) from ``ftp_export.trt.kernels_ext``;
- ``torch``: ``torch.topk`` on the scores + ``torch.sort`` of the indices + ``torch.gather`` +
  ``Tensor.scatter`` (what an eager routed block does; ties are not broken by position);
- ``torch_ref``: the project's reference lowering (``TorchLowering``: exact tie-breaking order key,
  active flags, masked scatter), i.e. the same semantics as the kernels.

Decode (``--decode``, on by default): FtpThresholdGather + FtpRowScatter against
``torch.nonzero`` + ``index_select`` + ``index_copy`` for B in --batches and T = 1.

Timing: CUDA events around each call after warm-up, median over --iters. Prints a table and writes
JSON to --out. Needs a CUDA GPU, nvcc and ninja (the extension compiles on first use).

    python benchmarks/bench_plugins.py --out bench_plugins.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench_plugins.json", help="JSON output path")
    p.add_argument("--batches", default="1,2,4,8")
    p.add_argument("--lengths", default="512,1024,2048,4096,8192")
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--keep", type=float, default=0.6)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--decode", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--decode-threshold", type=float, default=0.0, help="router score threshold for decode")
    return p.parse_args(argv)


def time_ms(fn: Callable[[], object], warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    view = {torch.float32: torch.int32}.get(a.dtype, torch.int16)
    return a.shape == b.shape and torch.equal(a.view(view), b.view(view))


def prefill_case(args, ext, lowering, q16: int, b: int, seq: int) -> dict:
    dtype, d = DTYPES[args.dtype], args.dim
    gen = torch.Generator(device="cuda").manual_seed(b * 100003 + seq)
    hidden = torch.randn(b, seq, d, device="cuda", dtype=dtype, generator=gen)
    scores = torch.randn(b, seq, device="cuda", dtype=torch.float32, generator=gen)
    valid = torch.ones(b, seq, dtype=torch.bool, device="cuda")
    k = ext.slot_count(seq, q16, 0)
    gathered = torch.empty(b, k, d, device="cuda", dtype=dtype)
    indices = torch.empty(b, k, device="cuda", dtype=torch.int64)
    active = torch.empty(b, k, device="cuda", dtype=torch.bool)
    out = torch.empty_like(hidden)
    block_out = torch.randn(b, k, d, device="cuda", dtype=dtype, generator=gen)  # stands in for the block

    def ftp_gather():
        ext.topk_gather_out(hidden, scores, valid, q16, 0, gathered, indices, active)

    def ftp_scatter():
        ext.topk_scatter_out(hidden, block_out, indices, active, out)

    def torch_gather():
        idx = torch.sort(torch.topk(scores, k, dim=-1, sorted=False).indices, dim=-1).values
        return idx, torch.gather(hidden, 1, idx.unsqueeze(-1).expand(-1, -1, d))

    idx_t, _ = torch_gather()

    def torch_scatter():
        return hidden.scatter(1, idx_t.unsqueeze(-1).expand(-1, -1, d), block_out)

    def ref_gather():
        return lowering.topk_gather(hidden, scores, valid, q16)

    g_r, idx_r, act_r = ref_gather()

    def ref_scatter():
        return lowering.topk_scatter(hidden, block_out, idx_r, act_r)

    # the kernels must agree bit for bit with the reference lowering
    ftp_gather()
    ftp_scatter()
    match = (
        torch.equal(indices, idx_r)
        and torch.equal(active, act_r)
        and same_bits(gathered, g_r)
        and same_bits(out, ref_scatter())
    )
    w, n = args.warmup, args.iters
    row = {
        "B": b,
        "L": seq,
        "K": k,
        "ftp_gather_ms": time_ms(ftp_gather, w, n),
        "ftp_scatter_ms": time_ms(ftp_scatter, w, n),
        "torch_gather_ms": time_ms(torch_gather, w, n),
        "torch_scatter_ms": time_ms(torch_scatter, w, n),
        "torch_ref_gather_ms": time_ms(ref_gather, w, n),
        "torch_ref_scatter_ms": time_ms(ref_scatter, w, n),
        "bit_exact_vs_reference": bool(match),
    }
    for name in ("ftp", "torch", "torch_ref"):
        row[f"{name}_total_ms"] = row[f"{name}_gather_ms"] + row[f"{name}_scatter_ms"]
    row["speedup_vs_torch"] = row["torch_total_ms"] / row["ftp_total_ms"]
    row["speedup_vs_torch_ref"] = row["torch_ref_total_ms"] / row["ftp_total_ms"]
    return row


def bench_prefill(args, ext, lowering, q16: int) -> list[dict]:
    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        for seq in (int(x) for x in args.lengths.split(",")):
            row = prefill_case(args, ext, lowering, q16, b, seq)
            rows.append(row)
            print(
                f"{b:>2} {seq:>5} {row['K']:>5} | ftp {row['ftp_gather_ms']:7.4f} + {row['ftp_scatter_ms']:7.4f} = "
                f"{row['ftp_total_ms']:7.4f} | torch {row['torch_total_ms']:7.4f} ({row['speedup_vs_torch']:4.2f}x) | "
                f"torch_ref {row['torch_ref_total_ms']:7.4f} ({row['speedup_vs_torch_ref']:4.2f}x) | "
                f"exact {row['bit_exact_vs_reference']}",
                flush=True,
            )
            torch.cuda.empty_cache()
    return rows


def decode_case(args, ext, b: int) -> dict:
    dtype, d, thr = DTYPES[args.dtype], args.dim, args.decode_threshold
    gen = torch.Generator(device="cuda").manual_seed(b)
    hidden = torch.randn(b, 1, d, device="cuda", dtype=dtype, generator=gen)
    valid = torch.ones(b, 1, dtype=torch.bool, device="cuda")
    # every token kept (score above the threshold): N = B, so the full output buffers hold the
    # computed rows and both sides move the same data
    scores = torch.full((b, 1), abs(thr) + 1.0, device="cuda", dtype=torch.float32)
    gathered = torch.empty(b, d, device="cuda", dtype=dtype)
    flat_rows = torch.empty(b, device="cuda", dtype=torch.int64)
    count = torch.empty((), device="cuda", dtype=torch.int64)
    out = torch.empty_like(hidden)

    def ftp_step():
        ext.threshold_gather_out(hidden, scores, valid, thr, gathered, flat_rows, count)
        ext.row_scatter_out(hidden, gathered, flat_rows, out)

    def torch_step():
        keep = torch.nonzero((valid & (scores >= thr)).reshape(-1)).reshape(-1)  # host sync
        g = torch.index_select(hidden.reshape(b, d), 0, keep)
        return hidden.reshape(b, d).index_copy(0, keep, g)

    row = {
        "B": b,
        "T": 1,
        "ftp_ms": time_ms(ftp_step, args.warmup, args.iters),
        "torch_ms": time_ms(torch_step, args.warmup, args.iters),
    }
    row["speedup_vs_torch"] = row["torch_ms"] / row["ftp_ms"]
    return row


def bench_decode(args, ext) -> list[dict]:
    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        row = decode_case(args, ext, b)
        rows.append(row)
        print(
            f"decode B={b:>2} | ftp {row['ftp_ms']:7.4f} | torch {row['torch_ms']:7.4f} ({row['speedup_vs_torch']:4.2f}x)"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_plugins: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured", file=sys.stderr)
        return 2
    from ftp_export.errors import FTPError
    from ftp_export.routed.lowering import TorchLowering
    from ftp_export.routing.selection import keep_q16
    from ftp_export.trt import kernels_ext

    try:
        ext = kernels_ext.load()
    except FTPError as e:
        print(f"bench_plugins: {e}", file=sys.stderr)
        return 2
    q16 = keep_q16(args.keep)
    print(
        f"device {torch.cuda.get_device_name()} | torch {torch.__version__} | D={args.dim} {args.dtype} keep={args.keep}"
    )
    print(" B     L     K | ftp gather + scatter = total (ms) | torch total | torch_ref total | exact")
    prefill = bench_prefill(args, ext, TorchLowering(), q16)
    decode = bench_decode(args, ext) if args.decode else []
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "dtype": args.dtype,
        "dim": args.dim,
        "keep": args.keep,
        "keep_q16": q16,
        "warmup": args.warmup,
        "iters": args.iters,
        "timing": "CUDA events per call, median",
        "prefill": prefill,
        "decode": decode,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
