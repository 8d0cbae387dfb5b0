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

The kernels are called through the extension's raw functions (workspaces allocated once, status
checked after each call), i.e. the launch cost without the Python wrappers' validation. Every case
is first checked bit for bit against the reference; the exit status is 1 if any case differs.

Timing: CUDA events around each call after warm-up, median over --iters. Prints a table and writes
JSON to --out. Needs a CUDA GPU, nvcc and ninja (the extension compiles on first use).

    python benchmarks/bench_plugins.py --out bench_plugins.json
    python benchmarks/bench_plugins.py --quick --out build/bench_plugins_quick.json   # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FULL = {"batches": "1,2,4,8", "lengths": "512,1024,2048,4096,8192", "warmup": 10, "iters": 50}
QUICK = {"batches": "1,4", "lengths": "512,2048", "warmup": 3, "iters": 10}

Timer = Callable[[Callable[[], object], int, int], float]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench_plugins.json", help="JSON output path")
    p.add_argument("--quick", action="store_true", help=f"smoke run: defaults {QUICK} instead of {FULL}")
    p.add_argument("--batches", default=None, help=f"comma-separated (default {FULL['batches']})")
    p.add_argument("--lengths", default=None, help=f"comma-separated (default {FULL['lengths']})")
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--keep", type=float, default=0.6)
    p.add_argument("--warmup", type=int, default=None, help=f"default {FULL['warmup']}")
    p.add_argument("--iters", type=int, default=None, help=f"default {FULL['iters']}")
    p.add_argument("--decode", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--decode-threshold", type=float, default=0.0, help="router score threshold for decode")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


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


def workspace(ext: Any, node: str, b: int, t: int, device: str) -> torch.Tensor:
    """Allocated once per case, outside the timed calls (as a TensorRT workspace)."""
    nbytes = int(getattr(ext, f"{node}_workspace_size")(b, t))
    if nbytes < 0:
        raise ValueError(f"{node}: the extension gives no workspace size for B={b}, T={t}")
    return torch.empty(nbytes, dtype=torch.uint8, device=device)


def prefill_case(
    args: argparse.Namespace,
    ext: Any,
    lowering: Any,
    q16: int,
    b: int,
    seq: int,
    *,
    device: str = "cuda",
    timer: Timer = time_ms,
) -> dict:
    from ftp_export.trt.kernels_ext import check_status

    dtype, d = DTYPES[args.dtype], args.dim
    gen = torch.Generator(device=device).manual_seed(b * 100003 + seq)
    hidden = torch.randn(b, seq, d, device=device, dtype=dtype, generator=gen)
    scores = torch.randn(b, seq, device=device, dtype=torch.float32, generator=gen)
    valid = torch.ones(b, seq, dtype=torch.bool, device=device)
    k = int(ext.slot_count(seq, q16))
    if k < 0:
        raise ValueError(f"no slot count for L={seq}, keep_q16={q16}")
    gathered = torch.empty(b, k, d, device=device, dtype=dtype)
    indices = torch.empty(b, k, device=device, dtype=torch.int64)
    active = torch.empty(b, k, device=device, dtype=torch.bool)
    out = torch.empty_like(hidden)
    block_out = torch.randn(b, k, d, device=device, dtype=dtype, generator=gen)  # stands in for the block
    ws_gather = workspace(ext, "topk_gather", b, seq, device)
    ws_scatter = workspace(ext, "topk_scatter", b, seq, device)

    def ftp_gather():
        check_status(
            ext.topk_gather_out(hidden, scores, valid, q16, gathered, indices, active, ws_gather), "topk_gather_out"
        )

    def ftp_scatter():
        check_status(ext.topk_scatter_out(hidden, block_out, indices, active, out, ws_scatter), "topk_scatter_out")

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
        "ftp_gather_ms": timer(ftp_gather, w, n),
        "ftp_scatter_ms": timer(ftp_scatter, w, n),
        "torch_gather_ms": timer(torch_gather, w, n),
        "torch_scatter_ms": timer(torch_scatter, w, n),
        "torch_ref_gather_ms": timer(ref_gather, w, n),
        "torch_ref_scatter_ms": timer(ref_scatter, w, n),
        "bit_exact_vs_reference": bool(match),
    }
    for name in ("ftp", "torch", "torch_ref"):
        row[f"{name}_total_ms"] = row[f"{name}_gather_ms"] + row[f"{name}_scatter_ms"]
    row["speedup_vs_torch"] = row["torch_total_ms"] / max(row["ftp_total_ms"], 1e-9)
    row["speedup_vs_torch_ref"] = row["torch_ref_total_ms"] / max(row["ftp_total_ms"], 1e-9)
    return row


def _ints(csv: str) -> list[int]:
    return [int(x) for x in csv.split(",") if x.strip()]


def bench_prefill(
    args: argparse.Namespace, ext: Any, lowering: Any, q16: int, *, device: str = "cuda", timer: Timer = time_ms
) -> list[dict]:
    rows = []
    for b in _ints(args.batches):
        for seq in _ints(args.lengths):
            row = prefill_case(args, ext, lowering, q16, b, seq, device=device, timer=timer)
            rows.append(row)
            print(
                f"{b:>2} {seq:>5} {row['K']:>5} | ftp {row['ftp_gather_ms']:7.4f} + {row['ftp_scatter_ms']:7.4f} = "
                f"{row['ftp_total_ms']:7.4f} | torch {row['torch_total_ms']:7.4f} ({row['speedup_vs_torch']:4.2f}x) | "
                f"torch_ref {row['torch_ref_total_ms']:7.4f} ({row['speedup_vs_torch_ref']:4.2f}x) | "
                f"exact {row['bit_exact_vs_reference']}",
                flush=True,
            )
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def decode_case(args: argparse.Namespace, ext: Any, b: int, *, device: str = "cuda", timer: Timer = time_ms) -> dict:
    from ftp_export.trt.kernels_ext import check_status

    dtype, d, thr = DTYPES[args.dtype], args.dim, args.decode_threshold
    gen = torch.Generator(device=device).manual_seed(b)
    hidden = torch.randn(b, 1, d, device=device, dtype=dtype, generator=gen)
    valid = torch.ones(b, 1, dtype=torch.bool, device=device)
    # every token kept (score above the threshold): N = B, so the full output buffers hold the
    # computed rows and both sides move the same data
    scores = torch.full((b, 1), abs(thr) + 1.0, device=device, dtype=torch.float32)
    gathered = torch.empty(b, d, device=device, dtype=dtype)
    flat_rows = torch.empty(b, device=device, dtype=torch.int64)
    count = torch.empty((), device=device, dtype=torch.int32)
    out = torch.empty_like(hidden)
    ws_gather = workspace(ext, "threshold_gather", b, 1, device)
    ws_scatter = workspace(ext, "row_scatter", b, 1, device)

    def ftp_step():
        status = ext.threshold_gather_out(hidden, scores, valid, thr, gathered, flat_rows, count, ws_gather)
        check_status(status, "threshold_gather_out")
        check_status(ext.row_scatter_out(hidden, gathered, flat_rows, out, ws_scatter), "row_scatter_out")

    def torch_step():
        keep = torch.nonzero((valid & (scores >= thr)).reshape(-1)).reshape(-1)  # host sync
        g = torch.index_select(hidden.reshape(b, d), 0, keep)
        return hidden.reshape(b, d).index_copy(0, keep, g)

    ftp_step()
    match = (
        int(count) == b
        and torch.equal(flat_rows, torch.arange(b, device=device))
        and same_bits(gathered, hidden.reshape(b, d))
        and same_bits(out, hidden)
    )
    row = {
        "B": b,
        "T": 1,
        "ftp_ms": timer(ftp_step, args.warmup, args.iters),
        "torch_ms": timer(torch_step, args.warmup, args.iters),
        "bit_exact_vs_reference": bool(match),
    }
    row["speedup_vs_torch"] = row["torch_ms"] / max(row["ftp_ms"], 1e-9)
    return row


def bench_decode(args: argparse.Namespace, ext: Any, *, device: str = "cuda", timer: Timer = time_ms) -> list[dict]:
    rows = []
    for b in _ints(args.batches):
        row = decode_case(args, ext, b, device=device, timer=timer)
        rows.append(row)
        print(
            f"decode B={b:>2} | ftp {row['ftp_ms']:7.4f} | torch {row['torch_ms']:7.4f} "
            f"({row['speedup_vs_torch']:4.2f}x) | exact {row['bit_exact_vs_reference']}",
            flush=True,
        )
    return rows


def run(args: argparse.Namespace, ext: Any, *, device: str = "cuda", timer: Timer = time_ms) -> dict:
    """All cases with extension module ``ext`` (tests pass a stand-in and ``device="cpu"``)."""
    from ftp_export.routed.lowering import TorchLowering
    from ftp_export.routing.selection import keep_q16

    q16 = keep_q16(args.keep)
    print(" B     L     K | ftp gather + scatter = total (ms) | torch total | torch_ref total | exact")
    prefill = bench_prefill(args, ext, TorchLowering(), q16, device=device, timer=timer)
    decode = bench_decode(args, ext, device=device, timer=timer) if args.decode else []
    return {
        "dtype": args.dtype,
        "dim": args.dim,
        "keep": args.keep,
        "keep_q16": q16,
        "warmup": args.warmup,
        "iters": args.iters,
        "timing": "CUDA events per call, median",
        "prefill": prefill,
        "decode": decode,
        "all_bit_exact": all(r["bit_exact_vs_reference"] for r in [*prefill, *decode]),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_plugins: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured", file=sys.stderr)
        return 2
    from ftp_export.errors import FTPError
    from ftp_export.trt import kernels_ext

    try:
        ext = kernels_ext.load()
    except FTPError as e:
        print(f"bench_plugins: {e}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name()
    print(f"device {name} | torch {torch.__version__} | D={args.dim} {args.dtype} keep={args.keep}")
    result = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        **run(args, ext),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    if not result["all_bit_exact"]:
        print(
            "bench_plugins: MISMATCH: a kernel result differs from the reference (see 'exact' above)", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
