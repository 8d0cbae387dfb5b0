"""Reading a bench.json: the terminal table, the plot, and ``python -m ftp_export.bench.report
bench.json`` to print the table of a finished run (the GPU check script does)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def title(doc: dict[str, Any]) -> str:
    # bench.json files written before the ``logits`` key computed every position's logits
    return f"{doc['shape']} x{doc['layers']} blocks, {doc['dtype']}, {doc['runtime']}, {doc['device']}, logits: {doc.get('logits', 'all')}"


def _ms(r: dict[str, Any], side: str) -> str:
    lo, hi = r[f"{side}_range_ms"]
    return f"{r[f'{side}_ms']:.3f} [{lo:.3f}-{hi:.3f}]"


def format_tables(prefill: list[dict[str, Any]], decode: list[dict[str, Any]]) -> str:
    """Median [min-max] milliseconds, dense and routed on the same runtime."""
    lines = [f"{'B':>3} {'L':>6} {'s':>5} {'dense ms [min-max]':>26} {'routed ms [min-max]':>26} {'speedup':>8} {'ideal':>6} {'of ideal':>9} {'mem +':>7}"]
    for r in prefill:
        mem = "-" if r["memory_overhead"] is None else f"{100 * r['memory_overhead']:.1f}%"
        lines.append(
            f"{r['batch']:>3} {r['seq_len']:>6} {r['sparsity']:>5.2f} {_ms(r, 'dense'):>26} {_ms(r, 'routed'):>26} "
            f"{r['speedup']:>8.2f} {r['ideal']:>6.2f} {100 * r['of_ideal']:>8.1f}% {mem:>7}"
        )
    if any(r["speedup"] > 1.1 * r["ideal"] for r in prefill):
        lines.append("warning: a speedup above the linear-FLOP ideal is timing noise: raise --warmup / --iters")
    lines.append("")
    lines.append(f"{'decode B':>8} {'ctx':>6} {'s':>5} {'skipped':>8} {'dense ms [min-max]':>26} {'routed ms [min-max]':>26} {'speedup':>8}")
    for r in decode:
        skip = "n/a" if r.get("skip_rate") is None else f"{r['skip_rate']:.2f}"
        lines.append(
            f"{r['batch']:>8} {r['context']:>6} {r['sparsity']:>5.2f} {skip:>8} {_ms(r, 'dense'):>26} {_ms(r, 'routed'):>26} "
            f"{r['speedup']:>8.2f}"
        )
    if decode:
        lines.append("skipped: the realised decode skip rate of the timed step, over its routed blocks")
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


def main(argv: list[str] | None = None) -> int:
    for path in argv if argv is not None else sys.argv[1:]:
        doc = json.loads(Path(path).read_text())
        print(title(doc))
        print(format_tables(doc["prefill"], doc["decode"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
