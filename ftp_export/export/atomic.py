"""Atomic output folders: an export is built in a hidden sibling folder and renamed into place
only when complete, so a failure or Ctrl-C never leaves a folder that looks finished."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ftp_export.errors import FTPError


def check_writable(target: Path) -> None:
    """Fail early, with one line, if ``target``'s parent cannot be created or written."""
    parent = target.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".ftp-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FTPError(f"cannot write to output folder {target}: {exc.strerror or exc}; choose another -o") from None
    if target.exists() and not target.is_dir():
        raise FTPError(f"output path {target} exists and is not a folder; choose another -o")


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``."""
    target = Path(target)
    check_writable(target)
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
