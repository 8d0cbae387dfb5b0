"""``ftp-export schedule --uniform S``: a valid schedule with static (position-priority) routers,
for users who have not trained routers yet. Decode thresholds are calibrated on text."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ftp_export.architectures import load_model, load_tokenizer, resolve_model
from ftp_export.calibration.thresholds import calibrate_decode_thresholds
from ftp_export.errors import FTPError
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.schedule import new_schedule, save_schedule, uniform_sparsity


def calibration_sequences(tokenizer: Any, text: str, samples: int, seq_len: int) -> torch.Tensor:
    """Cut ``samples`` consecutive windows of ``seq_len`` tokens from ``text``."""
    need = samples * seq_len
    # a generous prefix (>= 16 characters per token) instead of tokenizing a whole corpus
    ids = tokenizer(text[: need * 16], add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) < need:
        raise FTPError(f"calibration text has {len(ids)} tokens; need {need} ({samples} x {seq_len}); give more text")
    return torch.tensor(ids[:need], dtype=torch.int64).view(samples, seq_len)


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


def make_uniform_schedule(
    model_arg: str | None,
    sparsity: float,
    out: Path,
    text: str | None = None,
    samples: int = 8,
    seq_len: int = 96,
    device: str = "cpu",
) -> Path:
    if not (0.0 < sparsity < 1.0):
        raise FTPError(f"--uniform {sparsity}: sparsity must be in (0, 1)")
    if seq_len < 4:
        raise FTPError(f"--seq-len {seq_len}: need at least 4 tokens")
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
    seqs = calibration_sequences(tokenizer, text if text is not None else default_calibration_text(), samples, seq_len)
    _, rates = calibrate_decode_thresholds(routed, seqs.to(device), prompt_len=seq_len // 2)
    schedule.produced_by["calibration"] = {
        "source": "--calibration-text" if text is not None else "packaged sample text",
        "samples": samples,
        "seq_len": seq_len,
        "prompt_len": seq_len // 2,
        "measured_decode_skip_rate": rates,
    }
    schedule.produced_by["seed"] = None
    return save_schedule(schedule, out)
