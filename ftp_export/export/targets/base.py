"""What an export target is: a name, a one-line description and an ``export`` that writes its
artefacts into a folder and returns the runtime that parity drives. Targets register themselves
here; ``--target`` choices come from the registry, so adding a target means adding one file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftp_export.errors import FTPError
from ftp_export.export.request import ExportRequest
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.runtimes.base import Runtime

Log = Callable[[str], None]


@dataclass
class TargetResult:
    """What a target produced: manifest entries, the runtime parity drives (or None), a note for the user."""

    manifest: dict[str, Any]
    runtime: Runtime | None
    note: str = ""


class Target:
    """An export target. Subclasses set ``name`` and ``description`` and implement :meth:`export`."""

    name = ""
    description = ""
    default_logits = "last"  # a prefill's logits when --logits is not given (graph_io.LOGITS_CHOICES)

    def check(self, req: ExportRequest) -> None:
        """Refuse, with one FTPError line and before any work, a request this target cannot carry out."""

    def export(self, model: RoutedCausalLM, out: Path, req: ExportRequest, log: Log) -> TargetResult:
        raise NotImplementedError


REGISTRY: dict[str, Target] = {}


def register(cls: type[Target]) -> type[Target]:
    """Class decorator: make ``cls`` available as ``--target cls.name``."""
    REGISTRY[cls.name] = cls()
    return cls


def get_target(name: str) -> Target:
    if name not in REGISTRY:
        raise FTPError(f"unknown target {name!r}; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[name]
