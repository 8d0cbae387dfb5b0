"""manifest.json: what was exported, from what, with which versions, and the parity verdict."""

from __future__ import annotations

import datetime as _dt
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from ftp_export import __version__
from ftp_export.schedule import Schedule, sha256_file

MANIFEST = "manifest.json"
FORMAT = "ftp-export-manifest"
PACKAGES = ("torch", "transformers", "onnx", "onnxruntime", "onnxscript", "tensorrt")


def versions() -> dict[str, str]:
    found = {"ftp_export": __version__}
    for pkg in PACKAGES:
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return found


def file_entries(folder: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        out.append({"path": str(path.relative_to(folder)), "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return out


def write_manifest(folder: Path, *, target: str, model: dict[str, Any], schedule: Schedule, extra: dict[str, Any]) -> Path:
    doc = {
        "format": FORMAT,
        "format_version": 1,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "target": target,
        "model": model,
        "schedule": {
            "source": str(schedule.path) if schedule.path else None,
            "sha256": schedule.sha256,
            "target_sparsity": round(schedule.target_sparsity, 6),
            "block_sparsity": schedule.block_sparsity,
            "decode_thresholds": schedule.decode_thresholds.to_json(),
            "format_version": schedule.format_version,
        },
        "versions": versions(),
        **extra,
        "files": file_entries(folder),
    }
    path = folder / MANIFEST
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a previous export in ``folder``, or None when ``folder`` is not one."""
    try:
        doc = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def parity_passed(folder: Path) -> bool:
    """True when ``folder`` holds an export whose manifest records a passing parity check."""
    doc = read_manifest(folder)
    parity = doc.get("parity") if doc else None
    return isinstance(parity, dict) and parity.get("passed") is True
