"""Step 2: dynamic routers for step 1's sparsities - fitted to per-token skip costs (2a),
fine-tuned with the FTP losses (2b, straight-through) - and their decode thresholds;
checkpointed when done."""

from __future__ import annotations

from typing import Any

from ftp_export.calibration.thresholds import calibrate_decode_thresholds
from ftp_export.routing.router import RouterBank, static_router_bank
from ftp_export.schedule import routed_sparsity
from ftp_export_trainer.checkpoints import maybe_interrupt
from ftp_export_trainer.context import Context
from ftp_export_trainer.evaluate import routed_kl, routed_model
from ftp_export_trainer.router_fitting import RouterFitConfig, fit_routers
from ftp_export_trainer.router_training import RouterTrainConfig, train_routers
from ftp_export_trainer.skip_costs import skip_costs

Step2 = tuple[RouterBank, dict[str, Any], list[float | None]]  # routers, record, decode thresholds


def run_router_training(ctx: Context, sparsity: list[float]) -> Step2:
    """Step 2; returns the bank, the step's record (fit, selection and loss history) and the
    decode thresholds."""
    resumed = _resume(ctx)
    if resumed is not None:
        return resumed
    s = ctx.settings

    def hard_kl(candidate: RouterBank) -> float:  # the GA fitness: hard-routed KL on the calibration windows
        return routed_kl(routed_model(ctx.hf, sparsity, candidate), ctx.data.train, ctx.reference, s.batch_size)

    static = static_router_bank(ctx.n).to(ctx.data.train.device)
    record: dict[str, Any] = {"kl_static": hard_kl(static)}
    start = static
    if s.fit_steps > 0:
        fitted, record["fit_explained"] = _fit(ctx, sparsity)
        record["kl_fitted"] = hard_kl(fitted)
        if record["kl_fitted"] <= record["kl_static"]:
            start = fitted
    record["start"] = "fitted" if start is not static else "static"
    weights = {"distill": s.distill_weight, "guide": s.guide_weight, "sparsity": s.sparsity_weight}
    cfg = RouterTrainConfig(steps=s.router_steps, batch_size=s.router_batch, lr=s.router_lr, temperature=s.temperature,
                            weights=weights, select_every=s.select_every)
    with ctx.bar(cfg.steps, "step 2b routers") as bar:

        def tick(rec: dict[str, float]) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}")

        bank, history = train_routers(
            ctx.hf, sparsity, static, ctx.data.train, ctx.reference, cfg, s.seed + 2, tick,
            evaluate=hard_kl if s.select_every > 0 else None, init=start if start is not static else None,
        )
    record["history"] = history
    thresholds = calibrate(ctx, sparsity, bank)
    ctx.ckpt.write_routers("step2.routers.safetensors", bank)
    ctx.ckpt.write_json("step2.json", {"done": True, "record": record, "decode_thresholds": thresholds})
    maybe_interrupt("step2")
    return bank, record, thresholds


def _resume(ctx: Context) -> Step2 | None:
    """Step 2's result from a finished checkpoint with ``--resume``, else None."""
    doc = ctx.ckpt.read_json("step2.json") if ctx.settings.resume else None
    if doc is None or not doc.get("done"):
        return None
    ctx.log("step 2: resuming with the trained routers")
    bank = ctx.ckpt.read_routers("step2.routers.safetensors", ctx.n)
    try:
        return bank.to(ctx.data.train.device), doc["record"], doc["decode_thresholds"]
    except KeyError as exc:
        raise ctx.ckpt.corrupt("step2.json", f"missing {exc}") from None


def _fit(ctx: Context, sparsity: list[float]) -> tuple[RouterBank, Any]:
    """Step 2a: per-token skip costs, then each router fitted to them; (routers, explained variance)."""
    s = ctx.settings
    with ctx.bar(-(-len(ctx.data.train) // s.batch_size), "step 2a skip costs") as bar:
        costs = skip_costs(ctx.hf, ctx.data.train, s.cost_samples, s.batch_size, s.seed + 2, progress=bar.update)
    with ctx.bar(sum(map(routed_sparsity, sparsity)), "step 2a router fit") as bar:
        return fit_routers(ctx.hf, sparsity, costs, ctx.data.train, RouterFitConfig(steps=s.fit_steps), s.seed + 2,
                           progress=lambda b, v: bar.update(1))


def calibrate(ctx: Context, sparsity: list[float], bank: RouterBank) -> list[float | None]:
    """Decode thresholds of the routed blocks, calibrated on the first ``--calib-samples`` windows."""
    s = ctx.settings
    seqs = ctx.data.train[: s.calib_samples]
    model = routed_model(ctx.hf, sparsity, bank)
    with ctx.bar(sum(map(routed_sparsity, sparsity)), "decode thresholds") as bar:
        thresholds, _ = calibrate_decode_thresholds(model, seqs, max(1, seqs.shape[1] // 2), progress=lambda p, n: bar.update(1))
    return thresholds
