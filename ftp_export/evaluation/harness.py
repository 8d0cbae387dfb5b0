"""``ftp-export eval``: accuracy retention of FTP schedules next to equal-compute baselines.

For every schedule given: the schedule itself (FTP), the same mean sparsity with uniform blocks
and the static router (the same linear FLOPs), and layer dropping - ShortGPT's blocks, and the
greedy KL order where the schedule records one - at the two drop counts whose linear FLOPs
bracket the schedule's; each is interpolated to the schedule's FLOPs (the two counts mixed over
requests, :func:`add_equal_flop_comparison`). ``--uniform S`` adds baseline-only groups (no
schedule needed).
Each row gets held-out perplexity and zero-shot multiple-choice accuracy
(:mod:`~ftp_export.evaluation.tasks`); retention = pruned / dense (for perplexity: dense PPL /
pruned PPL, so 1.0 is lossless for both).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ftp_export.architectures import fingerprint, load_model, load_tokenizer, resolve_model
from ftp_export.calibration.windows import windows
from ftp_export.errors import FTPError
from ftp_export.evaluation import methods as M
from ftp_export.evaluation.baselines import block_influence, interpolate_metrics
from ftp_export.evaluation.metrics import perplexity
from ftp_export.evaluation.scoring import Encoder, score_items
from ftp_export.evaluation.tasks import TASKS, build_tasks
from ftp_export.schedule import load_schedule

#: The metric each task is judged by (lm-evaluation-harness convention for such tasks).
PRIMARY = {"brown-cloze": "acc", "brown-next-sentence": "acc_norm"}


@dataclass
class EvalRequest:
    model: str | None = None
    schedules: list[str] = field(default_factory=list)
    uniform: list[float] = field(default_factory=list)
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    items: int = 200
    ppl_windows: int = 16
    seq_len: int = 512
    influence_windows: int = 8
    seed: int = 0
    output: str = "exported/eval"
    device: str = "cpu"
    max_tokens: int = 4096
    brown_tarball: str | None = None
    progress: bool = True


def _validate(req: EvalRequest) -> None:
    if not req.schedules and not req.uniform:
        raise FTPError("nothing to compare: give --schedule FILE (FTP) and/or --uniform S (baselines only)")
    for s in req.uniform:
        if not 0.0 < s < 1.0:
            raise FTPError(f"--uniform {s}: sparsity must be in (0, 1)")
    unknown = [t for t in req.tasks if t not in TASKS]
    if unknown:
        raise FTPError(f"--tasks: unknown task {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    for name, v in (("items", req.items), ("ppl-windows", req.ppl_windows), ("influence-windows", req.influence_windows)):
        if v < 1:
            raise FTPError(f"--{name} must be >= 1")
    if req.seq_len < 8:
        raise FTPError("--seq-len must be >= 8")


def _windows(texts: list[str], encode: Any, seq_len: int, count: int, eos: int | None) -> torch.Tensor:
    """``count`` windows spread evenly over all of ``texts`` (every category of the corpus)."""
    ids: list[int] = []
    for t in texts:
        ids += encode(t) + ([eos] if eos is not None else [])
    if len(ids) < seq_len:
        raise FTPError(f"held-out text has {len(ids)} tokens, fewer than --seq-len {seq_len}")
    return windows(ids, seq_len, min(count, len(ids) // seq_len))  # disjoint windows only


def _texts(folder: Path, split: str) -> list[str]:
    with open(folder / f"{split}.jsonl") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def _removal_order(schedule: Any) -> list[int]:
    """ftp-train's greedy KL block-removal order, if the schedule records one."""
    doc = (schedule.produced_by or {}).get("block_removal") or {}
    return [int(b) for b in doc.get("order", [])]


def build_methods(hf: Any, schedules: list[tuple[str, Any]], uniform: list[float], influence: list[float]) -> list[tuple[str, M.Method]]:
    """(group, method) rows: dense, then per schedule FTP + uniform-static (same FLOPs) + ShortGPT
    at the drop counts that bracket those FLOPs (+ the greedy KL drop at those counts where the
    schedule carries ftp-train's removal order)."""
    rows = [("dense", M.dense(hf))]
    groups = [(f"s={sched.target_sparsity:.2f} ({label})", M.ftp(hf, sched, label), sched.target_sparsity, _removal_order(sched))
              for label, sched in schedules]
    groups += [(f"s={s:.2f}", None, s, []) for s in uniform]
    for group, ftp, s, order in groups:
        u = M.uniform_static(hf, s)
        sp = ftp.detail["block_sparsity"] if ftp is not None else u.detail["block_sparsity"]
        rows += [(group, m) for m in (ftp, u) if m is not None]
        rows += [(group, m) for m in M.layer_drops(hf, sp, influence, order)]
    return rows


def run_eval(req: EvalRequest, log: Any = print) -> dict[str, Any]:
    from ftp_export.evaluation.assets import load_documents, materialise_brown

    _validate(req)
    t0 = time.perf_counter()
    ref = resolve_model(req.model)
    schedules = []
    for path in req.schedules:
        sched = load_schedule(path)
        schedules.append((Path(path).stem, sched))
    hf = load_model(ref, torch.float32, req.device)
    for p in hf.parameters():
        p.requires_grad_(False)
    fp = fingerprint(hf.config)
    for _, sched in schedules:
        sched.check_model(fp)
    tokenizer = load_tokenizer(ref)
    tokenizer.model_max_length = 1 << 40  # whole documents are tokenised, then cut into windows
    encoder = Encoder(tokenizer)
    brown = materialise_brown(Path(req.brown_tarball) if req.brown_tarball else None)
    documents = load_documents(brown)
    eos = getattr(tokenizer, "eos_token_id", None)
    held = _windows(_texts(brown, "held_out"), encoder.encode, req.seq_len, req.ppl_windows, eos)
    calib = _windows(_texts(brown, "train"), encoder.encode, min(req.seq_len, 256), req.influence_windows, eos)
    influence = block_influence(hf, calib.to(req.device), batch_size=4)
    tasks = build_tasks(documents, req.tasks, req.items, req.seed)
    rows = build_methods(hf, schedules, req.uniform, influence)
    results = []
    show = req.progress
    for group, method in tqdm(rows, desc="methods", disable=not show, dynamic_ncols=True):
        t = time.perf_counter()
        row: dict[str, Any] = {"group": group, "method": method.name, "kind": method.kind, "sparsity": method.sparsity,
                               "flop_ratio": method.flop_ratio, **method.detail}
        row["perplexity"] = perplexity(lambda ids, f=method.forward: f(ids, torch.ones_like(ids)), held, 4, device=req.device,
                                       desc=f"{method.name} ppl" if show else None)
        row["tasks"] = {name: score_items(method.forward, encoder, items, req.max_tokens, req.device,
                                          desc=f"{method.name} {name}" if show else None)
                        for name, items in tasks.items()}
        row["seconds"] = time.perf_counter() - t
        results.append(row)
        log(f"{method.name}: PPL {row['perplexity']['perplexity']:.3f}"
            + "".join(f", {k} {v[PRIMARY[k]]:.3f}" for k, v in row["tasks"].items()))
    add_retention(results)
    add_equal_flop_comparison(results)
    return {
        "tool": "ftp-export eval",
        "model": ref.source,
        "schedules": [{"label": lbl, "path": str(s.path), "sha256": s.sha256, "sparsity": s.target_sparsity} for lbl, s in schedules],
        "text": json.loads((brown / "SOURCE.json").read_text()),
        "perplexity_windows": {"count": int(held.shape[0]), "seq_len": int(held.shape[1]), "split": "held_out"},
        "tasks": {name: {"items": len(items), "primary_metric": PRIMARY[name], "chance": 1 / len(items[0].choices) if items else None}
                  for name, items in tasks.items()},
        "seed": req.seed,
        "results": results,
        "seconds": time.perf_counter() - t0,
    }


def add_retention(results: list[dict[str, Any]]) -> None:
    """Fill ``retention`` (pruned / dense) and ``accuracy`` (mean primary metric) in every row."""
    dense = next(r for r in results if r["kind"] == "dense")
    for r in results:
        r["accuracy"] = sum(v[PRIMARY[k]] for k, v in r["tasks"].items()) / max(len(r["tasks"]), 1) if r["tasks"] else None
    for r in results:
        ret = {"perplexity": dense["perplexity"]["perplexity"] / r["perplexity"]["perplexity"]}
        for k, v in r["tasks"].items():
            d = dense["tasks"][k][PRIMARY[k]]
            ret[k] = v[PRIMARY[k]] / d if d else None
        if r["accuracy"] is not None and dense["accuracy"]:
            ret["accuracy"] = r["accuracy"] / dense["accuracy"]
        r["retention"] = ret


EQUAL_FLOP_BASELINES = {"shortgpt": "shortgpt", "greedy-drop": "greedy_drop"}  # row kind -> key prefix


def add_equal_flop_comparison(results: list[dict[str, Any]]) -> None:
    """For every FTP row and layer-dropping baseline (``vs_shortgpt``, ``vs_greedy_drop``): the
    baseline's retention at FTP's FLOPs - the group's bracketing drop counts mixed over requests
    to FTP's cost (:func:`~ftp_export.evaluation.baselines.interpolate_metrics`) - and FTP minus that
    (positive = FTP retains more)."""
    for r in results:
        if r["kind"] != "ftp":
            continue
        for kind, prefix in EQUAL_FLOP_BASELINES.items():
            rows = sorted((s for s in results if s["group"] == r["group"] and s["kind"] == kind), key=lambda s: s["flop_ratio"])
            if not rows:
                continue
            cmp: dict[str, Any] = {"flop_ratio": r["flop_ratio"], f"{prefix}_rows": [s["method"] for s in rows]}
            mixed = interpolate_metrics(r["flop_ratio"], [(s["flop_ratio"], s["retention"]) for s in rows], ("perplexity", "accuracy"))
            for key, value in mixed.items():
                if r["retention"].get(key) is not None:
                    cmp[f"{prefix}_{key}_retention"] = value
                    cmp[f"ftp_minus_{prefix}_{key}"] = r["retention"][key] - value
            r[f"vs_{prefix}"] = cmp
