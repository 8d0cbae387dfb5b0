"""The ``ftp-export`` main job: model + schedule in, exported/<name>/ out, parity checked."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ftp_export.architectures import (
    DEFAULT_MODEL_DIR,
    DEFAULT_MODEL_NAME,
    ModelRef,
    check_supported,
    fingerprint,
    load_config,
    load_model,
    load_tokenizer,
    resolve_model,
)
from ftp_export.atomic import atomic_dir, check_writable, remove_stale_partials
from ftp_export.devices import canonical_dtype, resolve_device, torch_dtype
from ftp_export.errors import FTPError
from ftp_export.export.folder import write_model_files
from ftp_export.export.manifest import parity_passed, read_manifest, write_manifest
from ftp_export.export.parity import ParityCase, format_table, pad_batch, run_parity
from ftp_export.export.progress import elapsed
from ftp_export.export.quantize import QUANTIZE_CHOICES
from ftp_export.export.request import ExportRequest
from ftp_export.export.targets import get_target
from ftp_export.export.tolerance import tolerance_for
from ftp_export.flops import check_router_budget
from ftp_export.graph_io import LOGITS_CHOICES
from ftp_export.routed.cache import DEFAULT_KV_CACHE, KV_CACHE_CHOICES
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.schedule import FORMAT_VERSION, Schedule, load_schedule, new_schedule

DEFAULT_SCHEDULE = DEFAULT_MODEL_DIR / "s40.json"
PARITY_PROMPTS = (
    "The quick brown fox jumps over the lazy dog, and then",
    "Once upon a time",
    "the the the the the the the the the the",  # repeated tokens: tied router inputs
)
# Test hook: FTP_EXPORT_FAULT=<stage>[:<signal>] sends the process SIGTERM (or e.g. KILL, INT) when
# the export reaches <stage>: loading, exporting (partial folder made), parity, manifest.
FAULT_ENV = "FTP_EXPORT_FAULT"


def _fault(stage: str) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if spec.split(":")[0] == stage:
        os.kill(os.getpid(), getattr(signal, "SIG" + (spec.partition(":")[2] or "TERM").upper()))
        time.sleep(1)  # give the signal time to arrive; a Python handler runs right after os.kill


def check_output(out: Path) -> None:
    """Refuse, before any work, an output folder that is the working folder (or holds it) or a
    non-empty folder that is not a previous export: an export replaces its output folder."""
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise FTPError(f"-o {out} is (or contains) the current folder; an export replaces its output folder, choose a new one")
    check_writable(out)
    if out.is_dir() and any(out.iterdir()) and read_manifest(out) is None:
        raise FTPError(f"-o {out} is a non-empty folder that is not an ftp-export output; choose a new or empty folder")


def _failed_beside(out: Path, parity: dict[str, Any] | None) -> Path | None:
    """Where a failing export goes so that it does not replace a passing one in ``out`` (else None)."""
    if parity is None or parity["passed"] or not parity_passed(out):
        return None
    dest = out.with_name(f"{out.name}.failed-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{out.name}.failed-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    return dest


def resolve_schedule(req: ExportRequest, ref: ModelRef) -> Path:
    if req.schedule:
        return Path(req.schedule)
    if ref.name == DEFAULT_MODEL_NAME:
        return DEFAULT_SCHEDULE
    raise FTPError(
        f"--schedule is required for --model {req.model}; make one with: "
        f"ftp-export schedule --uniform 0.4 --model {req.model} -o s40.json"
    )


def parity_cases(tokenizer: Any, new_tokens: int) -> list[ParityCase]:
    encoded = [tokenizer(p)["input_ids"] for p in PARITY_PROMPTS]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids3, mask3 = pad_batch(encoded, pad, side="left")
    ids1, mask1 = pad_batch(encoded[:1], pad)
    return [
        ParityCase("batch3-left-padded", ids3, mask3, new_tokens),
        ParityCase("batch1", ids1, mask1, new_tokens),
    ]


def validate_request(req: ExportRequest) -> ExportRequest:
    """Check what can be checked from the arguments alone (target, dtype spelling, logits, whether the
    target's runtime can run the dtype here, the device) and return the request with the dtype's
    canonical name and the target's default logits. Called when the arguments are parsed, and again by :func:`run_export`."""
    target = get_target(req.target)
    req = dataclasses.replace(req, dtype=canonical_dtype(req.dtype), logits=req.logits or target.default_logits)
    torch_dtype(req.dtype)
    if req.logits not in LOGITS_CHOICES:
        raise FTPError(f"logits {req.logits!r}: choose one of {', '.join(LOGITS_CHOICES)}")
    if req.quantize is not None:
        if req.quantize not in QUANTIZE_CHOICES:
            raise FTPError(f"--quantize {req.quantize!r}: choose one of {', '.join(QUANTIZE_CHOICES)}")
        if req.target != "onnx" or req.dtype != "float32":
            raise FTPError(f"--quantize {req.quantize} quantizes a float32 --target onnx export "
                           f"(8-bit weights in onnxruntime's MatMulNBits); got --target {req.target} --dtype {req.dtype}")
    if req.kv_cache not in KV_CACHE_CHOICES:
        raise FTPError(f"--kv-cache {req.kv_cache!r}: choose one of {', '.join(KV_CACHE_CHOICES)}")
    if req.kv_cache != DEFAULT_KV_CACHE and req.target != "onnx":
        raise FTPError(f"--kv-cache {req.kv_cache} is a --target onnx layout; --target {req.target} exports the "
                       f"{DEFAULT_KV_CACHE} layout")
    target.check(req)
    resolve_device(req.device)
    return req


def run_export(req: ExportRequest, log: Callable[[str], None] = print) -> int:
    """Run the export; returns the process exit status (0 ok, 1 parity failed)."""
    req = validate_request(req)
    target = get_target(req.target)
    dtype, device = torch_dtype(req.dtype), resolve_device(req.device)
    ref = resolve_model(req.model)
    config = load_config(ref)
    check_supported(config)
    schedule_path = resolve_schedule(req, ref)
    schedule = load_schedule(schedule_path)
    schedule.check_model(fingerprint(config))
    check_router_budget(config, schedule.routers)  # a hidden-state router above 0.5% of a block's FLOPs
    if schedule.format_version < FORMAT_VERSION:
        log(f"warning: {schedule_path} is schedule format {schedule.format_version}: one decode threshold per block, "
            f"so decode skips drift off the block sparsities as the context grows; recalibrate with "
            f"ftp-export calibrate --schedule {schedule_path} -o NEW.json")
    out = Path(req.output) if req.output else Path("exported") / f"{ref.name}-{schedule_path.stem}-{req.target}"
    check_output(out)
    for stale in remove_stale_partials(out.resolve().parent, log):
        log(f"removed {stale}, left by an export that was killed (its process is gone)")
    steps = 4
    log(f"[1/{steps}] loading {ref.source} ({req.dtype}, {req.device})")
    _fault("loading")
    model = load_model(ref, dtype, device)
    tokenizer = load_tokenizer(ref)
    routed = RoutedCausalLM(model, schedule).eval()
    parity: dict[str, Any] | None = None
    diverted: list[Path] = []

    def divert() -> Path | None:  # asked once the export is complete: keep a passing one in `out`
        dest = _failed_beside(out, parity)
        diverted.extend([dest] if dest else [])
        return dest

    with atomic_dir(out, divert) as tmp:
        _fault("exporting")
        log(f"[2/{steps}] exporting target {req.target} (overall sparsity {schedule.target_sparsity:.2f})")
        with elapsed("exported", log) as say:
            # the target builds in `tmp`; what it tells the user (notes, commands) names the final folder `out`
            result = target.export(routed, tmp, dataclasses.replace(req, output=str(out)), say)
        write_model_files(tmp, model, ref.source, tokenizer)
        _copy_schedule(schedule, tmp / "schedule")
        _fault("parity")
        if result.runtime is not None and req.parity:
            log(f"[3/{steps}] parity against PyTorch ({req.parity_tokens} greedy tokens per case, prefill logits: {req.logits})")
            with elapsed("parity checked", log) as say:
                parity = _parity(req, ref, routed, result.runtime, tokenizer, say, target, tmp)
            parity["runtime"] = result.manifest.get("runtime", {})
            (tmp / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
        else:
            log(f"[3/{steps}] parity skipped: {'--no-parity' if not req.parity else result.note}")
        log(f"[4/{steps}] writing manifest")
        _fault("manifest")
        _write_manifest(tmp, req, ref, config, schedule, result.manifest, parity)
    if parity is not None:
        log(format_table(parity))
    if result.note:
        log(result.note)
    if diverted:
        print(f"parity failed: kept the passing export in {out}; this one is in {diverted[0]}", file=sys.stderr)
    log(f"wrote {diverted[0] if diverted else out}")
    return 0 if parity is None or parity["passed"] else 1


def _parity(req: ExportRequest, ref: ModelRef, routed: RoutedCausalLM, runtime: Any, tokenizer: Any,
            log: Callable[[str], None], target: Any, workdir: Path) -> dict[str, Any]:
    """Parity against the float32 PyTorch routed model: ``routed`` itself for a float32 export, else
    the model loaded again in float32 on the same device, with the precision's tolerance and the
    dense model exported the same way as the baseline (:func:`_dense_baseline`)."""
    precision = req.quantize or req.dtype
    reference, tol, baseline = routed, tolerance_for(precision, req.atol, req.rtol), None
    cases = parity_cases(tokenizer, req.parity_tokens)
    if precision != "float32":
        log(f"      reference: the float32 PyTorch model ({precision} export: {tol.describe()})")
        f32 = load_model(ref, torch.float32, routed.device)
        reference = RoutedCausalLM(f32, routed.schedule).eval()
        baseline = _dense_baseline(req, routed, f32, target, cases, tol, precision, workdir, log)
    return run_parity(reference, runtime, cases, tol, progress=lambda n: log(f"      case {n}"), dtype=precision,
                      baseline=baseline)


def _dense_baseline(req: ExportRequest, routed: RoutedCausalLM, f32: Any, target: Any, cases: list[ParityCase],
                    tol: Any, precision: str, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The model with every block dense (no router), exported the same way (target, dtype,
    quantization) into a scratch folder and checked against the float32 dense model: what the
    precision alone costs, for the routed export's drift and token agreement to be read against."""
    dense = new_schedule(routed.config, [0.0] * int(routed.config.num_hidden_layers))
    log("      dense baseline: the model without routing, exported and checked the same way")
    with tempfile.TemporaryDirectory(prefix="dense-baseline-", dir=workdir) as scratch:
        result = target.export(RoutedCausalLM(routed.hf, dense).eval(), Path(scratch), req, lambda _msg: None)
        return run_parity(RoutedCausalLM(f32, dense).eval(), result.runtime, cases, tol, dtype=precision)


def _write_manifest(tmp: Path, req: ExportRequest, ref: ModelRef, config: Any, schedule: Schedule,
                    target_manifest: dict[str, Any], parity: dict[str, Any] | None) -> None:
    model_info = {
        "name": ref.name,
        "source": ref.source,
        "architecture": (config.architectures or [config.model_type])[0],
        "fingerprint": fingerprint(config),
        "dtype": req.dtype,
    }
    extra = {"logits": req.logits, "quantize": req.quantize, "kv_cache": req.kv_cache, **target_manifest}
    extra["parity"] = None if parity is None else {
        "passed": parity["passed"], "atol": parity["atol"], "rtol": parity["rtol"],
        "routing_agreement_min": parity["routing_agreement_min"], "reference_dtype": parity["reference_dtype"],
        "report": "parity.json",
    }
    write_manifest(tmp, target=req.target, model=model_info, schedule=schedule, extra=extra)


def _copy_schedule(schedule: Schedule, dest: Path) -> None:
    if schedule.path is None:
        return
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(schedule.path, dest / schedule.path.name)
    weights = json.loads(schedule.path.read_text())["router"]["weights"]
    shutil.copy2(schedule.path.parent / weights, dest / Path(weights).name)
