"""PyTorch extension build of the ``ftp`` plugin kernels (plugins/ftp*Plugin/*Kernel.cu).

The TensorRT plugins and this extension call the same C API (``plugins/common/ftp_kernels.h``), so
the kernels are parity-tested on a GPU without TensorRT (tests/plugins/test_plugin_kernels.py) and
benchmarked against plain torch (benchmarks/bench_plugins.py).

The extension is compiled with ``torch.utils.cpp_extension.load`` on first use (about a minute)
and cached under ``<cache>/torch_ext/<torch>-<cuda>/`` (:mod:`ftp_export.paths`; ``FTP_EXT_BUILD_DIR``
overrides it) from the plugin sources :func:`~ftp_export.trt.sources.plugin_sources_dir` finds. It needs a CUDA build of
torch, a visible GPU, the CUDA compiler (nvcc, found through ``CUDA_HOME`` or ``PATH``) and ninja;
:func:`load` raises :class:`~ftp_export.errors.FTPError` naming whichever is missing.

Wrappers mirror the four nodes (plugins/README.md has the spec):

- :func:`topk_gather` -> ``gathered [B,K,D], indices [B,K] int64, active [B,K] bool``
- :func:`topk_scatter` -> ``out [B,T,D]``
- :func:`threshold_gather` -> ``gathered [N,D], rows [N] int64`` (reads N back: one host sync;
  :func:`threshold_gather_padded` returns upper-bound buffers and the device count instead)
- :func:`row_scatter` -> ``out [B,T,D]``
- :func:`convert_flags` / :func:`flags_out`: int32 <-> bool flags, the conversions the TensorRT glue
  runs around the kernels (TensorRT plugin tensors cannot be bool)

and ``*_out`` variants write into caller-provided tensors (no allocation when a ``workspace`` from
:func:`new_workspace` is passed, no host synchronisation: safe inside CUDA graph capture).

Errors. Every wrapper validates its arguments here, before the extension is loaded or called:
``TypeError`` for a wrong Python type or dtype, ``ValueError`` for a wrong device, shape, layout,
range or aliasing; ``RuntimeError`` only for what the extension itself reports (a CUDA launch
error). The ``check_*`` validators are pure metadata checks (CPU and meta tensors work with
``require_cuda=False``), so they are tested without a GPU. The compiled module never raises from
C++: its launch functions return ``""`` or an error message (:func:`check_status` turns it into
``RuntimeError``) and ``slot_count`` / ``*_workspace_size`` return -1 for invalid arguments. A C++
exception thrown through this binding killed the interpreter (SIGSEGV) on the first GPU machine
instead of raising; :func:`diagnose_exception_path` tells the possible causes apart there.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ftp_export.errors import FTPError
from ftp_export.paths import cache_root
from ftp_export.routing import selection
from ftp_export.trt.kernel_checks import (
    INT32_MAX,
    MAX_TOKENS,
    Q16,
    check_flags,
    check_int,
    check_row_scatter,
    check_status,
    check_threshold_gather,
    check_topk_gather,
    check_topk_scatter,
    check_workspace,
    value_error,
)
from ftp_export.trt.sources import plugin_sources_dir

EXT_NAME = "ftp_kernels_ext"

KERNEL_SOURCES = (
    "common/ftpKernelCommon.cu",
    "ftpTopKGatherPlugin/ftpTopKGatherKernel.cu",
    "ftpTopKScatterPlugin/ftpTopKScatterKernel.cu",
    "ftpThresholdGatherPlugin/ftpThresholdGatherKernel.cu",
    "ftpRowScatterPlugin/ftpRowScatterKernel.cu",
)
BINDING_SOURCE = "torch_ext/ftp_torch_ext.cpp"

NODES = ("topk_gather", "topk_scatter", "threshold_gather", "row_scatter")

_lock = threading.Lock()
_module: Any = None


def sources() -> list[Path]:
    root = plugin_sources_dir()
    return [root / BINDING_SOURCE, *(root / s for s in KERNEL_SOURCES)]


def build_dir() -> Path:
    env = os.environ.get("FTP_EXT_BUILD_DIR")
    if env:
        return Path(env)
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", f"torch{torch.__version__}-cuda{torch.version.cuda}")
    return cache_root() / "torch_ext" / tag


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
    try:
        missing = [str(p) for p in sources() if not p.is_file()]
    except FTPError as exc:
        return str(exc)
    if missing:
        return f"plugin sources missing: {', '.join(missing)} (set FTP_PLUGINS_DIR to the repository's plugins/)"
    return None


def is_available() -> bool:
    return toolchain_problem() is None


def load(verbose: bool = False) -> Any:
    """Build (first call, cached on disk) and import the extension module (the raw, status-returning
    functions; prefer the validating wrappers of this module)."""
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
            extra_include_paths=[str(plugin_sources_dir() / "common")],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "-lineinfo"],
            build_directory=str(out),
            with_cuda=True,
            verbose=verbose,
        )
        return _module


def slot_count(seq_len: int, keep_q16: int) -> int:
    """K for padded length T (no extension needed: the kernels use the same integer formula)."""
    t = check_int(seq_len, "seq_len", 0, MAX_TOKENS)
    q16 = check_int(keep_q16, "keep_q16", 1, Q16)
    return selection.slot_count(t, q16)


def workspace_size(node: str, batch: int, seq_len: int) -> int:
    """Workspace bytes of one launch of ``node`` (one of NODES) on a [batch, seq_len] problem."""
    if node not in NODES:
        raise value_error(f"unknown node {node!r}; one of {', '.join(NODES)}")
    b = check_int(batch, "batch", 0, INT32_MAX)
    t = check_int(seq_len, "seq_len", 0, INT32_MAX)
    n = int(getattr(load(), f"{node}_workspace_size")(b, t))
    if n < 0:
        raise value_error(f"{node}: no workspace size for B={b}, T={t} (B*T too large)")
    return n


def new_workspace(node: str, batch: int, seq_len: int, device: torch.device | str) -> torch.Tensor:
    """A fresh workspace for ``node``: allocate it once, outside graph capture, and reuse it."""
    return torch.empty(workspace_size(node, batch, seq_len), dtype=torch.uint8, device=device)


def _workspace(node: str, workspace: torch.Tensor | None, b: int, t: int, device: torch.device) -> torch.Tensor:
    if workspace is None:
        return new_workspace(node, b, t, device)
    check_workspace(workspace, workspace_size(node, b, t), device)
    return workspace


def topk_gather_out(
    hidden: torch.Tensor,
    scores: torch.Tensor,
    valid: torch.Tensor,
    keep_q16: int,
    gathered: torch.Tensor,
    indices: torch.Tensor,
    active: torch.Tensor,
    workspace: torch.Tensor | None = None,
) -> None:
    b, t, _, _ = check_topk_gather(hidden, scores, valid, keep_q16, gathered, indices, active)
    ws = _workspace("topk_gather", workspace, b, t, hidden.device)
    status = load().topk_gather_out(hidden, scores, valid, int(keep_q16), gathered, indices, active, ws)
    check_status(status, "topk_gather_out")


def topk_scatter_out(
    residual: torch.Tensor,
    rows: torch.Tensor,
    indices: torch.Tensor,
    active: torch.Tensor,
    out: torch.Tensor,
    workspace: torch.Tensor | None = None,
) -> None:
    b, t, _, _ = check_topk_scatter(residual, rows, indices, active, out)
    ws = _workspace("topk_scatter", workspace, b, t, residual.device)
    check_status(load().topk_scatter_out(residual, rows, indices, active, out, ws), "topk_scatter_out")


def threshold_gather_out(
    hidden: torch.Tensor,
    scores: torch.Tensor,
    valid: torch.Tensor,
    threshold: float,
    gathered: torch.Tensor,
    rows: torch.Tensor,
    count: torch.Tensor,
    workspace: torch.Tensor | None = None,
) -> None:
    """Writes the first ``count`` rows of ``gathered [B*T,D]`` / ``rows [B*T]``; count stays on the device."""
    b, t, _ = check_threshold_gather(hidden, scores, valid, threshold, gathered, rows, count)
    ws = _workspace("threshold_gather", workspace, b, t, hidden.device)
    status = load().threshold_gather_out(hidden, scores, valid, float(threshold), gathered, rows, count, ws)
    check_status(status, "threshold_gather_out")


def row_scatter_out(
    residual: torch.Tensor,
    rows_data: torch.Tensor,
    rows: torch.Tensor,
    out: torch.Tensor,
    workspace: torch.Tensor | None = None,
) -> None:
    b, t, _, _ = check_row_scatter(residual, rows_data, rows, out)
    ws = _workspace("row_scatter", workspace, b, t, residual.device)
    check_status(load().row_scatter_out(residual, rows_data, rows, out, ws), "row_scatter_out")


def _dense(t: object) -> object:
    return t.contiguous() if isinstance(t, torch.Tensor) else t


def _scores(t: object) -> object:
    # convenience of the allocating wrappers: any floating score dtype is read as float32
    return t.float().contiguous() if isinstance(t, torch.Tensor) and t.is_floating_point() else t


def topk_gather(
    hidden: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, keep_q16: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hidden, scores, valid = _dense(hidden), _scores(scores), _dense(valid)
    b, _, d, k = check_topk_gather(hidden, scores, valid, keep_q16)
    gathered = hidden.new_empty(b, k, d)
    indices = torch.empty(b, k, dtype=torch.int64, device=hidden.device)
    active = torch.empty(b, k, dtype=torch.bool, device=hidden.device)
    topk_gather_out(hidden, scores, valid, keep_q16, gathered, indices, active)
    return gathered, indices, active


def topk_scatter(
    residual: torch.Tensor, rows: torch.Tensor, indices: torch.Tensor, active: torch.Tensor
) -> torch.Tensor:
    residual, rows, indices, active = _dense(residual), _dense(rows), _dense(indices), _dense(active)
    check_topk_scatter(residual, rows, indices, active)
    out = torch.empty_like(residual, memory_format=torch.contiguous_format)
    topk_scatter_out(residual, rows, indices, active, out)
    return out


def threshold_gather_padded(
    hidden: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """No host sync: ``gathered [B*T,D]`` and ``rows [B*T]`` of which the first ``count`` (0-d int32
    on the device) are written."""
    hidden, scores, valid = _dense(hidden), _scores(scores), _dense(valid)
    b, t, d = check_threshold_gather(hidden, scores, valid, threshold)
    gathered = hidden.new_empty(b * t, d)
    rows = torch.empty(b * t, dtype=torch.int64, device=hidden.device)
    count = torch.empty((), dtype=torch.int32, device=hidden.device)
    threshold_gather_out(hidden, scores, valid, threshold, gathered, rows, count)
    return gathered, rows, count


def threshold_gather(
    hidden: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    gathered, rows, count = threshold_gather_padded(hidden, scores, valid, threshold)
    n = int(count.item())  # like torch.nonzero: the output size is data dependent
    return gathered[:n], rows[:n]


def row_scatter(residual: torch.Tensor, rows_data: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    residual, rows_data, rows = _dense(residual), _dense(rows_data), _dense(rows)
    check_row_scatter(residual, rows_data, rows)
    out = torch.empty_like(residual, memory_format=torch.contiguous_format)
    row_scatter_out(residual, rows_data, rows, out)
    return out


def flags_out(flags: torch.Tensor, out: torch.Tensor) -> None:
    """int32 ``flags`` -> bool ``out`` (non-zero = true), or bool -> int32 (0 / 1): the TensorRT glue's
    ``ftp_flags_from_int32`` / ``ftp_flags_to_int32``. No allocation, no host sync."""
    check_flags(flags, out)
    check_status(load().flags_out(flags, out), "flags_out")


def convert_flags(flags: torch.Tensor) -> torch.Tensor:
    """int32 flags as bool, bool flags as int32 (see :func:`flags_out`)."""
    flags = _dense(flags)
    if not isinstance(flags, torch.Tensor):
        check_flags(flags, None)  # raises the TypeError
    out = torch.empty(flags.shape, dtype=torch.bool if flags.dtype == torch.int32 else torch.int32, device=flags.device)
    flags_out(flags, out)
    return out


# ---- diagnosis of the C++ exception path ------------------------------------------------------------

PROBE_MODES = ("torch", "caught", "std", "c10")

_PROBE = """
import sys
mode = sys.argv[1]
try:
    import torch
    if mode == "torch":
        torch.empty(2).view(3)
        outcome = "returned"
    else:
        from ftp_export.trt import kernels_ext
        outcome = "returned " + repr(kernels_ext.load()._probe_exception(mode))
except BaseException as e:
    outcome = f"raised {type(e).__name__}: " + (str(e).splitlines() or [""])[0]
print("PROBE: " + outcome, flush=True)
"""


def diagnose_exception_path(modes: Sequence[str] = PROBE_MODES, timeout_s: float = 600.0) -> dict[str, str]:
    """How a C++ exception fares in this environment, each probe in a child process (it may crash).

    ``torch``: torch's own TORCH_CHECK (``torch.empty(2).view(3)``); ``caught``: a c10::Error thrown
    and caught inside the extension; ``std`` / ``c10``: exceptions left to pybind11 to translate.
    Reading: ``torch`` crashing means no C++ exception survives in this process (the runtime's
    unwinder / libstdc++, not this code); only ``caught`` and the rest crashing means unwinding
    through the extension's own frames fails (its unwind tables, i.e. the toolchain that built
    it); only ``std`` / ``c10`` crashing means pybind11's translation fails (the pybind11
    internals the extension shares with torch._C). The binding does not depend on any of them.
    """
    env = dict(os.environ)
    site = Path(__file__).resolve().parents[2]  # the folder holding the ftp_export package
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    results = {}
    for mode in modes:
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _PROBE, mode],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                cwd=site,
                env=env,
            )
        except subprocess.TimeoutExpired:
            results[mode] = f"timed out after {timeout_s:.0f} s"
            continue
        line = next((x for x in proc.stdout.splitlines() if x.startswith("PROBE: ")), None)
        if proc.returncode < 0:
            try:
                sig = signal.Signals(-proc.returncode).name
            except ValueError:
                sig = str(-proc.returncode)
            results[mode] = f"crashed ({sig})"
        elif line is None:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            results[mode] = f"exited {proc.returncode} without a result: {tail}"
        else:
            results[mode] = line.removeprefix("PROBE: ")
    return results
