"""Atomic writes: a file or folder is built under a hidden temporary name beside its target and
renamed into place only when complete, so a failure or Ctrl-C never leaves one that looks finished.
Every writer of the project (exports, schedules, evaluation assets, trainer checkpoints) uses these.

A folder that replaces another is swapped in with one atomic exchange (Linux ``renameat2``), so the
previous folder ends under the hidden partial name and is removed from there: a kill at any moment
leaves either the old or the new folder in place, never neither, and no ``.old-*`` folder. Where
the exchange is unsupported, the old folder is first renamed to ``.NAME.old-PID-xxxxxxxx``; one a
killed process left behind is restored when the target is missing, else removed
(:func:`remove_stale_partials`)."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
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
OLD = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)-[0-9a-f]{8}$")


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


def remove_stale_partials(parent: Path, log: Callable[[str], None] | None = None) -> list[Path]:
    """Clean up after a SIGKILL or a power cut in ``parent``: remove the ``.NAME.partial-PID-*``
    and ``.NAME.old-PID-*`` folders whose PID is dead, except an ``.old`` one whose ``NAME`` is
    missing (killed mid-swap): that one is renamed back to ``NAME`` (and ``log`` told). Returns
    what was removed."""
    removed = []
    for path in sorted(Path(parent).glob(".*.*-*")):
        m = PARTIAL.match(path.name) or OLD.match(path.name)
        if not (m and path.is_dir() and not path.is_symlink() and not _pid_alive(int(m["pid"]))):
            continue
        target = path.parent / m["name"]
        if m.re is OLD and not os.path.lexists(target):
            os.replace(path, target)
            if log is not None:
                log(f"restored {target} from {path}, left by a process killed while replacing it")
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this kernel or file system cannot
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while a folder is swapped in; deliver them afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if caught:
            signal.raise_signal(caught[0])


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
    with _signals_deferred():
        if not target.exists():
            os.replace(tmp, target)
        elif _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # now the previous folder
        else:
            old = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(tmp, target)
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
