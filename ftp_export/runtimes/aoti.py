"""AOTInductor: the prefill and decode ``.pt2`` packages, loaded without the model code and
driven as a PyTorch app drives them (torch tensors in and out, on the packages' device; one
step's ``present`` tensors go into the next step as returned)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftp_export.graph_io import GraphSignature
from ftp_export.routed import attention_op  # noqa: F401  (registers the op the packages may call)
from ftp_export.runtimes.base import Runtime

LOADER = "torch._inductor.aoti_load_package"


class AotiRuntime(Runtime):
    name = "AOTInductor"

    def __init__(self, files: dict[str, Path], signatures: dict[str, GraphSignature], device: str | torch.device) -> None:
        super().__init__(signatures)
        self.device = torch.device(device)
        self.files = dict(files)  # graph -> package path
        self.runners = {graph: torch._inductor.aoti_load_package(str(path)) for graph, path in files.items()}

    def feed(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def to_numpy(self, value: torch.Tensor) -> np.ndarray:
        return value.detach().float().cpu().numpy() if value.is_floating_point() else value.detach().cpu().numpy()

    def run(self, graph: str, feeds: dict[str, Any]) -> dict[str, Any]:
        sig = self.signatures[graph]
        with torch.no_grad():
            outs = self.runners[graph](*(feeds[name] for name in sig.inputs))
        return sig.named(outs)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "torch": torch.__version__, "device": str(self.device), "loader": LOADER}
