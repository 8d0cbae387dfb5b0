"""``ftp-export eval``: accuracy retention of FTP schedules next to equal-compute baselines.

For every schedule given: the schedule itself (FTP), the same mean sparsity with uniform blocks
and the static router (the same linear FLOPs), and layer dropping - ShortGPT's blocks, and the
greedy KL order where the schedule records one - at the two drop counts whose linear FLOPs
bracket the schedule's; each is interpolated to the schedule's FLOPs (the two counts mixed over
requests, :func:`add_equal_flop_comparison`). ``--uniform S`` adds baseline-only groups (no
schedule needed).

Each row gets, on the same held-out windows and the same items as every other row:

- prefill-mode perplexity (each window in one prefill call, top-k routing over the window);
- decode-mode perplexity (:func:`~ftp_export.evaluation.methods.decode_logits`: the first
  ``decode_prefill`` of each window by prefill, the rest teacher-forced through the decode path
  with the KV cache, as generation runs), scored on the tokens after the prompt, beside the
  prefill-mode perplexity of those same tokens;
- zero-shot multiple-choice accuracy (:mod:`~ftp_export.evaluation.tasks`).

Retention = pruned / dense (for perplexity: dense PPL / pruned PPL, so 1.0 is lossless for both).
Every figure carries a standard error by paired bootstrap over windows and items
(:mod:`~ftp_export.evaluation.bootstrap`): retention and FTP-minus-baseline differences are
computed inside each resample, so their standard errors are paired.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ftp_export.architectures import fingerprint, load_model, load_tokenizer, resolve_model
from ftp_export.calibration.windows import windows
from ftp_export.errors import FTPError
from ftp_export.evaluation import methods as M
from ftp_export.evaluation.baselines import block_influence, interpolate_at_flops, interpolate_replicates
from ftp_export.evaluation.bootstrap import RESAMPLES, Resampler, safe_ratio, standard_error
from ftp_export.evaluation.metrics import token_nll
from ftp_export.evaluation.oracle import ORACLE_SAMPLES, SkipCostMemo, oracle_method
from ftp_export.evaluation.scoring import Encoder, score_items
from ftp_export.evaluation.split_oracle import split_oracle_method
from ftp_export.evaluation.tasks import TASKS, build_tasks
from ftp_export.schedule import load_schedule

#: The metric each task is judged by (lm-evaluation-harness convention for such tasks).
PRIMARY = {"brown-cloze": "acc", "brown-next-sentence": "acc_norm"}
#: Metrics compared against layer dropping at FTP's FLOPs (retention keys).
COMPARED = ("perplexity", "decode_perplexity", "accuracy")

PPL_BATCH = 4  # windows per prefill-mode call
DECODE_BATCH = 1  # windows per decode-mode call (a threshold-routed call gathers K/V per decoded row)


@dataclass
class EvalRequest:
    """Defaults are the full run (issue 16: >= 400 items per task; the standard error of an
    FTP-minus-baseline difference under 1 pt of perplexity retention and 2 pt of accuracy
    retention); CI uses a few items and windows."""

    model: str | None = None
    schedules: list[str] = field(default_factory=list)
    uniform: list[float] = field(default_factory=list)
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    items: int = 400
    ppl_windows: int = 64
    seq_len: int = 512
    decode_prefill: float = 0.5  # share of each window prefilled before teacher-forced decoding; 0: no decode mode
    influence_windows: int = 8
    resamples: int = RESAMPLES
    seed: int = 0
    output: str = "exported/eval"
    device: str = "cpu"
    max_tokens: int = 4096
    brown_tarball: str | None = None
    progress: bool = True
    oracle: bool = False  # add each schedule's oracle-router row (:mod:`.oracle`): the ceiling of routing


def prefill_tokens(req: EvalRequest) -> int:
    """Tokens of each window prefilled before decode-mode scoring (0: decode mode off)."""
    return 0 if req.decode_prefill == 0 else min(req.seq_len - 1, max(1, round(req.seq_len * req.decode_prefill)))


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
    if req.resamples < 2:
        raise FTPError("--bootstrap-resamples must be >= 2")
    if not 0.0 <= req.decode_prefill < 1.0:
        raise FTPError(f"--decode-prefill {req.decode_prefill}: must be in [0, 1) (0 turns decode-mode perplexity off)")
    if req.seq_len < 8:
        raise FTPError("--seq-len must be >= 8")


def split_ids(folder: Path, split: str, encode: Any, eos: int | None) -> list[int]:
    """A corpus split (``held_out``, ``train``) as one token stream, documents joined by ``eos``."""
    ids: list[int] = []
    for t in _texts(folder, split):
        ids += encode(t) + ([eos] if eos is not None else [])
    return ids


def _windows(ids: list[int], seq_len: int, count: int) -> torch.Tensor:
    """``count`` windows spread evenly over all of ``ids`` (every category of the corpus)."""
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


def build_methods(
    hf: Any, schedules: list[tuple[str, Any]], uniform: list[float], influence: list[float], oracle: bool = False, seed: int = 0
) -> list[tuple[str, M.Method]]:
    """(group, method) rows: dense, then per schedule FTP (+ with ``oracle``, the oracle router at
    its block sparsities, and the oracle with attention and MLP routed apart, :mod:`.split_oracle`)
    + uniform-static (same FLOPs) + ShortGPT at the drop counts that bracket FTP's FLOPs, its
    counted routers included (+ the greedy KL drop at those counts where the schedule carries
    ftp-train's removal order)."""
    rows = [("dense", M.dense(hf))]
    groups = [(f"s={sched.target_sparsity:.2f} ({label})", M.ftp(hf, sched, label), sched.target_sparsity, _removal_order(sched), sched.routers)
              for label, sched in schedules]
    groups += [(f"s={s:.2f}", None, s, [], None) for s in uniform]
    for group, ftp, s, order, routers in groups:
        u = M.uniform_static(hf, s)
        sp = ftp.detail["block_sparsity"] if ftp is not None else u.detail["block_sparsity"]
        best = []
        if oracle and ftp is not None:
            memo = SkipCostMemo(hf, ORACLE_SAMPLES, seed)  # both oracle rows score the same windows: one backward each
            best = [oracle_method(hf, sp, ORACLE_SAMPLES, seed, memo), split_oracle_method(hf, sp, ORACLE_SAMPLES, seed, memo=memo)]
        rows += [(group, m) for m in (ftp, *best, u) if m is not None]
        rows += [(group, m) for m in M.layer_drops(hf, sp, influence, order, routers)]
    return rows


def _sums(nll: torch.Tensor) -> list[float]:
    return [float(x) for x in nll.sum(dim=1)]


def measure_perplexity(method: M.Method, held: torch.Tensor, prefill: int, device: str, show: bool) -> dict[str, Any]:
    """Per-window NLL sums of ``method`` on ``held`` [W, L]: prefill mode over every predicted
    token, and (``prefill`` > 0 and the method has a decoder) decode mode over the tokens after
    the first ``prefill`` (the prefill's last position predicts token ``prefill``), with prefill
    mode's NLL of those same tokens beside it."""
    nll = token_nll(lambda ids: method.forward(ids, torch.ones_like(ids)), held, PPL_BATCH, device=device,
                    desc=f"{method.name} ppl" if show else None)
    units: dict[str, Any] = {"window_nll": _sums(nll), "window_tokens": int(nll.shape[1])}
    if prefill:
        units["prefill_tail_window_nll"] = _sums(nll[:, prefill - 1 :])
        units["decode_window_tokens"] = int(nll.shape[1]) - (prefill - 1)
        units["decode_prefill_tokens"] = prefill
        if method.decoder is not None:
            dec = token_nll(lambda ids: M.decode_logits(method.decoder, ids, prefill), held, DECODE_BATCH, device=device,
                            desc=f"{method.name} decode ppl" if show else None)
            units["decode_window_nll"] = _sums(dec[:, prefill - 1 :])
    return units


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
    held = _windows(split_ids(brown, "held_out", encoder.encode, eos), req.seq_len, req.ppl_windows)
    calib = _windows(split_ids(brown, "train", encoder.encode, eos), min(req.seq_len, 256), req.influence_windows)
    influence = block_influence(hf, calib.to(req.device), batch_size=4)
    tasks = build_tasks(documents, req.tasks, req.items, req.seed)
    rows = build_methods(hf, schedules, req.uniform, influence, req.oracle, req.seed)
    prefill = prefill_tokens(req)
    results = []
    show = req.progress
    for group, method in tqdm(rows, desc="methods", disable=not show, dynamic_ncols=True):
        t = time.perf_counter()
        row: dict[str, Any] = {"group": group, "method": method.name, "kind": method.kind, "sparsity": method.sparsity,
                               "flop_ratio": method.flop_ratio, **method.detail}
        units = measure_perplexity(method, held, prefill, req.device, show)
        row["tasks"] = {}
        units["items"] = {}
        for name, items in tasks.items():
            score = score_items(method.forward, encoder, items, req.max_tokens, req.device, desc=f"{method.name} {name}" if show else None)
            units["items"][name] = {k: "".join(str(v) for v in vs) for k, vs in score.pop("per_item").items()}
            row["tasks"][name] = score
        if prefill and method.decoder is None:
            row["decode_perplexity"] = {"note": method.decode_note or "no decoder"}
        row["seconds"] = time.perf_counter() - t
        row["per_unit"] = units
        results.append(row)
        dec = units.get("decode_window_nll")
        log(f"{method.name}: PPL {math.exp(sum(units['window_nll']) / (len(held) * units['window_tokens'])):.3f}"
            + (f", decode-mode PPL {math.exp(sum(dec) / (len(held) * units['decode_window_tokens'])):.3f}" if dec else "")
            + "".join(f", {k} {v[PRIMARY[k]]:.3f}" for k, v in row["tasks"].items()))
    boot = Resampler(int(held.shape[0]), {name: len(items) for name, items in tasks.items()}, req.resamples, req.seed)
    reps = [add_statistics(r, boot) for r in results]
    add_retention(results, reps)
    add_equal_flop_comparison(results, reps)
    return {
        "tool": "ftp-export eval",
        "model": ref.source,
        "schedules": [{"label": lbl, "path": str(s.path), "sha256": s.sha256, "sparsity": s.target_sparsity} for lbl, s in schedules],
        "text": json.loads((brown / "SOURCE.json").read_text()),
        "perplexity_windows": {"count": int(held.shape[0]), "seq_len": int(held.shape[1]), "split": "held_out",
                               "decode_prefill_tokens": prefill},
        "tasks": {name: {"items": len(items), "primary_metric": PRIMARY[name], "chance": 1 / len(items[0].choices) if items else None}
                  for name, items in tasks.items()},
        "bootstrap": {"resamples": req.resamples, "seed": req.seed, "paired": True,
                      "units": "perplexity windows; items, per task (every row on the same windows and items; "
                               "each resample draws them once for all rows)"},
        "seed": req.seed,
        "results": results,
        "seconds": time.perf_counter() - t0,
    }


def _item_values(bits: str) -> list[int]:
    return [int(c) for c in bits]


def add_statistics(row: dict[str, Any], boot: Resampler) -> dict[str, Any]:
    """Fill ``row``'s perplexity, decode-mode perplexity and task figures (with standard errors)
    from its ``per_unit`` data; return their bootstrap replicates (``[R]`` arrays) by name."""
    u = row["per_unit"]
    n_win = len(u["window_nll"])
    reps: dict[str, Any] = {}
    tok = [u["window_tokens"]] * n_win
    nll_rep = boot.window_ratio(u["window_nll"], tok)
    nll = sum(u["window_nll"]) / max(sum(tok), 1)
    reps["perplexity"] = np.exp(nll_rep)
    row["perplexity"] = {"perplexity": math.exp(nll), "perplexity_se": standard_error(reps["perplexity"]),
                         "nll_per_token": nll, "nll_per_token_se": standard_error(nll_rep), "tokens": sum(tok)}
    if "decode_window_nll" in u:
        dtok = [u["decode_window_tokens"]] * n_win
        dec, tail = sum(u["decode_window_nll"]) / sum(dtok), sum(u["prefill_tail_window_nll"]) / sum(dtok)
        reps["decode_perplexity"] = np.exp(boot.window_ratio(u["decode_window_nll"], dtok))
        tail_rep = np.exp(boot.window_ratio(u["prefill_tail_window_nll"], dtok))
        row["decode_perplexity"] = {
            "perplexity": math.exp(dec), "perplexity_se": standard_error(reps["decode_perplexity"]),
            "nll_per_token": dec, "tokens": sum(dtok), "prefill_tokens": u["decode_prefill_tokens"],
            "prefill_mode_perplexity": math.exp(tail), "prefill_mode_perplexity_se": standard_error(tail_rep),
            "ratio_to_prefill_mode": math.exp(dec - tail),
            "ratio_to_prefill_mode_se": standard_error(reps["decode_perplexity"] / tail_rep),
        }
    for task, score in row["tasks"].items():
        for metric, bits in u["items"][task].items():
            reps[(task, metric)] = boot.item_mean(task, _item_values(bits))
            score[f"{metric}_se"] = standard_error(reps[(task, metric)])
    return reps


def add_retention(results: list[dict[str, Any]], reps: list[dict[str, Any]]) -> None:
    """Fill ``accuracy`` (mean primary metric), ``retention`` (pruned / dense) and their standard
    errors (``accuracy_se``, ``retention_se``) in every row, paired with dense per resample; the
    retention replicates go into ``reps[i]['retention']``."""
    d = next(i for i, r in enumerate(results) if r["kind"] == "dense")
    dense, dense_reps = results[d], reps[d]
    for r, rep in zip(results, reps):
        if r["tasks"]:
            r["accuracy"] = sum(v[PRIMARY[k]] for k, v in r["tasks"].items()) / len(r["tasks"])
            rep["accuracy"] = sum(rep[(k, PRIMARY[k])] for k in r["tasks"]) / len(r["tasks"])
            r["accuracy_se"] = standard_error(rep["accuracy"])
        else:
            r["accuracy"], r["accuracy_se"] = None, None
    for r, rep in zip(results, reps):
        ret: dict[str, Any] = {"perplexity": dense["perplexity"]["perplexity"] / r["perplexity"]["perplexity"]}
        ret_reps: dict[str, np.ndarray] = {"perplexity": safe_ratio(dense_reps["perplexity"], rep["perplexity"])}
        if "decode_perplexity" in rep and "decode_perplexity" in dense_reps:
            ret["decode_perplexity"] = dense["decode_perplexity"]["perplexity"] / r["decode_perplexity"]["perplexity"]
            ret_reps["decode_perplexity"] = safe_ratio(dense_reps["decode_perplexity"], rep["decode_perplexity"])
        for k, v in r["tasks"].items():
            base = dense["tasks"][k][PRIMARY[k]]
            ret[k] = v[PRIMARY[k]] / base if base else None
            if base:
                ret_reps[k] = safe_ratio(rep[(k, PRIMARY[k])], dense_reps[(k, PRIMARY[k])])
        if r["accuracy"] is not None and dense["accuracy"]:
            ret["accuracy"] = r["accuracy"] / dense["accuracy"]
            ret_reps["accuracy"] = safe_ratio(rep["accuracy"], dense_reps["accuracy"])
        r["retention"] = ret
        r["retention_se"] = {k: standard_error(ret_reps.get(k)) if v is not None else None for k, v in ret.items()}
        rep["retention"] = ret_reps


EQUAL_FLOP_BASELINES = {"shortgpt": "shortgpt", "greedy-drop": "greedy_drop"}  # row kind -> key prefix


def add_equal_flop_comparison(results: list[dict[str, Any]], reps: list[dict[str, Any]]) -> None:
    """For every FTP (and oracle-router) row and layer-dropping baseline (``vs_shortgpt``, ``vs_greedy_drop``): the
    baseline's retention at FTP's FLOPs - the group's bracketing drop counts mixed over requests
    to FTP's cost (:func:`~ftp_export.evaluation.baselines.interpolate_at_flops`) - and FTP minus
    that (positive = FTP retains more), each with its paired bootstrap standard error (``_se``)."""
    for r, rep in zip(results, reps):
        if r["kind"] not in ("ftp", "oracle"):
            continue
        for kind, prefix in EQUAL_FLOP_BASELINES.items():
            rows = sorted((i for i, s in enumerate(results) if s["group"] == r["group"] and s["kind"] == kind),
                          key=lambda i: results[i]["flop_ratio"])
            if not rows:
                continue
            cmp: dict[str, Any] = {"flop_ratio": r["flop_ratio"], f"{prefix}_rows": [results[i]["method"] for i in rows]}
            for key in COMPARED:
                if r["retention"].get(key) is None or any(results[i]["retention"].get(key) is None for i in rows):
                    continue
                log = "perplexity" in key
                value = interpolate_at_flops(r["flop_ratio"], [(results[i]["flop_ratio"], results[i]["retention"][key]) for i in rows], log)
                mixed = interpolate_replicates(r["flop_ratio"], [(results[i]["flop_ratio"], reps[i]["retention"][key]) for i in rows], log)
                cmp[f"{prefix}_{key}_retention"] = value
                cmp[f"{prefix}_{key}_retention_se"] = standard_error(mixed)
                cmp[f"ftp_minus_{prefix}_{key}"] = r["retention"][key] - value
                cmp[f"ftp_minus_{prefix}_{key}_se"] = standard_error(rep["retention"][key] - mixed)
            r[f"vs_{prefix}"] = cmp
