"""ftp-export: fine-grained token-wise pruning (FTP) for Hugging Face causal LMs.

The routing semantics shared by the trainer, the PyTorch reference and every export
target live in :mod:`ftp_export.routing` (see docs/routing.md).
"""

from __future__ import annotations

__version__ = "0.1.0"

from ftp_export.errors import FTPError, ScheduleError, UnsupportedModelError  # noqa: E402

__all__ = ["FTPError", "ScheduleError", "UnsupportedModelError", "__version__"]
