"""Judging the steps' schedules on text no step fitted: the final choice among steps 1-4
(validation windows) and the comparison table with layer dropping (held-out windows).

The table's rows are :mod:`ftp_export.evaluation.methods` - the same model variants, layer-drop
baselines and equal-FLOP mixing as ``ftp-export eval`` - scored by
:func:`ftp_export.evaluation.metrics.perplexity`.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm

from ftp_export.evaluation import methods as M
from ftp_export.evaluation.baselines import interpolate_metrics
from ftp_export.evaluation.metrics import perplexity
from ftp_export.evaluation.oracle import oracle_method
from ftp_export.routing.router import RouterBank
from ftp_export_trainer import distributed as dist
from ftp_export_trainer.context import Context
from ftp_export_trainer.evaluate import dense_logits, routed_kl, routed_model

Candidate = tuple[str, list[float], RouterBank]  # ("step 1".."step 4", block sparsity, routers)

STEP_TITLES = {"step 1": "GA + static router (step 1)", "step 2": "GA + dynamic router (step 2)",
               "step 3": "GA fine-tuned + dynamic router (step 3)",
               "step 4": "GA fine-tuned + router retrained (step 4)"}


@torch.no_grad()
def select_final(ctx: Context, candidates: list[Candidate]) -> dict[str, Any]:
    """Which of steps 1-4 becomes the schedule: the lowest KL to dense on the validation windows
    (held-out text, disjoint from the calibration windows every step fits and from the
    comparison table's). Steps 2-4 only ever lower the *calibration* KL; on held-out text
    that can be a loss (SmolLM2-135M, docs/evaluation.md), and then an earlier step is kept.
    Without validation windows (``--validation-samples 0`` or too little held-out text) the last
    step is."""
    s, val = ctx.settings, ctx.data.validation
    if len(val) == 0:
        return {"windows": 0, "kl": {}, "chosen": candidates[-1][0]}
    ref = dense_logits(ctx.hf, val, s.batch_size)
    kl: dict[str, float] = {}
    for name, sp, routers in candidates:
        same = next((kl[n] for n, p, r in candidates if n in kl and p == sp and r is routers), None)
        kl[name] = same if same is not None else routed_kl(routed_model(ctx.hf, sp, routers), val, ref, s.batch_size)
    # ties (identical schedules) go to the later step
    chosen = min(reversed(list(kl)), key=lambda n: kl[n])
    ctx.log(f"final schedule: {chosen} (validation KL " + ", ".join(f"{n} {v:.4f}" for n, v in kl.items()) + ")")
    return {"windows": len(val), "kl": kl, "chosen": chosen}


def _methods(ctx: Context, uniform: list[float], candidates: list[Candidate], chosen: str) -> list[M.Method]:
    """Dense, uniform + static router, steps 1-4 (the chosen one marked "= FTP"), the oracle router
    at the chosen schedule's sparsities (:mod:`.oracle`: the ceiling of routing), then layer
    dropping at the drop counts that bracket the chosen schedule's FLOPs."""
    hf = ctx.hf
    steps = [M.routed(hf, STEP_TITLES[name] + (" = FTP" if name == chosen else ""), "ftp" if name == chosen else "routed", sp, routers)
             for name, sp, routers in candidates]
    final, routers = next((sp, r) for name, sp, r in candidates if name == chosen)
    order = ctx.removal["order"] if ctx.removal else []
    oracle = oracle_method(hf, final, ctx.settings.cost_samples, ctx.settings.seed + 3)
    return [M.dense(hf), M.routed(hf, "uniform + static router", "uniform-static", uniform), *steps, oracle,
            *M.layer_drops(hf, final, ctx.influence, order, routers)]


def _title(method: M.Method) -> str:
    """The table's name for a row: layer drops name their blocks."""
    blocks = method.detail.get("dropped_blocks")
    return method.name if blocks is None else f"{M.DROP_TITLES[method.kind]} drop {len(blocks)} blocks {blocks}"


@torch.no_grad()
def compare(ctx: Context, uniform: list[float], candidates: list[Candidate], chosen: str) -> list[dict[str, Any]]:
    """Held-out perplexity and KL to dense of every :func:`_methods` row, then each layer-drop
    baseline mixed to the chosen schedule's FLOPs (:func:`~ftp_export.evaluation.baselines.interpolate_metrics`)."""
    s, held = ctx.settings, ctx.data.held_out
    ref = dense_logits(ctx.hf, held, s.batch_size)
    methods = _methods(ctx, uniform, candidates, chosen)
    out = []
    for method in tqdm(methods, desc="held-out eval", disable=not (s.progress and dist.is_main()), leave=False):
        m = perplexity(lambda ids, f=method.forward: f(ids, None), held, s.batch_size, reference=ref)
        out.append({"method": _title(method), "perplexity": m["perplexity"], "kl_to_dense": m["kl_to_dense"], "tokens": m["tokens"],
                    "flop_ratio": method.flop_ratio})
    ftp_ratio = next(m.flop_ratio for m in methods if m.kind == "ftp")
    for kind, title in M.DROP_TITLES.items():
        measured = [row for row, method in zip(out, methods) if method.kind == kind]
        if measured:
            mixed = interpolate_metrics(ftp_ratio, [(r["flop_ratio"], r) for r in measured], ("perplexity", "kl_to_dense"))
            out.append({"method": f"{title} at equal FLOPs (interpolated)", **mixed, "tokens": measured[0]["tokens"], "flop_ratio": ftp_ratio})
    return out
