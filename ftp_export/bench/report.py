"""Reading a bench.json: the terminal table, the plot, and ``python -m ftp_export.bench.report
bench.json`` to print the table of a finished run (the GPU check script does).

A speedup above its ideal is marked ``!`` in the table (with a footnote) and drawn with its own
red marker and legend entry in the plot: it is timing noise or a slow dense side, never a
success. The bound is the all-matmul ideal where the row has one (every runtime's rows since
2026-12-06), else the linear-FLOP ideal (eager / compile rows of older files)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

FLAG = "!"
FLAG_NOTE = (f"{FLAG} speedup above the ideal (all-matmul where given, else linear-FLOP): timing noise or a slow dense "
             "side, not a success; raise --warmup / --iters")


def title(doc: dict[str, Any]) -> str:
    # bench.json files written before the ``logits`` key computed every position's logits
    text = f"{doc['shape']} x{doc['layers']} blocks, {doc['dtype']}, {doc['runtime']}, {doc['device']}, logits: {doc.get('logits', 'all')}"
    if doc.get("kv_cache"):
        text += f", kv cache: {doc['kv_cache']}"
    if doc.get("threads") is not None:
        text += f", {doc['threads']} thread(s)"
    load = doc.get("load_average")
    if load:
        text += f", load 1m {load['before'][0]:.2f} -> {load['after'][0]:.2f}"
    return text


def bound(r: dict[str, Any]) -> float | None:
    """The ideal a row's speedup is checked against: all-matmul if the row has it, else linear."""
    return r.get("ideal_matmul", r.get("ideal"))


def above_ideal(r: dict[str, Any]) -> bool:
    b = bound(r)
    return b is not None and r["speedup"] > b


def _ms(r: dict[str, Any], side: str) -> str:
    lo, hi = r[f"{side}_range_ms"]
    return f"{r[f'{side}_ms']:.3f} [{lo:.3f}-{hi:.3f}]"


def _ideal_cols(r: dict[str, Any], both: bool) -> str:
    if r.get("ideal") is None or (both and r.get("ideal_matmul") is None):
        return f"{'-':>11} {'-':>13}"
    if both:
        return (f"{r['ideal']:>5.2f}/{r['ideal_matmul']:<5.2f} "
                f"{100 * r['of_ideal']:>5.0f}%/{100 * r['of_ideal_matmul']:.0f}%".ljust(25))
    return f"{r['ideal']:>6.2f} {100 * r['of_ideal']:>8.1f}%"


def _skip(r: dict[str, Any]) -> str:
    if r.get("skip_rate") is None:
        return "n/a"
    per = list((r.get("skip_rate_per_block") or {}).values())
    return f"{r['skip_rate']:.2f} [{min(per):.2f}-{max(per):.2f}]" if per else f"{r['skip_rate']:.2f}"


def format_tables(prefill: list[dict[str, Any]], decode: list[dict[str, Any]], memory: list[dict[str, Any]] | None = None) -> str:
    """Median [min-max] milliseconds, dense and routed on the same runtime, beside the ideal(s)."""
    both = any("ideal_matmul" in r for r in prefill + decode)
    ideal_head = f"{'ideal lin/mm':>11} {'of ideal lin/mm':>13}" if both else f"{'ideal':>6} {'of ideal':>9}"
    mem_col = any(r.get("memory_overhead") is not None for r in prefill)  # peak CUDA memory of eager / compile rows
    lines = [f"{'B':>3} {'L':>6} {'s':>5} {'dense ms [min-max]':>30} {'routed ms [min-max]':>30} {'speedup':>8} {ideal_head}"
             + (f" {'mem +':>7}" if mem_col else "")]
    for r in prefill:
        mem = "-" if r.get("memory_overhead") is None else f"{100 * r['memory_overhead']:.1f}%"
        flag = FLAG if above_ideal(r) else ""
        lines.append(
            f"{r['batch']:>3} {r['seq_len']:>6} {r['sparsity']:>5.2f} {_ms(r, 'dense'):>30} {_ms(r, 'routed'):>30} "
            f"{r['speedup']:>7.2f}{flag:1} {_ideal_cols(r, both)}" + (f" {mem:>7}" if mem_col else "")
        )
    lines.append("")
    head = f"{'decode B':>8} {'ctx':>6} {'s':>5} {'skipped [blocks]':>17} {'dense ms [min-max]':>30} {'routed ms [min-max]':>30} {'speedup':>8}"
    lines.append(head + (f" {ideal_head}" if both else ""))
    for r in decode:
        flag = FLAG if both and above_ideal(r) else ""
        lines.append(
            f"{r['batch']:>8} {r['context']:>6} {r['sparsity']:>5.2f} {_skip(r):>17} {_ms(r, 'dense'):>30} {_ms(r, 'routed'):>30} "
            f"{r['speedup']:>7.2f}{flag:1}" + (f" {_ideal_cols(r, both)}" if both else "")
        )
    if decode:
        lines.append("skipped: the realised decode skip rate of the timed steps, mean over routed blocks [min-max over blocks]")
        if both:
            lines.append("decode ms are per step; decode ideals at the realised skip rates")
    if any(above_ideal(r) for r in prefill) or (both and any(above_ideal(r) for r in decode)):
        lines.append(FLAG_NOTE)
    if memory:
        lines.append("")
        lines.append(format_memory(memory))
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_memory(rows: list[dict[str, Any]]) -> str:
    """Peak host memory: the peak resident set's rise over one prefill, a fresh process per measurement."""
    lines = [f"{'memory':>12} {'B':>3} {'L':>6} {'s':>5} {'dense MiB':>10} {'routed MiB':>11} {'overhead':>9}"]
    for r in rows:
        lines.append(f"{r['runtime']:>12} {r['batch']:>3} {r['seq_len']:>6} {r['sparsity']:>5.2f} {r['dense_mib']:>10.1f} "
                     f"{r['routed_mib']:>11.1f} {_pct(r['overhead']):>9}")
    lines.append("memory: rise of the peak resident set (VmHWM; ru_maxrss off Linux) over one prefill of the longest length, "
                 "median of fresh processes (samples in the JSON)")
    return "\n".join(lines)


def speedup_panel(ax: Any, rows: list[dict[str, Any]], x: str, xlabel: str, ylabel: str) -> None:
    """Measured speedup per (batch, sparsity) vs ``x``, its ideal(s) dashed/dotted, flagged points red."""
    flagged_label = "above ideal: timing noise / slow dense side, not a success"
    for (batch, s) in sorted({(r["batch"], r["sparsity"]) for r in rows}):
        sel = sorted((r for r in rows if r["batch"] == batch and r["sparsity"] == s), key=lambda r: r[x])
        xs = [r[x] for r in sel]
        line = ax.plot(xs, [r["speedup"] for r in sel], marker="o", label=f"B={batch}, s={s:.2f} measured")[0]
        if all(r.get("ideal") is not None for r in sel):
            ax.plot(xs, [r["ideal"] for r in sel], linestyle="--", color=line.get_color(), label=f"B={batch}, s={s:.2f} linear-FLOP ideal")
        if all(r.get("ideal_matmul") is not None for r in sel):
            ax.plot(xs, [r["ideal_matmul"] for r in sel], linestyle=":", color=line.get_color(), label=f"B={batch}, s={s:.2f} all-matmul ideal")
        bad = [r for r in sel if above_ideal(r)]
        if bad:
            ax.scatter([r[x] for r in bad], [r["speedup"] for r in bad], marker="X", s=90, color="red", zorder=5, label=flagged_label)
            flagged_label = None  # one legend entry
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6)


def plot(prefill: list[dict[str, Any]], path: Path, title: str, decode: list[dict[str, Any]] | None = None) -> None:
    """Prefill speedup vs length (and, where decode rows carry ideals, decode speedup vs context)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_decode = bool(decode) and all(r.get("ideal") is not None for r in decode)
    fig, axes = plt.subplots(1, 2 if with_decode else 1, figsize=(12 if with_decode else 7, 4.5), squeeze=False)
    speedup_panel(axes[0][0], prefill, "seq_len", "sequence length", "prefill speedup (dense / routed)")
    if with_decode:
        speedup_panel(axes[0][1], decode, "context", "decode context length", "decode speedup per step (dense / routed)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    for path in argv if argv is not None else sys.argv[1:]:
        doc = json.loads(Path(path).read_text())
        print(title(doc))
        print(format_tables(doc["prefill"], doc["decode"], doc.get("memory")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
