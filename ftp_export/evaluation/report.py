"""Evaluation output: ``eval.json`` (everything), ``eval.md`` (the tables) and ``eval.png``
(retention vs compute saved, dense/pruned linear FLOPs on x, one line per method kind, error bars
one standard error)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KIND_LABEL = {"ftp": "FTP (trained routers + schedule)", "oracle": "oracle router (the text's own skip costs)",
              "uniform-static": "uniform + static router", "shortgpt": "ShortGPT layer drop",
              "greedy-drop": "greedy KL layer drop (ftp-train's order)"}
BASELINE_TITLE = {"shortgpt": "ShortGPT", "greedy_drop": "greedy KL drop"}  # vs_<prefix> -> name


def _pm(value: float | None, se: float | None, fmt: str) -> str:
    """``value ± se`` in ``fmt`` ('.2f', '.1%', ...); 'n/a' for a missing value."""
    if value is None:
        return "n/a"
    return f"{value:{fmt}}" + (f" ± {se:{fmt}}" if se is not None else "")


def _pt(value: float | None, se: float | None) -> str:
    """A retention difference in percentage points, signed, with its standard error."""
    if value is None:
        return "n/a"
    return f"{100 * value:+.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")


def markdown_table(report: dict[str, Any]) -> str:
    """One row per method; every figure ``value ± standard error`` (paired bootstrap)."""
    tasks = list(report["tasks"])
    decode = bool(report.get("perplexity_windows", {}).get("decode_prefill_tokens"))
    head = ["group", "method", "FLOPs dense/pruned", "PPL", "PPL retention"]
    head += ["decode-mode PPL", "decode-mode PPL retention", "decode / prefill PPL (same tokens)"] if decode else []
    for t in tasks:
        head.append(f"{t} ({report['tasks'][t]['primary_metric']})")
    head += ["accuracy retention"] if tasks else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in report["results"]:
        ret, se = r["retention"], r.get("retention_se", {})
        ppl = r["perplexity"]
        cells = [r["group"], r["method"], f"{r['flop_ratio']:.3f}", _pm(ppl["perplexity"], ppl.get("perplexity_se"), ".2f"),
                 _pm(ret["perplexity"], se.get("perplexity"), ".1%")]
        if decode:
            d = r.get("decode_perplexity") or {}
            cells += [_pm(d.get("perplexity"), d.get("perplexity_se"), ".2f"),
                      _pm(ret.get("decode_perplexity"), se.get("decode_perplexity"), ".1%"),
                      _pm(d.get("ratio_to_prefill_mode"), d.get("ratio_to_prefill_mode_se"), ".3f")]
        for t in tasks:
            m = report["tasks"][t]["primary_metric"]
            cells.append(_pm(r["tasks"][t][m], r["tasks"][t].get(f"{m}_se"), ".3f"))
        if tasks:
            cells.append(_pm(ret.get("accuracy"), se.get("accuracy"), ".1%"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


COMPARED_TITLE = {"perplexity": "PPL", "decode_perplexity": "decode-mode PPL", "accuracy": "accuracy"}


def comparison_table(report: dict[str, Any], prefix: str = "shortgpt") -> str:
    """FTP against a layer-dropping baseline mixed to FTP's FLOPs (rows with ``vs_<prefix>``):
    both retentions and FTP minus the baseline in points, ± paired standard errors. 'FTP better
    on' lists the metrics where the difference is positive, with (*) where it exceeds 2 SE."""
    name = BASELINE_TITLE[prefix]
    rows = [r for r in report["results"] if r.get(f"vs_{prefix}")]
    keys = [k for k in COMPARED_TITLE if any(f"{prefix}_{k}_retention" in r[f"vs_{prefix}"] for r in rows)]
    if not rows:
        return ""
    head = ["group", "FLOPs dense/pruned"]
    for k in keys:
        head += [f"{COMPARED_TITLE[k]} retention FTP / {name}", f"FTP - {name} (pt)"]
    lines = ["| " + " | ".join(head) + " | FTP better on |", "|---|" + "---:|" * (len(head) - 1) + "---|"]
    for r in rows:
        v = r[f"vs_{prefix}"]
        cells, wins = [r["group"] + (" oracle router" if r["kind"] == "oracle" else ""), f"{v['flop_ratio']:.3f}"], []
        for key in keys:
            if f"{prefix}_{key}_retention" in v:
                cells.append(f"{r['retention'][key]:.1%} / {v[f'{prefix}_{key}_retention']:.1%}")
                diff, se = v[f"ftp_minus_{prefix}_{key}"], v.get(f"ftp_minus_{prefix}_{key}_se")
                cells.append(_pt(diff, se))
                if diff > 0:
                    wins.append(COMPARED_TITLE[key] + (" (*)" if se is not None and diff > 2 * se else ""))
            else:
                cells += ["n/a", "n/a"]
        cells.append(", ".join(wins) or "neither")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("perplexity", "perplexity retention (dense PPL / PPL)")]
    if any("decode_perplexity" in r["retention"] for r in report["results"]):
        panels.append(("decode_perplexity", "decode-mode perplexity retention"))
    if report["tasks"]:
        panels.append(("accuracy", "accuracy retention"))
    fig, axes = plt.subplots(1, len(panels), figsize=(1 + 4.5 * len(panels), 3.8), squeeze=False)
    dense = next(r for r in report["results"] if r["kind"] == "dense")
    for ax, (key, title) in zip(axes[0], panels):
        for i, (kind, label) in enumerate(KIND_LABEL.items()):  # one colour per kind in every panel
            pts = sorted({(r["flop_ratio"], r["retention"].get(key), r.get("retention_se", {}).get(key) or 0.0)
                          for r in report["results"] if r["kind"] == kind})
            pts = [p for p in pts if p[1] is not None]
            if pts:
                ax.errorbar([1.0] + [p[0] for p in pts], [1.0] + [p[1] for p in pts], yerr=[0.0] + [p[2] for p in pts],
                            marker="o", capsize=2, label=label, color=f"C{i}")
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


NOTE = ("{windows} held-out windows of {seq_len} tokens{decode}; {items}. Every row is scored on the same windows and "
        "items; ± is one standard error by paired bootstrap over windows and items ({resamples} resamples, seed {seed}).")


def _note_args(report: dict[str, Any]) -> dict[str, Any]:
    w, b = report["perplexity_windows"], report.get("bootstrap", {})
    items = ", ".join(f"{t}: {v['items']} items" for t, v in report["tasks"].items()) or "no tasks"
    p = w.get("decode_prefill_tokens")
    decode = (f" (decode mode: the first {p} tokens by prefill, the rest teacher-forced through the decode path with the "
              "KV cache, scored after the prompt)") if p else ""
    return {"windows": w["count"], "seq_len": w["seq_len"], "decode": decode,
            "items": items, "resamples": b.get("resamples", "?"), "seed": b.get("seed", "?")}


def write(report: dict[str, Any], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "eval.json", "markdown": folder / "eval.md", "plot": folder / "eval.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    cmp = ""
    for prefix, name in BASELINE_TITLE.items():
        table = comparison_table(report, prefix)
        if table:
            cmp += f"\n## FTP vs {name} at FTP's FLOPs (the bracketing drop counts mixed over requests)\n\n{table}\n"
    paths["markdown"].write_text(f"# Accuracy retention: {report['model']}\n\n{NOTE.format(**_note_args(report))}\n\n"
                                 f"{markdown_table(report)}\n{cmp}")
    plot(report, paths["plot"])
    return paths
