"""onnxruntime: the exported ONNX graphs in an InferenceSession, arrays in and out."""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ftp_export.graph_io import GraphSignature
from ftp_export.runtimes.base import Runtime

SessionFactory = Callable[[Path, list[str]], Any]


def providers_for(device: str | torch.device) -> list[str]:
    """Execution providers for a ``--device``: CUDA first where this onnxruntime has it, CPU always."""
    import onnxruntime as ort

    wanted = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        wanted.insert(0, "CUDAExecutionProvider")
    return wanted


def ort_session(path: Path, providers: list[str]) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers)


class OrtRuntime(Runtime):
    """The prefill and decode ONNX graphs in onnxruntime (``session_factory`` may add custom ops)."""

    name = "onnxruntime"

    def __init__(
        self,
        files: dict[str, Path],
        signatures: dict[str, GraphSignature],
        device: str | torch.device = "cpu",
        session_factory: SessionFactory = ort_session,
    ) -> None:
        super().__init__(signatures)
        self.providers = providers_for(device)
        self.sessions = {graph: session_factory(path, self.providers) for graph, path in files.items()}

    def run(self, graph: str, feeds: dict[str, Any]) -> dict[str, Any]:
        sess = self.sessions[graph]
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(None, feeds)))

    def info(self) -> dict[str, Any]:
        used = self.sessions["prefill"].get_providers()
        return {"name": self.name, "version": metadata.version("onnxruntime"), "providers": used}
