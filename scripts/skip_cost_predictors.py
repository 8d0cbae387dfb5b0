"""Which router inputs predict per-token skip costs (issue 16, item 3: routers that see the token).

For a few blocks of a model (default SmolLM2-135M, Brown text), the per-token skip costs of
ftp-train's step 2a (:mod:`ftp_export_trainer.skip_costs`) are computed on ``--fit-windows`` +
``--test-windows`` windows, the router inputs are recorded in a routed pass (the chosen blocks
routed at ``--sparsity`` with the static router, the others dense, as step 2a's pass sees them),
and predictors of the per-sequence-centred log skip cost are fitted on the fit windows and scored
on the test windows:

- ``position``: the static router (score = 1 - position), nothing fitted;
- ``factors``: the four-factor MLP, fitted as step 2a fits it (:func:`fit_router`);
- ``factors+hidden rR learned``: the same MLP over the factors and a rank-R projection of the
  block's normalised input hidden state, projection and MLP trained together by gradient descent;
- ``factors+hidden r1 ridge (ftp-train)``: what ``ftp-train --router hidden`` fits in step 2a: the
  projection is the ridge direction (:mod:`ftp_export_trainer.ridge`), the MLP fitted over the
  factors and that feature;
- ``ridge hidden``: ridge regression on the full normalised hidden state and the factors (the
  linear ceiling; its penalty chosen by 4-fold cross-validation over the fit windows).

Scores: held-out explained variance of the centred log cost (``ev``), top-k overlap with the
oracle ranking by true skip cost at keep ``--keep`` (``overlap``; a random ranking gets about
``keep``), and the true skip cost of the skipped tokens relative to the oracle's (``cost/oracle``,
1 is perfect). The router's FLOPs per token as a share of the block's linear FLOPs are listed
with each predictor (the cap is 0.5%).

    OMP_NUM_THREADS=2 python scripts/skip_cost_predictors.py --out skip_cost_predictors.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from ftp_export.architectures import load_model, resolve_model
from ftp_export.flops import block_linear_flops, router_flops
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.router import RouterBank, RouterMLP
from ftp_export.schedule import new_schedule
from ftp_export_trainer.data import load_data
from ftp_export_trainer.ridge import ridge_fit
from ftp_export_trainer.router_fitting import RouterFitConfig, centred_log_cost, fit_router
from ftp_export_trainer.skip_costs import skip_costs

CACHE = Path.home() / ".cache" / "ftp-export"


class _Recorder(nn.Module):
    """Stands in for the router bank: keeps each routed block's factors and normalised input and
    routes with the static (position-priority) score."""

    state_rank = 1  # ask RoutedCausalLM for the hidden states

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, block: int, features: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        self.seen[block] = (features.detach().float().clone(), states.detach().float().clone())
        return 1.0 - features[..., 0]


def scores(pred: torch.Tensor, cost: torch.Tensor, keep: float) -> dict[str, float]:
    """Explained variance, top-k overlap with the oracle and skipped cost / oracle's on [N, T]."""
    y = centred_log_cost(cost)
    p = pred - pred.mean(-1, keepdim=True)
    ev = 1.0 - float((p - y).square().mean() / y.var(unbiased=False))
    k = math.ceil(keep * cost.shape[-1])
    top_p = torch.zeros_like(cost, dtype=torch.bool).scatter(1, pred.topk(k, -1).indices, True)
    top_o = torch.zeros_like(cost, dtype=torch.bool).scatter(1, cost.topk(k, -1).indices, True)
    overlap = float((top_p & top_o).sum(-1).float().mean() / k)
    ratio = float((cost * ~top_p).sum() / (cost * ~top_o).sum().clamp(min=1e-30))
    return {"ev": ev, "overlap": overlap, "cost/oracle": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(CACHE / "models" / "smollm2-135m"))
    ap.add_argument("--data", default=str(CACHE / "text" / "brown" / "train.jsonl"))
    ap.add_argument("--blocks", default="5,7,11,22")
    ap.add_argument("--ranks", default="8,16,32")
    ap.add_argument("--fit-windows", type=int, default=32)
    ap.add_argument("--test-windows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.4)
    ap.add_argument("--keep", type=float, default=0.6)
    ap.add_argument("--cost-samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=RouterFitConfig.steps)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="skip_cost_predictors.json")
    ap.add_argument("--cache", default="", help="a .pt file keeping the skip costs between runs (same windows)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    ref = resolve_model(args.model)
    hf = load_model(ref)
    for p in hf.parameters():
        p.requires_grad_(False)
    n_win = args.fit_windows + args.test_windows
    data = load_data(args.data, ref.source, int(hf.config.vocab_size), n_win, args.seq_len, 1).train[:n_win]
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.is_file():
        saved = torch.load(cache)
        assert torch.equal(saved["data"], data), f"{cache} holds other windows"
        costs = saved["costs"]
    else:
        batches = -(-n_win // 8)
        costs = skip_costs(hf, data, args.cost_samples, 8, args.seed, progress=lambda i: print(f"skip costs: batch of {batches}", flush=True))
        if cache is not None:
            torch.save({"data": data, "costs": costs}, cache)
    t_costs = time.perf_counter() - t0
    blocks = [int(b) for b in args.blocks.split(",")]
    ranks = [int(r) for r in args.ranks.split(",")]
    n = int(hf.config.num_hidden_layers)
    sparsity = [args.sparsity if b in blocks else 0.0 for b in range(n)]
    model = RoutedCausalLM(hf, new_schedule(hf.config, sparsity))
    recorder = _Recorder()
    model.routers = recorder
    with torch.no_grad():
        model(data, mode="prefill")
    dim = int(hf.config.hidden_size)
    block_flops = block_linear_flops(hf.config).total
    cfg = RouterFitConfig(steps=args.steps)
    learned = RouterFitConfig(steps=args.steps, projection="learned")
    fit, test = slice(0, args.fit_windows), slice(args.fit_windows, n_win)
    rows = []
    for b in blocks:
        feats, states = recorder.seen[b]
        cost = costs[b]
        y_fit = centred_log_cost(cost[fit])

        def add(name: str, pred: torch.Tensor, flops: float, b: int = b, cost: torch.Tensor = cost, **extra: float) -> None:
            rows.append({"block": b, "predictor": name, **scores(pred, cost[test], args.keep),
                         "router_flops_share": flops / block_flops, **extra})

        add("position", 1.0 - feats[test, :, 0], 0.0)
        router = RouterMLP()
        train_ev = fit_router(router, feats[fit], cost[fit], cfg, args.seed + b)
        with torch.no_grad():
            add("factors", router(feats[test]), router_flops(RouterBank(1)), train_ev=train_ev)
        for r in ranks:
            router = RouterMLP(state_rank=r, state_size=dim)
            train_ev = fit_router(router, feats[fit], cost[fit], learned, args.seed + b, states=states[fit])
            with torch.no_grad():
                add(f"factors+hidden r{r} learned", router(feats[test], states[test]),
                    router_flops(RouterBank(1, state_rank=r, state_size=dim)), train_ev=train_ev)
        router = RouterMLP(state_rank=1, state_size=dim)  # what ftp-train --router hidden fits (step 2a)
        train_ev = fit_router(router, feats[fit], cost[fit], cfg, args.seed + b, states=states[fit])
        with torch.no_grad():
            add("factors+hidden r1 ridge (ftp-train)", router(feats[test], states[test]),
                router_flops(RouterBank(1, state_rank=1, state_size=dim)), train_ev=train_ev)
        x = torch.cat([states, feats[..., :3]], -1)
        w, lam = ridge_fit(x[fit], y_fit)
        add("ridge hidden (full D, linear)", (x[test].double() @ w).float(), 2.0 * (dim + 3), ridge_penalty=lam)
        print(f"block {b} done ({time.perf_counter() - t0:.0f}s)", flush=True)
    print(f"\n{hf.config.name_or_path}: {args.fit_windows} fit + {args.test_windows} test windows x {args.seq_len} tokens, "
          f"keep {args.keep}; skip costs {t_costs:.0f}s, total {time.perf_counter() - t0:.0f}s\n")
    print("| block | predictor | held-out EV | top-k overlap | skipped cost / oracle | router FLOPs / block |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['block']} | {r['predictor']} | {r['ev']:.3f} | {r['overlap']:.3f} | {r['cost/oracle']:.2f} | "
              f"{100 * r['router_flops_share']:.3f}% |")
    doc = {"model": args.model, "data": args.data, "settings": vars(args), "skip_costs_s": t_costs, "rows": rows}
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
