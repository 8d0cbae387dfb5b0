"""Checkpoints in ``<output>.ckpt/`` (written atomically by rank 0) and the interrupt test hook.

``meta.json`` (settings that determine the result), ``removal.json`` (greedy block-removal
order), ``ga1.json`` / ``ga3.json`` (GA state), ``step2.json`` + ``step2.routers.safetensors``
(trained routers, losses, decode thresholds), ``step4.json`` + ``step4.routers.safetensors``. ``--resume`` continues from them; a run with
different settings or unreadable files is refused. A run without ``--resume`` discards them (and
says so); a finished run removes the folder.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from ftp_export.atomic import atomic_file, atomic_write_text
from ftp_export.errors import FTPError
from ftp_export.routing.router import RouterBank, router_bank_from_state
from ftp_export_trainer import distributed as dist

# Test hook: FTP_TRAIN_INTERRUPT=<point>[@<signal>] with <point> one of "ga1:<gen>", "step1",
# "step2", "ga3:<gen>", "step4" (each right after its checkpoint is written): raise Interrupted there, or,
# with @KILL (@TERM, ...), send the process that signal, as a real kill at that point would.
INTERRUPT_ENV = "FTP_TRAIN_INTERRUPT"


class Interrupted(Exception):
    """Raised by the :data:`INTERRUPT_ENV` test hook to simulate a killed run."""


def maybe_interrupt(tag: str) -> None:
    """Raise :class:`Interrupted` (or send the named signal) when :data:`INTERRUPT_ENV` names this point."""
    point, _, sig = os.environ.get(INTERRUPT_ENV, "").partition("@")
    if point != tag:
        return
    if sig:
        os.kill(os.getpid(), getattr(signal, "SIG" + sig.upper()))
        time.sleep(1)  # give the signal time to arrive; a Python handler runs right after os.kill
    raise Interrupted(f"simulated interrupt at {tag} ({INTERRUPT_ENV})")


class Checkpoints:
    """JSON and safetensors files in ``<output>.ckpt/``; only rank 0 writes."""

    FILES = ("meta.json", "removal.json", "ga1.json", "step2.json", "step2.routers.safetensors", "ga3.json", "step4.json",
             "step4.routers.safetensors")

    def __init__(self, output: Path) -> None:
        self.dir = output.with_name(output.name + ".ckpt")

    def _ours(self) -> list[Path]:
        """The checkpoint files present, and temporary files a killed write left behind."""
        if not self.dir.is_dir():
            return []
        tmp = [p for name in self.FILES for p in self.dir.glob(f".{name}.*.tmp")]
        return [self.path(name) for name in self.FILES if self.path(name).is_file()] + sorted(tmp)

    def reset(self) -> list[str]:
        """Forget an earlier run's checkpoints (a fresh run must not resume from them later);
        returns the names of the checkpoint files discarded (temporary leftovers not named)."""
        found = self._ours()
        if dist.is_main():
            for p in found:
                p.unlink(missing_ok=True)
        dist.barrier()
        return [p.name for p in found if not p.name.endswith(".tmp")]

    def remove(self) -> None:
        """After a finished run: delete the checkpoint files, and the folder unless it holds
        files of someone else's (it is then left as it is)."""
        if not dist.is_main():
            return
        for p in self._ours():
            p.unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:  # absent, or not empty: never delete files that are not ours
            pass

    def path(self, name: str) -> Path:
        return self.dir / name

    def corrupt(self, name: str, why: str) -> FTPError:
        """The one-line error for an unusable checkpoint file."""
        return FTPError(f"checkpoint {self.path(name)} is corrupt ({why}); delete {self.dir} or run without --resume")

    def write_json(self, name: str, doc: Any) -> None:
        if dist.is_main():
            atomic_write_text(self.path(name), json.dumps(doc))

    def read_json(self, name: str) -> Any | None:
        """The file's JSON, or None when it does not exist."""
        p = self.path(name)
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise self.corrupt(name, type(exc).__name__) from None

    def write_routers(self, name: str, bank: RouterBank) -> None:
        if not dist.is_main():
            return
        from safetensors.torch import save_file

        with atomic_file(self.path(name)) as tmp:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in bank.state_dict().items()}, str(tmp))

    def read_routers(self, name: str, n: int) -> RouterBank:
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(self.path(name)))
            bank = router_bank_from_state(n, tensors)  # four-factor or hidden-state, as written
            bank.load_state_dict(tensors)
        except Exception as exc:  # noqa: BLE001 - any failure means an unusable file
            raise self.corrupt(name, type(exc).__name__) from None
        return bank.eval()
