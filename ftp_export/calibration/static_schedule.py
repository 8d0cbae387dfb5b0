"""``ftp-export schedule --uniform S``: a valid schedule with static (position-priority) routers,
for users who have not trained routers yet. Decode thresholds are calibrated on text."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ftp_export.architectures import fingerprint, load_model, load_tokenizer, resolve_model
from ftp_export.calibration.thresholds import CalibrationResult, calibrate_decode_thresholds, default_max_context
from ftp_export.errors import FTPError
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.schedule import load_schedule, new_schedule, save_schedule, uniform_sparsity


def calibration_stream(tokenizer: Any, text: str, max_context: int, samples: int) -> torch.Tensor:
    """Token ids [N] of ``text`` (its first 16 M characters): calibration windows are spread over
    all of it, because windows from one stretch of text (a few plays, one book) hold their skip
    rate there and miss it elsewhere by up to 0.1 (measured on the embedded model)."""
    ids = tokenizer(text[: 16 << 20], add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) < max_context:
        raise FTPError(f"calibration text has {len(ids)} tokens; decode calibration up to --max-context {max_context} needs "
                       f"at least {max_context}; give more text or a smaller --max-context")
    return torch.tensor(ids, dtype=torch.int64)


def default_calibration_text() -> str:
    try:
        from ftp_export.calibration.textdata import load_sample_text, split_text
    except ImportError as exc:
        raise FTPError(f"no packaged sample text ({exc}); pass --calibration-text FILE") from None
    return split_text(load_sample_text())[0]


def check_schedule_output(out: Path) -> None:
    """Fail with one line, before any work and without creating anything, unless the schedule JSON
    and its router weights can be written at ``out``."""
    out = Path(out)
    weights = out.with_name(out.stem + ".routers.safetensors")
    for path in (out, weights):
        if path.is_dir():
            raise FTPError(f"-o {out}: {path} is an existing folder; -o names the schedule JSON file to write (e.g. {path / 's40.json'})")
    parent = out.resolve().parent
    while not parent.exists():  # the folders save_schedule would create
        parent = parent.parent
    if not parent.is_dir():
        raise FTPError(f"-o {out}: cannot write there ({parent} is not a folder); choose another -o")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ftp-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FTPError(f"-o {out}: cannot write to {parent} ({exc.strerror or exc}); choose another -o") from None


def _calibrate(
    routed: RoutedCausalLM, tokenizer: Any, text: str | None, samples: int, max_context: int | None, decode_tokens: int = 2
) -> CalibrationResult:
    """Decode-threshold calibration on ``text`` (None: the packaged sample), ``samples`` windows of
    ``decode_tokens`` decoded tokens per knot, with a progress bar on stderr (knots x routed blocks)."""
    from tqdm import tqdm

    max_context = max_context or default_max_context(routed.config)
    stream = calibration_stream(tokenizer, text if text is not None else default_calibration_text(), max_context, samples)
    stream = stream.to(routed.device)
    with tqdm(desc="decode thresholds", unit="step", dynamic_ncols=True, leave=False) as bar:

        def tick(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return calibrate_decode_thresholds(routed, stream, max_context, windows=samples, decode_tokens=decode_tokens, progress=tick)


def make_uniform_schedule(
    model_arg: str | None,
    sparsity: float,
    out: Path,
    text: str | None = None,
    samples: int = 256,
    max_context: int | None = None,
    device: str = "cpu",
    decode_tokens: int = 2,
) -> Path:
    if not (0.0 < sparsity < 1.0):
        raise FTPError(f"--uniform {sparsity}: sparsity must be in (0, 1)")
    if max_context is not None and max_context < 2:
        raise FTPError(f"--max-context {max_context}: need at least 2 tokens")
    if samples < 1:
        raise FTPError(f"--samples {samples}: need at least 1 calibration sequence")
    check_schedule_output(out)
    ref = resolve_model(model_arg)
    model = load_model(ref, torch.float32, device)
    tokenizer = load_tokenizer(ref)
    blocks = uniform_sparsity(model.config.num_hidden_layers, sparsity)
    schedule = new_schedule(
        model.config,
        blocks,
        name_or_path=ref.source if model_arg else ref.name,
        produced_by={"tool": "ftp-export schedule", "method": "uniform + static position-priority routers"},
    )
    routed = RoutedCausalLM(model, schedule).eval()
    result = _calibrate(routed, tokenizer, text, samples, max_context, decode_tokens)
    schedule.produced_by["calibration"] = {
        "source": "--calibration-text" if text is not None else "packaged sample text",
        "decode_thresholds": result.record(),
    }
    schedule.produced_by["seed"] = None
    return save_schedule(schedule, out)


def recalibrate_schedule(
    model_arg: str | None,
    schedule_path: str,
    out: Path,
    text: str | None = None,
    samples: int = 256,
    max_context: int | None = None,
    device: str = "cpu",
    decode_tokens: int = 2,
) -> tuple[Path, CalibrationResult]:
    """``ftp-export calibrate``: new decode threshold curves for an existing schedule (routers and
    sparsities unchanged), written in the current format with the model's full fingerprint."""
    check_schedule_output(out)
    schedule = load_schedule(schedule_path)
    ref = resolve_model(model_arg)
    model = load_model(ref, torch.float32, device)
    routed = RoutedCausalLM(model, schedule).eval()  # checks the schedule is for this model
    schedule.base_model["fingerprint"] = fingerprint(model.config)
    result = _calibrate(routed, load_tokenizer(ref), text, samples, max_context, decode_tokens)
    calibration = dict(schedule.produced_by.get("calibration") or {})
    calibration["decode_thresholds"] = {**result.record(), "source": "--calibration-text" if text is not None else "packaged sample text",
                                        "tool": "ftp-export calibrate"}
    schedule.produced_by["calibration"] = calibration
    return save_schedule(schedule, out), result
