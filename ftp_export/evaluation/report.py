"""Evaluation output: ``eval.json`` (everything), ``eval.md`` (the tables) and ``eval.png``
(retention vs compute saved, dense/pruned linear FLOPs on x, one line per method kind)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KIND_LABEL = {"ftp": "FTP (trained routers + schedule)", "uniform-static": "uniform + static router", "shortgpt": "ShortGPT layer drop",
              "greedy-drop": "greedy KL layer drop (ftp-train's order)"}
BASELINE_TITLE = {"shortgpt": "ShortGPT", "greedy_drop": "greedy KL drop"}  # vs_<prefix> -> name


def markdown_table(report: dict[str, Any]) -> str:
    tasks = list(report["tasks"])
    head = ["group", "method", "FLOPs dense/pruned", "PPL", "PPL retention"]
    for t in tasks:
        head.append(f"{t} ({report['tasks'][t]['primary_metric']})")
    head += ["accuracy retention"] if tasks else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in report["results"]:
        ret = r["retention"]
        cells = [r["group"], r["method"], f"{r['flop_ratio']:.3f}", f"{r['perplexity']['perplexity']:.2f}", f"{ret['perplexity']:.1%}"]
        for t in tasks:
            cells.append(f"{r['tasks'][t][report['tasks'][t]['primary_metric']]:.3f}")
        if tasks:
            cells.append(f"{ret['accuracy']:.1%}" if ret.get("accuracy") is not None else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(report: dict[str, Any], prefix: str = "shortgpt") -> str:
    """FTP against a layer-dropping baseline mixed to FTP's FLOPs (rows with ``vs_<prefix>``)."""
    name = BASELINE_TITLE[prefix]
    lines = [f"| group | FLOPs dense/pruned | PPL retention FTP / {name} | accuracy retention FTP / {name} | FTP better on |",
             "|---|---:|---:|---:|---|"]
    for r in report["results"]:
        v = r.get(f"vs_{prefix}")
        if not v:
            continue
        cells, wins = [r["group"], f"{v['flop_ratio']:.3f}"], []
        for key in ("perplexity", "accuracy"):
            if f"{prefix}_{key}_retention" in v:
                cells.append(f"{r['retention'][key]:.1%} / {v[f'{prefix}_{key}_retention']:.1%}")
                if v[f"ftp_minus_{prefix}_{key}"] > 0:
                    wins.append(key)
            else:
                cells.append("n/a")
        cells.append(", ".join(wins) or "neither")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_acc = bool(report["tasks"])
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5.5, 3.8), squeeze=False)
    panels = [("perplexity", "perplexity retention (dense PPL / PPL)")] + ([("accuracy", "accuracy retention")] if has_acc else [])
    dense = next(r for r in report["results"] if r["kind"] == "dense")
    for ax, (key, title) in zip(axes[0], panels):
        for kind, label in KIND_LABEL.items():
            pts = sorted({(r["flop_ratio"], r["retention"].get(key)) for r in report["results"] if r["kind"] == kind})
            pts = [p for p in pts if p[1] is not None]
            if pts:
                ax.plot([1.0] + [p[0] for p in pts], [1.0] + [p[1] for p in pts], marker="o", label=label)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("dense / pruned linear FLOPs (higher = cheaper)")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=8)
    model = Path(str(report["model"])).name
    fig.suptitle(f"{model}: dense PPL {dense['perplexity']['perplexity']:.2f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(report: dict[str, Any], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "eval.json", "markdown": folder / "eval.md", "plot": folder / "eval.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    cmp = ""
    for prefix, name in BASELINE_TITLE.items():
        table = comparison_table(report, prefix)
        if table:
            cmp += f"\n## FTP vs {name} at FTP's FLOPs (the bracketing drop counts mixed over requests)\n\n{table}\n"
    paths["markdown"].write_text(f"# Accuracy retention: {report['model']}\n\n{markdown_table(report)}\n{cmp}")
    plot(report, paths["plot"])
    return paths
