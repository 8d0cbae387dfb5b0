"""``--device`` and ``--dtype`` values, checked once before any work.

Placement itself happens where the routed model is built
(:class:`~ftp_export.routed.model.RoutedCausalLM` moves its routers to the Hugging Face model's
device, float32), so every command that takes ``--device`` runs wherever the model runs.
"""

from __future__ import annotations

import argparse
import re

import torch

from ftp_export.errors import FTPError

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # optimum's spellings
DTYPE_CHOICES = ("float32", "fp32", "float16", "fp16", "bfloat16", "bf16")
DEVICE_CHOICES = ("cpu", "cuda", "cuda:N")


def canonical_dtype(name: str) -> str:
    """``fp16`` -> ``float16`` (optimum's spellings); other names unchanged."""
    return DTYPE_ALIASES.get(name, name)


def torch_dtype(name: str) -> torch.dtype:
    """``--dtype`` name (``float16`` or ``fp16``, ...) -> torch dtype, or one clear error line."""
    name = canonical_dtype(name)
    if name not in DTYPES:
        raise FTPError(f"unknown --dtype {name!r}; choose one of: {', '.join(DTYPE_CHOICES)}")
    return DTYPES[name]


def device_choice(text: str) -> str:
    """argparse ``type=`` of ``--device``: ``cpu``, ``cuda`` or ``cuda:N`` (whether that GPU exists
    is :func:`resolve_device`'s check, made before any work)."""
    if text in ("cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(map(repr, DEVICE_CHOICES))})")


def resolve_device(name: str | torch.device) -> torch.device:
    """``--device`` value -> torch.device; a CUDA device this machine lacks is one clear error line."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise FTPError(f"--device {name}: not a device (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FTPError(f"--device {name}: no CUDA device is available on this machine (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FTPError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type not in ("cpu", "meta"):
        raise FTPError(f"--device {name}: unsupported device type {device.type!r} (use cpu or cuda)")
    return device


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
