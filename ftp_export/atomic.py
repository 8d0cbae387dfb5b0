"""Atomic writes: a file or folder is built under a hidden temporary name beside its target and
renamed into place only when complete, so a failure or Ctrl-C never leaves one that looks finished.
Every writer of the project (exports, schedules, evaluation assets, trainer checkpoints) uses these."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ftp_export.errors import FTPError


def check_writable(target: Path) -> None:
    """Fail early, with one line, if ``target``'s parent cannot be created or written."""
    parent = Path(target).resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".ftp-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FTPError(f"cannot write to output folder {target}: {exc.strerror or exc}; choose another -o") from None
    if Path(target).exists() and not Path(target).is_dir():
        raise FTPError(f"output path {target} exists and is not a folder; choose another -o")


PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)-[0-9a-f]{8}$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists but belongs to someone else
        return True
    return True


def remove_stale_partials(parent: Path) -> list[Path]:
    """Remove ``.NAME.partial-PID-xxxxxxxx`` folders in ``parent`` whose PID is dead (left by a
    SIGKILL or a power cut); returns what was removed."""
    removed = []
    for path in sorted(Path(parent).glob(".*.partial-*")):
        m = PARTIAL.match(path.name)
        if m and path.is_dir() and not path.is_symlink() and not _pid_alive(int(m["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextmanager
def atomic_dir(target: Path, divert: Callable[[], Path | None] | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``.
    ``divert`` is asked on success: a path it returns receives the folder instead, ``target`` is kept."""
    target = Path(target)
    check_writable(target)
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        elsewhere = divert() if divert is not None else None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if elsewhere is not None:
        os.replace(tmp, elsewhere)
        return
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` to write; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600; the file should get the permissions a plain write gives
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(target: Path, text: str) -> Path:
    """Write ``text`` to ``target`` atomically (UTF-8)."""
    with atomic_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)
