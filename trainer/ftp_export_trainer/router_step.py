"""Step 2: dynamic routers (and skip adapters) for step 1's sparsities - fitted to per-token skip
costs (2a; with ``--fit-all-blocks`` every free block's), fine-tuned with the FTP losses (2b,
straight-through); checkpointed when done. Step 4 is the same training on step 3's sparsities
(when step 3 changed step 1's), so the blocks step 3 routed or dropped get routers and adapters
trained for them. Decode thresholds are calibrated once, for the final schedule (:func:`calibrate`)."""

from __future__ import annotations

from typing import Any

import torch

from ftp_export.calibration.thresholds import calibrate_decode_thresholds, context_grid, default_max_context
from ftp_export.routing.router import RouterBank
from ftp_export.schedule import routed_sparsity
from ftp_export_trainer.checkpoints import maybe_interrupt
from ftp_export_trainer.context import Context
from ftp_export_trainer.evaluate import routed_kl, routed_model
from ftp_export_trainer.router_fitting import RouterFitConfig, fit_routers
from ftp_export_trainer.router_training import RouterTrainConfig, train_routers
from ftp_export_trainer.skip_costs import skip_costs

Step2 = tuple[RouterBank, dict[str, Any]]  # routers, record


def run_router_training(ctx: Context, sparsity: list[float], name: str = "step2", adapters_from: RouterBank | None = None) -> Step2:
    """Step 2 (``name`` 'step2') or step 4 ('step4') on ``sparsity``; returns the bank and the
    step's record (fit, selection and loss history). Step 4 passes step 2's bank as
    ``adapters_from``: its skip adapters (trained) are where step 4's start."""
    resumed = _resume(ctx, name)
    if resumed is not None:
        return resumed
    s = ctx.settings

    def hard_kl(candidate: RouterBank) -> float:  # the GA fitness: hard-routed KL on the calibration windows
        return routed_kl(routed_model(ctx.hf, sparsity, candidate), ctx.data.train, ctx.reference, s.batch_size)

    static = ctx.static_routers()
    if adapters_from is not None and getattr(static, "adapter_rank", 0):
        with torch.no_grad():
            for mine, theirs in zip(static.blocks, adapters_from.blocks):
                mine.adapter_down.weight.copy_(theirs.adapter_down.weight)
                mine.adapter_up.weight.copy_(theirs.adapter_up.weight)
    record: dict[str, Any] = {"kl_static": hard_kl(static)}
    start = static
    if s.fit_steps > 0:
        fitted, record["fit_explained"] = _fit(ctx, sparsity, static)
        record["kl_fitted"] = hard_kl(fitted)
        if record["kl_fitted"] <= record["kl_static"]:
            start = fitted
    record["start"] = "fitted" if start is not static else "static"
    weights = {"distill": s.distill_weight, "guide": s.guide_weight, "sparsity": s.sparsity_weight}
    cfg = RouterTrainConfig(steps=s.router_steps, batch_size=s.router_batch, lr=s.router_lr, temperature=s.temperature,
                            weights=weights, select_every=s.select_every)
    with ctx.bar(cfg.steps, f"{name[:-1]} {name[-1]}b routers") as bar:

        def tick(rec: dict[str, float]) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}")

        bank, history = train_routers(
            ctx.hf, sparsity, static, ctx.data.train, ctx.reference, cfg, s.seed + 2, tick,
            evaluate=hard_kl if s.select_every > 0 else None, init=start if start is not static else None,
        )
    record["history"] = history
    ctx.ckpt.write_routers(f"{name}.routers.safetensors", bank)
    ctx.ckpt.write_json(f"{name}.json", {"done": True, "record": record})
    maybe_interrupt(name)
    return bank, record


def _resume(ctx: Context, name: str) -> Step2 | None:
    """Step ``name``'s result from a finished checkpoint with ``--resume``, else None."""
    doc = ctx.ckpt.read_json(f"{name}.json") if ctx.settings.resume else None
    if doc is None or not doc.get("done"):
        return None
    ctx.log(f"{name}: resuming with the trained routers")
    bank = ctx.ckpt.read_routers(f"{name}.routers.safetensors", ctx.n)
    try:
        return bank.to(ctx.data.train.device), doc["record"]
    except KeyError as exc:
        raise ctx.ckpt.corrupt(f"{name}.json", f"missing {exc}") from None


# step 2a's forward routes a block step 1 left dense or dropped at these sparsities, so that its
# router is called (and fitted) in a forward close to step 1's schedule
FIT_DENSE, FIT_DROPPED = 1 / 32, 31 / 32


def fit_sparsity(sparsity: list[float], free: list[int]) -> list[float]:
    """Step 1's sparsities with every free block routed (``--fit-all-blocks``): step 2a then fits
    the router of every block step 3 may route, not only of those step 1 routed (a step-1 schedule
    of whole-block drops leaves step 3 nothing but static routers). Off by default: on
    SmolLM2-135M at s = 0.4 step 3 then spread sparsity over many blocks, which the validation
    windows preferred and 512-token held-out windows did not (-2.4 pt, docs/evaluation.md)."""
    out = list(sparsity)
    for b in free:
        if not routed_sparsity(out[b]):
            out[b] = FIT_DROPPED if out[b] >= 1.0 else FIT_DENSE
    return out


def _fit(ctx: Context, sparsity: list[float], static: RouterBank) -> tuple[RouterBank, Any]:
    """Step 2a: per-token skip costs, then the routers of step 1's routed blocks fitted to them
    (``--fit-all-blocks``: of every free block, :func:`fit_sparsity`); (routers, explained variance
    per block)."""
    s = ctx.settings
    if ctx.skip_costs is None:  # measured once: step 4 fits to the same costs
        with ctx.bar(-(-len(ctx.data.train) // s.batch_size), "step 2a skip costs") as bar:
            ctx.skip_costs = skip_costs(ctx.hf, ctx.data.train, s.cost_samples, s.batch_size, s.seed + 2, progress=bar.update)
    costs = ctx.skip_costs
    fit = fit_sparsity(sparsity, ctx.free) if s.fit_all_blocks else sparsity
    with ctx.bar(sum(map(routed_sparsity, fit)), "step 2a router fit") as bar:
        return fit_routers(ctx.hf, fit, costs, ctx.data.train, RouterFitConfig(steps=s.fit_steps), s.seed + 2,
                           progress=lambda b, v: bar.update(1), static=static)


def calibrate(ctx: Context, sparsity: list[float], bank: RouterBank) -> dict[str, Any]:
    """Decode threshold curves of the routed blocks, calibrated on ``--calib-samples`` windows of
    the training text per context length up to ``--calib-max-context``, ``--calib-decode-tokens``
    decoded in each. Returns the schedule's
    ``decode_thresholds`` object plus ``"calibration"`` (what was measured), JSON-ready."""
    s = ctx.settings
    model = routed_model(ctx.hf, sparsity, bank)
    stream = ctx.data.stream if ctx.data.stream is not None else ctx.data.train.reshape(-1)
    max_context = s.calib_max_context or default_max_context(ctx.hf.config)
    steps = len(context_grid(max_context)) * sum(map(routed_sparsity, sparsity))
    with ctx.bar(steps, "decode thresholds") as bar:
        result = calibrate_decode_thresholds(model, stream.to(model.device), max_context, windows=s.calib_samples, decode_tokens=s.calib_decode_tokens,
                                             batch_size=s.batch_size, progress=lambda p, n: bar.update(1))
    return {**result.thresholds.to_json(), "calibration": result.record()}
