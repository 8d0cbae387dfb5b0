"""Compile and load the CPU kernel of :mod:`ftp_export.kernels.cpu_signal` on first use.

The kernel is one plain C file shipped with the package (``cpu_softmax_colsum.c``, no PyTorch
headers: it compiles in well under a second). It is built for the machine it runs on
(``-march=native``) into ``$FTP_EXPORT_CACHE/kernels/<hash>/`` (default ``~/.cache/ftp-export``),
the hash covering the source, the compiler's version, the flags and the CPU, so a cache shared
between machines never hands one a library built for another. The library is written under a
temporary name and renamed into place, so concurrent first uses are safe.

No compiler, or a failed build: :func:`library` returns None once, with one warning, and eager
attention keeps its ATen schedule (same results, slower). ``FTP_EXPORT_CPU_KERNEL=0`` switches the
kernel off; ``CC`` picks the compiler (default ``cc``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

from ftp_export.paths import cache_root

SOURCE = Path(__file__).with_name("cpu_softmax_colsum.c")
# with OpenMP first; a compiler without it (Apple clang) still builds the single-threaded kernel
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"],
    ["-O3", "-march=native", "-shared", "-fPIC"],
    ["-O3", "-shared", "-fPIC"],
)
_P, _I = ctypes.c_void_p, ctypes.c_int64
# scores, inv_sum, allowed, q_index, window, weight, colsum, G, HKV, R, NQ, N, a_sg, a_sq, w_sg, c_sg, inv_heads, threads
ARGTYPES = [_P, _P, _P, _P, _I, _P, _P, *[_I] * 9, ctypes.c_float, ctypes.c_int]


def enabled() -> bool:
    """The kernel is not switched off with ``FTP_EXPORT_CPU_KERNEL=0``."""
    return os.environ.get("FTP_EXPORT_CPU_KERNEL", "1") != "0"


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the machine and its CPU's feature flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                flags += line
    except OSError:
        pass
    return platform.machine() + platform.processor() + flags


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _build(cc: str, target: Path) -> str | None:
    """Compile the source into ``target`` with the first flag set the compiler takes; returns the
    last compiler message on failure, None on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    error = "no flag set tried"
    for flags in FLAG_SETS:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            done = subprocess.run(
                [cc, *flags, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True, timeout=300
            )
        except (OSError, subprocess.SubprocessError) as exc:
            os.unlink(tmp)
            return str(exc)
        if done.returncode == 0:
            os.replace(tmp, target)
            return None
        os.unlink(tmp)
        error = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return error


def library_path(cc: str) -> Path:
    """Where the library built by ``cc`` for this machine lives in the cache."""
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), _compiler_version(cc).encode(), repr(FLAG_SETS).encode(), _cpu_id().encode()):
        key.update(part)
    return cache_root() / "kernels" / key.hexdigest()[:16] / "cpu_softmax_colsum.so"


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The loaded kernel library, built on first use; None (after one warning) when it cannot be.
    Whether it is used is :func:`enabled`'s, read per call by its callers, not cached here."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        warnings.warn(f"no C compiler ({cc}) found: eager CPU attention uses its slower ATen schedule", stacklevel=2)
        return None
    path = library_path(cc)
    if not path.exists():
        try:
            error = _build(cc, path)
        except OSError as exc:
            error = str(exc)
        if error is not None:
            warnings.warn(
                f"building the CPU attention kernel failed ({error}): eager CPU attention uses ATen", stacklevel=2
            )
            return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:  # a truncated or foreign file in the cache
        warnings.warn(f"loading the CPU attention kernel {path} failed ({exc}): eager CPU attention uses ATen", stacklevel=2)
        return None
    fn = lib.ftp_softmax_colsum_f32
    fn.restype = ctypes.c_int
    fn.argtypes = ARGTYPES
    return lib
