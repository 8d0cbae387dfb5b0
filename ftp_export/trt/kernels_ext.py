"""PyTorch extension build of the ``ftp`` plugin kernels (plugins/ftp*Plugin/*Kernel.cu).

The TensorRT plugins and this extension call the same C API (``plugins/common/ftp_kernels.h``), so
the kernels are parity-tested on a GPU without TensorRT (tests/test_plugin_kernels.py) and
benchmarked against plain torch (benchmarks/bench_plugins.py).

The extension is compiled with ``torch.utils.cpp_extension.load`` on first use (about a minute)
and cached under ``build/torch_ext/<torch>-<cuda>/`` in the repository (``FTP_EXT_BUILD_DIR``
overrides it; ``FTP_PLUGINS_DIR`` points at another plugins/ folder). It needs a CUDA build of
torch, a visible GPU, the CUDA compiler (nvcc, found through ``CUDA_HOME`` or ``PATH``) and ninja;
:func:`load` raises :class:`~ftp_export.errors.FTPError` naming whichever is missing.

Wrappers mirror the four nodes (plugins/README.md has the spec):

- :func:`topk_gather` -> ``gathered [B,K,D], indices [B,K] int64, active [B,K] bool``
- :func:`topk_scatter` -> ``out [B,T,D]``
- :func:`threshold_gather` -> ``gathered [N,D], rows [N] int64`` (reads N back: one host sync;
  :func:`threshold_gather_padded` returns upper-bound buffers and the device count instead)
- :func:`row_scatter` -> ``out [B,T,D]``
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import torch

from ftp_export.errors import FTPError

EXT_NAME = "ftp_kernels_ext"
REPO_ROOT = Path(__file__).resolve().parents[2]

KERNEL_SOURCES = (
    "common/ftpKernelCommon.cu",
    "ftpTopKGatherPlugin/ftpTopKGatherKernel.cu",
    "ftpTopKScatterPlugin/ftpTopKScatterKernel.cu",
    "ftpThresholdGatherPlugin/ftpThresholdGatherKernel.cu",
    "ftpRowScatterPlugin/ftpRowScatterKernel.cu",
)
BINDING_SOURCE = "torch_ext/ftp_torch_ext.cpp"

_lock = threading.Lock()
_module: Any = None


def plugins_dir() -> Path:
    return Path(os.environ.get("FTP_PLUGINS_DIR", REPO_ROOT / "plugins"))


def sources() -> list[Path]:
    root = plugins_dir()
    return [root / BINDING_SOURCE, *(root / s for s in KERNEL_SOURCES)]


def build_dir() -> Path:
    env = os.environ.get("FTP_EXT_BUILD_DIR")
    if env:
        return Path(env)
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", f"torch{torch.__version__}-cuda{torch.version.cuda}")
    return REPO_ROOT / "build" / "torch_ext" / tag


def toolchain_problem() -> str | None:
    """Why the extension cannot be built or run here, or None when it can."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build; the ftp kernels need a CUDA build of torch"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    from torch.utils import cpp_extension

    cuda_home = cpp_extension.CUDA_HOME
    nvcc = Path(cuda_home, "bin", "nvcc") if cuda_home else None
    if nvcc is None or not (nvcc.is_file() or shutil.which(str(nvcc))):
        return "the CUDA compiler nvcc was not found: install the CUDA toolkit and set CUDA_HOME (or put nvcc on PATH)"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja); torch.utils.cpp_extension needs it"
    missing = [str(p) for p in sources() if not p.is_file()]
    if missing:
        return f"plugin sources missing: {', '.join(missing)} (set FTP_PLUGINS_DIR to the repository's plugins/)"
    return None


def is_available() -> bool:
    return toolchain_problem() is None


def load(verbose: bool = False) -> Any:
    """Build (first call, cached on disk) and import the extension module."""
    global _module
    with _lock:
        if _module is not None:
            return _module
        problem = toolchain_problem()
        if problem is not None:
            raise FTPError(f"cannot build the ftp kernel extension: {problem}")
        from torch.utils.cpp_extension import load as load_extension

        out = build_dir()
        out.mkdir(parents=True, exist_ok=True)
        _module = load_extension(
            name=EXT_NAME,
            sources=[str(s) for s in sources()],
            extra_include_paths=[str(plugins_dir() / "common")],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "-lineinfo"],
            build_directory=str(out),
            with_cuda=True,
            verbose=verbose,
        )
        return _module


def slot_count(seq_len: int, keep_q16: int) -> int:
    return int(load().slot_count(seq_len, keep_q16))


def topk_gather(
    hidden: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, keep_q16: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ext = load()
    b, t, d = hidden.shape
    k = int(ext.slot_count(t, keep_q16))
    gathered = hidden.new_empty(b, k, d)
    indices = torch.empty(b, k, dtype=torch.int64, device=hidden.device)
    active = torch.empty(b, k, dtype=torch.bool, device=hidden.device)
    ext.topk_gather_out(
        hidden.contiguous(),
        scores.float().contiguous(),
        valid.contiguous(),
        keep_q16,
        gathered,
        indices,
        active,
    )
    return gathered, indices, active


def topk_scatter(
    residual: torch.Tensor, rows: torch.Tensor, indices: torch.Tensor, active: torch.Tensor
) -> torch.Tensor:
    out = torch.empty_like(residual, memory_format=torch.contiguous_format)
    load().topk_scatter_out(residual.contiguous(), rows.contiguous(), indices.contiguous(), active.contiguous(), out)
    return out


def threshold_gather_padded(
    hidden: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """No host sync: ``gathered [B*T,D]`` and ``rows [B*T]`` of which the first ``count`` (0-d int64
    on the device) are written."""
    b, t, d = hidden.shape
    gathered = hidden.new_empty(b * t, d)
    rows = torch.empty(b * t, dtype=torch.int64, device=hidden.device)
    count = torch.empty((), dtype=torch.int64, device=hidden.device)
    load().threshold_gather_out(
        hidden.contiguous(), scores.float().contiguous(), valid.contiguous(), float(threshold), gathered, rows, count
    )
    return gathered, rows, count


def threshold_gather(
    hidden: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    gathered, rows, count = threshold_gather_padded(hidden, scores, valid, threshold)
    n = int(count.item())  # like torch.nonzero: the output size is data dependent
    return gathered[:n], rows[:n]


def row_scatter(residual: torch.Tensor, rows_data: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(residual, memory_format=torch.contiguous_format)
    load().row_scatter_out(residual.contiguous(), rows_data.contiguous(), rows.contiguous(), out)
    return out
