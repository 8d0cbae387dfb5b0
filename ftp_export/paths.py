"""Where the project keeps things outside the checkout: the offline cache that
``ftp-export setup`` fills and model loading looks in (``$FTP_EXPORT_CACHE`` or ``~/.cache/ftp-export``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("FTP_EXPORT_CACHE") or Path.home() / ".cache" / "ftp-export").expanduser()


def model_dir(alias: str) -> Path:
    """Where a materialised model alias lives (it may not exist yet)."""
    return cache_root() / "models" / alias


def text_dir(name: str) -> Path:
    """Where a materialised text corpus lives (it may not exist yet)."""
    return cache_root() / "text" / name
