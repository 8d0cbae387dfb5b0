"""Time one routed block's eager CPU attention with the router's signal: the fused C kernel
(:mod:`ftp_export.kernels.cpu_signal`) against ATen's ops on the same chunks and against the dense
block's own attention, Hugging Face's causal flash SDPA over all L queries, without a signal.

SmolLM2-135M head shape by default (9 query heads, 3 K/V heads, head size 64, float32, batch 1,
one thread). Per prefill length L, ``--keep`` of the L tokens (distinct, ascending, spread at
random over the prompt, as the bench's routers pick them) are the queries, with column sums, as
:func:`ftp_export.routed.attention.attend` runs them in eager PyTorch:

- ``c_kernel``: the chunks with the fused mask / softmax / column-sum pass;
- ``aten``: the same chunks in ATen ops (``FTP_EXPORT_CPU_KERNEL=0``, or no C compiler);
- ``dense_sdpa``: all L queries, causal, no signal: what the dense model's block pays.

The C kernel is first checked against ATen (output and column sums). The three run alternating,
median [min-max] over --iters; a table, and JSON to --out.

    OMP_NUM_THREADS=1 python benchmarks/bench_cpu_attention.py --out build/bench_cpu_attention.json
"""

from __future__ import annotations

import argparse
import json
import os
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

from ftp_export.kernels import cpu_build  # noqa: E402
from ftp_export.routed.attention import attend  # noqa: E402
from ftp_export.routed.block import attention_mask_for  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench_cpu_attention.json", help="JSON output path")
    p.add_argument("--lengths", default="512,1024,2048", help="comma-separated prefill lengths")
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--keep", type=float, default=0.6, help="query fraction of the routed block")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=9)
    return p.parse_args(argv)


def _case(a: argparse.Namespace, length: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    nq = max(1, round(a.keep * length))
    q_index = torch.sort(torch.randperm(length, generator=gen)[:nq]).values.view(1, nq)
    return {
        "q": torch.randn(1, a.heads, nq, a.head_dim, generator=gen),
        "q_all": torch.randn(1, a.heads, length, a.head_dim, generator=gen),
        "k": torch.randn(1, a.kv_heads, length, a.head_dim, generator=gen),
        "v": torch.randn(1, a.kv_heads, length, a.head_dim, generator=gen),
        "q_index": q_index,
        "allowed": attention_mask_for(torch.ones(1, length, dtype=torch.bool), q_index, None),
        "weight": torch.ones(1, nq),
    }


def _routed(c: dict[str, torch.Tensor], kernel: bool, scale: float) -> Callable[[], tuple]:
    def run() -> tuple:
        os.environ["FTP_EXPORT_CPU_KERNEL"] = "1" if kernel else "0"
        return attend(c["q"], c["k"], c["v"], c["allowed"], scale, c["q_index"], col_weight=c["weight"])

    return run


def _dense(c: dict[str, torch.Tensor], scale: float) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(
            c["q_all"], c["k"], c["v"], is_causal=True, scale=scale, enable_gqa=True
        )

    return run


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if cpu_build.library() is None:
        print("no C compiler: the CPU kernel cannot be built here", file=sys.stderr)
        return 77
    torch.set_num_threads(a.threads)
    gen, scale, rows = torch.Generator().manual_seed(0), a.head_dim**-0.5, []
    switch = os.environ.get("FTP_EXPORT_CPU_KERNEL")
    print(
        f"{'L':>6} {'queries':>8} {'c_kernel ms':>22} {'aten ms':>22} {'dense_sdpa ms':>22} {'aten/c':>7} {'dense/c':>8}"
    )
    for length in (int(x) for x in a.lengths.split(",")):
        c = _case(a, length, gen)
        fns = {"c_kernel": _routed(c, True, scale), "aten": _routed(c, False, scale), "dense_sdpa": _dense(c, scale)}
        with torch.no_grad():
            (out_k, sum_k, _), (out_a, sum_a, _) = fns["c_kernel"](), fns["aten"]()
            torch.testing.assert_close(out_k, out_a, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(sum_k, sum_a, rtol=1e-4, atol=1e-5)
            times: dict[str, list[float]] = {name: [] for name in fns}
            for _ in range(a.iters):
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - t0) * 1e3)
        med = {n: statistics.median(t) for n, t in times.items()}
        row = {
            "length": length,
            "queries": int(c["q"].shape[2]),
            **{n: {"median_ms": med[n], "min_ms": min(t), "max_ms": max(t)} for n, t in times.items()},
        }
        rows.append(row)
        cells = " ".join(f"{med[n]:>9.2f} [{min(times[n]):.1f}-{max(times[n]):.1f}]".rjust(22) for n in fns)
        print(
            f"{length:>6} {row['queries']:>8} {cells} {med['aten'] / med['c_kernel']:>7.2f} {med['dense_sdpa'] / med['c_kernel']:>8.2f}"
        )
    if switch is None:
        os.environ.pop("FTP_EXPORT_CPU_KERNEL", None)
    else:
        os.environ["FTP_EXPORT_CPU_KERNEL"] = switch
    meta = {"machine": platform.processor() or platform.machine(), "threads": a.threads, "torch": torch.__version__}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": {**meta, **vars(a)}, "rows": rows}, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
