"""Optional attention kernels with the router's signal: on GPU in Triton
(:mod:`ftp_export.kernels.attention_signal`, imported on first use: importing this package never
imports Triton), on the CPU in C (:mod:`ftp_export.kernels.cpu_signal`, compiled on first use by
:mod:`ftp_export.kernels.cpu_build`)."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch


def interpreting() -> bool:
    """Triton's interpreter is on (``TRITON_INTERPRET=1``): kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(device: torch.device | str) -> bool:
    """Triton is installed and ``device`` is CUDA, or the interpreter is on and ``device`` is the CPU."""
    kind = torch.device(device).type
    if importlib.util.find_spec("triton") is None:
        return False
    return kind == "cpu" if interpreting() else kind == "cuda"


def attention_with_signal(*args: Any, **kwargs: Any) -> Any:
    """:func:`ftp_export.kernels.attention_signal.attention_with_signal` (imports Triton)."""
    from ftp_export.kernels.attention_signal import attention_with_signal as run

    return run(*args, **kwargs)
