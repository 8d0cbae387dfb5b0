"""Where the plugin sources (plugins/: CUDA kernels, TensorRT glue, CMakeLists.txt) are, and the
one TensorRT optimisation profile that the build script and the engine builder share.

A wheel carries plugins/ as package data (``ftp_export/plugins/``); a source checkout or an
editable install uses the repository's plugins/; ``FTP_PLUGINS_DIR`` overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path

from ftp_export.errors import FTPError

_PACKAGE = Path(__file__).resolve().parents[1]  # ftp_export/
MARKER = "CMakeLists.txt"

#: (batch, new tokens, past tokens) at the min / opt / max of each graph's optimisation profile
PROFILES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]] = {
    "prefill": ((1, 1, 0), (1, 512, 0), (8, 2048, 0)),
    "decode": ((1, 1, 1), (4, 1, 1024), (8, 1, 4096)),
}


def plugin_sources_dir() -> Path:
    """The plugins/ folder, or one clear error saying how to get it."""
    env = os.environ.get("FTP_PLUGINS_DIR")
    candidates = [Path(env)] if env else [_PACKAGE / "plugins", _PACKAGE.parent / "plugins"]
    for folder in candidates:
        if (folder / MARKER).is_file():
            return folder
    where = ", ".join(str(c) for c in candidates)
    raise FTPError(
        f"TensorRT plugin sources not found (looked in {where}); reinstall ftp-export from its wheel or "
        "repository, or set FTP_PLUGINS_DIR to the repository's plugins/ folder"
    )
