"""Does router training's straight-through gate gradient predict what flipping a token really does?

Issue 3 finding: on the embedded model, router training (step 2) makes the hard-routed KL worse
from the first steps. This script compares, for one routed block, the first-order prediction
``dL/dg * (g_new - g)`` with the real change of the KL to dense when one token's gate is flipped
(computed <-> skipped), on the GA step-1 schedule with static routers.

Seen (block 3, sparsity 0.65, 64 tokens of 2 windows): correlation 0.78 but sign agreement 61%.
Skipping a kept token: predicted -6.7e-6, real +1.3e-3 (mean). Computing a skipped token:
predicted -1.75e-3, real -1.0e-3. So every swap the gradient recommends (demote a kept token,
promote a skipped one) looks like a gain of ~1.8e-3 and is really a loss of ~0.3e-3: the loss is
flat in a kept token's gate near 1 and steep near 0. Training therefore swaps kept early tokens
for later ones and the loss rises.

    python scripts/diagnose_router_gradient.py [--block 3] [--sparsity 0.0,0.36,0.51,0.65,0.44,0.44]
"""

from __future__ import annotations

import argparse

import torch

import ftp_export.routed.model as routed_model_module
from ftp_export.architectures import load_model, resolve_model
from ftp_export.evaluation.metrics import kl_to_dense
from ftp_export.routing.router import static_router_bank
from ftp_export_trainer.data import load_data
from ftp_export_trainer.evaluate import dense_logits, routed_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--block", type=int, default=3)
    p.add_argument("--sparsity", default="0.0,0.3637,0.5094,0.6475,0.4433,0.4361", help="per-block sparsity (GA step 1)")
    p.add_argument("--stride", type=int, default=4, help="flip every n-th token")
    a = p.parse_args()
    torch.manual_seed(0)
    ref = resolve_model(None)
    hf = load_model(ref)
    ids = load_data(None, ref.source, int(hf.config.vocab_size), 4, 128, 1).train[:2]
    dense = dense_logits(hf, ids, 2)
    sparsity = [float(x) for x in a.sparsity.split(",")]
    model = routed_model(hf, sparsity, static_router_bank(len(sparsity)))
    mask = torch.ones_like(ids)
    original = routed_model_module.soft_topk_gate
    state: dict = {}

    def gate(scores, valid, q16, temperature):  # capture / override the gate of block a.block
        g = original(scores, valid, q16, temperature)
        if state["block"] == a.block:
            g = state["override"].clone() if "override" in state else g.detach().requires_grad_(True)
            state["g"] = g
        state["block"] += 1
        return g

    routed_model_module.soft_topk_gate = gate

    def loss(override: torch.Tensor | None = None) -> torch.Tensor:
        state.clear()
        state["block"] = next(b for b, s in enumerate(sparsity) if s > 0)
        if override is not None:
            state["override"] = override
        return kl_to_dense(model(ids, mode="soft", temperature=0.1).logits, dense, mask)

    base_loss = loss()
    base_loss.backward()
    base = base_loss.detach()
    g0, grad = state["g"].detach().clone(), state["g"].grad.clone()
    rows = []
    for r in range(ids.shape[0]):
        for t in range(0, ids.shape[1], a.stride):
            g = g0.clone()
            g[r, t] = 1.0 - g[r, t]
            with torch.no_grad():
                real = float(loss(g)) - float(base)
            rows.append((t, bool(g0[r, t] > 0.5), float(grad[r, t] * (g[r, t] - g0[r, t])), real))
    pred = torch.tensor([x[2] for x in rows])
    real = torch.tensor([x[3] for x in rows])
    print(f"base KL {float(base):.4f}; correlation {float(torch.corrcoef(torch.stack([pred, real]))[0, 1]):.3f}; "
          f"sign agreement {float(((pred > 0) == (real > 0)).float().mean()):.3f}")
    for kept in (True, False):
        sel = [x for x in rows if x[1] == kept]
        print(f"{'kept -> skip' if kept else 'skipped -> compute'}: {len(sel)} tokens, "
              f"mean predicted {sum(x[2] for x in sel) / max(len(sel), 1):+.2e}, mean real {sum(x[3] for x in sel) / max(len(sel), 1):+.2e}")


if __name__ == "__main__":
    main()
