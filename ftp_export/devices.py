"""``--device`` and ``--dtype`` values, checked once before any work.

Placement itself happens where the routed model is built
(:class:`~ftp_export.routed.model.RoutedCausalLM` moves its routers to the Hugging Face model's
device, float32), so every command that takes ``--device`` runs wherever the model runs.
"""

from __future__ import annotations

import torch

from ftp_export.errors import FTPError

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    """``--dtype`` name -> torch dtype, or one clear error line."""
    if name not in DTYPES:
        raise FTPError(f"unknown --dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[name]


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
