"""GPU check of ``--target trt``'s two decode lowerings and of its bfloat16 path (scripts/gpu_check.sh,
stage ``trt-decode-lowerings``; needs TensorRT, a GPU and the plugin library).

For each decode lowering (``dynamic``: FtpThresholdGather / FtpRowScatter with a data-dependent row
count; ``static``: every row computed, masked), the default model is exported by the trt target in
``--dtype`` (default bfloat16: the only place bfloat16 trt graphs are checked, onnxruntime's CPU
provider cannot run them), its engines are built (strongly typed), parity against the float32
PyTorch model is run on the engines with the dtype's tolerance, and the decode step is timed at
each batch size: the time of a greedy run of ``1 + steps`` tokens minus that of 1 token (the
prefill), divided by ``steps``. Both lowerings are timed in the same process, interleaved per
batch size, with the same prompts and context. The default lowering stays ``dynamic`` until these
timings say otherwise (issue 19 item 5).

    python -m ftp_export.trt.decode_timing --plugins build/trt-plugins/libftp_plugins.so \\
        --dtype bfloat16 --batch 1,32 --steps 32 --out timing.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ftp_export.routed.lowering import DECODE_LOWERINGS


def _export(lowering: str, folder: Path, plugins: Path, dtype: str, device: str) -> tuple[Any, Any, dict[str, Any]]:
    """Export the default model with the trt target (engines built where the library is found)."""
    import torch

    from ftp_export.architectures import load_model, resolve_model
    from ftp_export.devices import torch_dtype
    from ftp_export.export.job import DEFAULT_SCHEDULE
    from ftp_export.export.request import ExportRequest
    from ftp_export.export.targets import get_target
    from ftp_export.routed.model import RoutedCausalLM
    from ftp_export.schedule import load_schedule

    ref = resolve_model(None)
    schedule = load_schedule(DEFAULT_SCHEDULE)
    model = RoutedCausalLM(load_model(ref, torch_dtype(dtype), device), schedule).eval()
    (folder / "build").mkdir(parents=True, exist_ok=True)
    os.symlink(plugins.resolve(), folder / "build" / plugins.name)  # where the target looks for it
    req = ExportRequest(target="trt", output=str(folder), dtype=dtype, device=device, logits="last", decode_lowering=lowering)
    target = get_target("trt")
    target.check(req)
    with torch.no_grad():
        result = target.export(model, folder, req, print)
    if not result.manifest["engine"]["built"]:
        raise RuntimeError(f"{lowering}: engines not built: {result.manifest['engine']['message']}")
    reference = RoutedCausalLM(load_model(ref, torch.float32, device), schedule).eval()
    return result.runtime, reference, result.manifest


def _parity(runtime: Any, reference: Any, dtype: str) -> dict[str, Any]:
    from ftp_export.architectures import load_tokenizer, resolve_model
    from ftp_export.export.job import parity_cases
    from ftp_export.export.parity import run_parity
    from ftp_export.export.tolerance import tolerance_for

    cases = parity_cases(load_tokenizer(resolve_model(None)), 8)
    report = run_parity(reference, runtime, cases, tolerance_for(dtype), dtype=dtype)
    return {"passed": report["passed"], "cases": [
        {k: c[k] for k in ("name", "prefill_max_abs_diff", "decode_max_abs_diff", "routing_agreement", "tokens_identical")}
        for c in report["cases"]]}


def _step_ms(runtime: Any, batch: int, context: int, steps: int, iters: int) -> float:
    """Median milliseconds of one decode step at ``batch`` rows after a ``context``-token prompt."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 250, size=(batch, context), dtype=np.int64)
    mask = np.ones_like(ids)
    runtime.generate(ids, mask, steps + 1)  # warm-up (engine contexts, allocators)
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        runtime.generate(ids, mask, 1)
        t1 = time.perf_counter()
        runtime.generate(ids, mask, steps + 1)
        t2 = time.perf_counter()
        samples.append(((t2 - t1) - (t1 - t0)) / steps * 1e3)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftp_export.trt.decode_timing", description=__doc__.split("\n\n")[0])
    p.add_argument("--plugins", required=True, help="libftp_plugins.so built from plugins/")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", default="1,32", help="decode batch sizes, comma separated")
    p.add_argument("--context", type=int, default=128, help="prompt tokens before the timed steps")
    p.add_argument("--steps", type=int, default=32, help="decode steps per timed run")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--out", help="JSON report")
    a = p.parse_args(argv)
    plugins = Path(a.plugins)
    if not plugins.is_file():
        raise SystemExit(f"--plugins {plugins}: not found (build plugins/ with CMake first)")
    batches = [int(x) for x in a.batch.split(",") if x]
    report: dict[str, Any] = {"dtype": a.dtype, "context": a.context, "steps": a.steps, "lowerings": {}}
    runtimes = {}
    with tempfile.TemporaryDirectory(prefix="ftp-trt-decode-") as tmp:
        for lowering in DECODE_LOWERINGS:
            runtime, reference, manifest = _export(lowering, Path(tmp) / lowering, plugins, a.dtype, a.device)
            runtimes[lowering] = runtime
            report["lowerings"][lowering] = {"parity": _parity(runtime, reference, a.dtype),
                                             "precision": manifest.get("precision"), "step_ms": {}}
        for batch in batches:  # interleaved: both lowerings at one batch size, then the next
            for lowering, runtime in runtimes.items():
                report["lowerings"][lowering]["step_ms"][str(batch)] = round(_step_ms(runtime, batch, a.context, a.steps, a.iters), 4)
    print(f"trt decode step ({a.dtype}, context {a.context}, {a.steps} steps, median of {a.iters}):")
    print(f"{'batch':>6}" + "".join(f"{lw + ' ms':>14}" for lw in runtimes) + f"{'static/dynamic':>16}")
    for batch in batches:
        ms = [report["lowerings"][lw]["step_ms"][str(batch)] for lw in runtimes]
        print(f"{batch:>6}" + "".join(f"{m:>14.3f}" for m in ms) + f"{ms[1] / ms[0]:>16.2f}")
    for lowering, entry in report["lowerings"].items():
        print(f"parity {lowering}: {'PASS' if entry['parity']['passed'] else 'FAIL'}")
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(e["parity"]["passed"] for e in report["lowerings"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
