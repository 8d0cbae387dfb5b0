"""Step 2: train the dynamic routers with the Hugging Face model frozen.

Step 2b (after the skip-cost fit of :mod:`.router_fitting`, which gives the starting routers).
The routed model runs in ``mode='soft'`` (straight-through top-k: the forward is the real
hard-routed model, gradients flow through a sigmoid relaxation). Loss = weighted sum of the
distillation, guide and sparsity terms of :mod:`.losses`. Routers start from the static ones
plus small Gaussian noise (the static MLP has dead hidden units that would never train).

Data parallel without DDP: each optimisation step's batch is cut into fixed micro-batches,
ranks compute the micro-batch gradients round robin, and all ranks sum them in micro-batch
order, so the update is bit-identical for any number of ranks.

Model selection: the straight-through gradient is biased, and on small models the hard-routed
loss can rise for a while before it falls. Every ``select_every`` steps (and before the first
step) ``evaluate(bank)`` scores the hard-routed routers - the pipeline passes the GA fitness,
KL to dense on the calibration windows - and training returns the best routers seen, so step 2
never ends worse than the static routers it starts from.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.factors import router_features
from ftp_export.routing.router import RouterBank
from ftp_export.routing.selection import topk_select
from ftp_export.schedule import dropped_sparsity, new_schedule, routed_sparsity
from ftp_export_trainer import distributed as dist
from ftp_export_trainer.losses import DEFAULT_WEIGHTS, distill_loss, guide_loss, relaxed_logit, sparsity_loss


@dataclass
class RouterTrainConfig:
    steps: int = 150
    batch_size: int = 8
    micro_batch: int = 2
    lr: float = 1e-2
    temperature: float = 0.1
    init_noise: float = 0.02
    grad_clip: float = 1.0
    select_every: int = 25
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))


def init_dynamic(static: RouterBank, noise: float, seed: int) -> RouterBank:
    """A trainable copy of ``static`` with N(0, noise) added to every router parameter (a hidden-state
    projection: N(0, noise / sqrt(D)), so that its output starts as small as the MLP's noise). A
    skip adapter is copied as it is: it starts as the exact identity."""
    bank = copy.deepcopy(static).float()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in bank.named_parameters():
            if "adapter_" in name:
                continue
            scale = noise / (p.shape[-1] ** 0.5 if name.endswith("proj.weight") else 1.0)
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return bank.train()


@torch.no_grad()
def static_targets(static: RouterBank, block_sparsity: list[float], ids: torch.Tensor) -> list[torch.Tensor | None]:
    """The static routers' hard keep masks [B, T] per routed block (they only see positions: a
    hidden-state static router's projection is zero, and it is given zero states)."""
    from ftp_export.routing.selection import keep_q16

    bsz, seq = ids.shape
    pos = torch.arange(seq, device=ids.device).unsqueeze(0).expand(bsz, seq)
    valid = torch.ones(bsz, seq, dtype=torch.bool, device=ids.device)
    n_ctx = torch.full((bsz,), seq, dtype=torch.int64, device=ids.device)
    out: list[torch.Tensor | None] = []
    for b, s in enumerate(block_sparsity):
        if not routed_sparsity(s):
            out.append(None)
            continue
        feats = router_features(torch.zeros(bsz, seq, device=ids.device), pos, n_ctx, valid, s)
        states = (torch.zeros(bsz, seq, static.state_size, device=ids.device),) if static.state_rank else ()
        idx, active = topk_select(static.to(ids.device)(b, feats, *states), valid, keep_q16(1.0 - s))
        out.append(torch.zeros(bsz, seq, device=ids.device).scatter(1, idx, active.float()))
    return out


def micro_loss(
    model: RoutedCausalLM, ids: torch.Tensor, reference: torch.Tensor, targets: list[torch.Tensor | None], cfg: RouterTrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted training loss of one micro-batch and its parts."""
    out = model(ids, mode="soft", temperature=cfg.temperature)
    valid = torch.ones_like(ids, dtype=torch.bool)
    mask = torch.ones_like(ids)
    kd = distill_loss(out.logits, reference, mask)
    guides, sparse = [], []
    for b, r in enumerate(out.routing):
        if r is None or r.scores is None:
            continue
        logit = relaxed_logit(r.scores, valid, model.q16[b], cfg.temperature)
        guides.append(guide_loss(logit, targets[b], valid))
        sparse.append(sparsity_loss(logit, valid, model.schedule.keep_ratio(b)))
    g = torch.stack(guides).mean() if guides else kd.new_zeros(())
    s = torch.stack(sparse).mean() if sparse else kd.new_zeros(())
    w = cfg.weights
    loss = w["distill"] * kd + w["guide"] * g + w["sparsity"] * s
    return loss, {"loss": float(loss.detach()), "distill": float(kd.detach()), "guide": float(g.detach()), "sparsity": float(s.detach())}


def _trainable(static: RouterBank, block_sparsity: list[float]) -> bool:
    """Whether ``block_sparsity`` leaves anything to train: a routed block, or a dropped block
    with a skip adapter (only dense and adapter-less drops: nothing)."""
    adapted = bool(getattr(static, "adapter_rank", 0)) and any(map(dropped_sparsity, block_sparsity))
    return adapted or any(map(routed_sparsity, block_sparsity))


def train_routers(
    hf: Any,
    block_sparsity: list[float],
    static: RouterBank,
    data: torch.Tensor,
    reference: torch.Tensor,
    cfg: RouterTrainConfig,
    seed: int,
    progress: Callable[[dict[str, float]], None] | None = None,
    evaluate: Callable[[RouterBank], float] | None = None,
    init: RouterBank | None = None,
) -> tuple[RouterBank, list[dict[str, float]]]:
    """Train routers for ``block_sparsity``, starting from ``init`` (default: ``static`` plus
    noise); returns the bank (eval mode) and per-step losses (steps where ``evaluate`` ran
    carry ``selection``, its value). The guide loss always targets ``static``."""
    for p in hf.parameters():
        p.requires_grad_(False)
    device = data.device
    if not _trainable(static, block_sparsity):
        return copy.deepcopy(init if init is not None else static).float().eval().to(device), []
    if init is not None:
        bank = copy.deepcopy(init).float().train().to(device)
    else:
        bank = init_dynamic(static, cfg.init_noise, seed).to(device)
    model = RoutedCausalLM(hf, new_schedule(hf.config, block_sparsity, routers=bank))
    params = list(bank.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed + 1)
    perm = torch.randperm(len(data), generator=gen)
    cursor = 0
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None

    def select() -> float:
        nonlocal best
        bank.eval()
        value = float(evaluate(bank))  # type: ignore[misc]
        bank.train()
        if best is None or value < best[0]:
            best = (value, copy.deepcopy(bank.state_dict()))
        return value

    if evaluate is not None:
        history.append({"step": 0, "selection": select()})
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > len(perm):
            perm, cursor = torch.randperm(len(data), generator=gen), 0
        batch = perm[cursor : cursor + min(cfg.batch_size, len(perm))].to(device)
        cursor += cfg.batch_size
        micro = [batch[i : i + cfg.micro_batch] for i in range(0, len(batch), cfg.micro_batch)]
        flat_like = torch.zeros(sum(p.numel() for p in params) + 4, device=device)
        mine = {}
        for m in dist.shard(len(micro)):
            ids = data[micro[m]]
            targets = static_targets(static, block_sparsity, ids)
            opt.zero_grad(set_to_none=False)
            loss, parts = micro_loss(model, ids, reference[micro[m]], targets, cfg)
            loss.backward()
            grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
            mine[m] = torch.cat([grads, torch.tensor([parts["loss"], parts["distill"], parts["guide"], parts["sparsity"]], device=device)])
        rows = dist.gather_items(len(micro), mine, flat_like)
        total = rows[0].clone()
        for r in rows[1:]:
            total = total + r
        total = total / len(micro)
        offset = 0
        for p in params:
            p.grad = total[offset : offset + p.numel()].reshape(p.shape).clone()
            offset += p.numel()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        rec = {"step": step + 1, **dict(zip(("loss", "distill", "guide", "sparsity"), (float(v) for v in total[offset:])))}
        if evaluate is not None and cfg.select_every > 0 and ((step + 1) % cfg.select_every == 0 or step + 1 == cfg.steps):
            rec["selection"] = select()
        history.append(rec)
        if progress:
            progress(rec)
    if best is not None:
        bank.load_state_dict(best[1])
    return bank.eval(), history
