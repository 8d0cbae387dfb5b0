"""Training report next to the schedule: ``<stem>.report.json`` and PNG plots
(``<stem>.sparsity.png``: per-block sparsity bars; ``<stem>.losses.png``: GA fitness and
router-training loss curves), plus the held-out comparison as a markdown table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | held-out PPL | KL to dense | dense/routed linear FLOPs |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['perplexity']:.3f} | {r['kl_to_dense']:.4f} | {r['flop_ratio']:.3f} |")
    return "\n".join(lines)


def write_report(report: dict[str, Any], output: Path) -> dict[str, Path]:
    """Write the JSON report and plots beside ``output``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = output.with_suffix("")
    paths = {"report": Path(f"{stem}.report.json"), "sparsity": Path(f"{stem}.sparsity.png"), "losses": Path(f"{stem}.losses.png")}
    report = dict(report, plots={k: v.name for k, v in paths.items() if k != "report"})
    if "comparison" in report:
        report["comparison_markdown"] = markdown_table(report["comparison"])
    paths["report"].write_text(json.dumps(report, indent=2) + "\n")

    sp = report["block_sparsity"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    n = len(sp["final"])
    width = 0.27
    for j, key in enumerate(("uniform", "step1_ga_static", "final")):
        ax.bar([b + (j - 1) * width for b in range(n)], sp[key], width, label=key)
    ax.set_xlabel("block")
    ax.set_ylabel("sparsity")
    ax.set_title(f"per-block sparsity (target {report['settings']['sparsity']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths["sparsity"], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for key, label in (("ga1_history", "step 1 (static)"), ("ga3_history", "step 3 (dynamic)")):
        h = report[key]
        axes[0].plot([r["generation"] for r in h], [r["best"] for r in h], marker="o", label=f"{label} best")
    axes[0].set_xlabel("generation")
    axes[0].set_ylabel("KL to dense")
    axes[0].set_title("GA fitness")
    axes[0].legend(fontsize=8)
    rh = report["router_history"]
    for part in ("loss", "distill", "guide", "sparsity"):
        pts = [(r["step"], r[part]) for r in rh if part in r]
        axes[1].plot([p[0] for p in pts], [p[1] for p in pts], label=part)
    sel = [(r["step"], r["selection"]) for r in rh if "selection" in r]
    if sel:
        axes[1].plot([p[0] for p in sel], [p[1] for p in sel], "k.", label="hard KL (selection)")
    axes[1].set_xlabel("step")
    axes[1].set_title("router training")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths["losses"], dpi=100)
    plt.close(fig)
    return paths
