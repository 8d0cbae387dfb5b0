"""The exported artefacts the onnxruntime bench times: a model exported by the ``onnx`` target
(the code ``ftp-export --target onnx`` runs: ``Target.check`` then ``Target.export``, opset and
prefill ``logits`` policy included), loaded into onnxruntime sessions with a fixed thread count.

The dense baseline is the same model exported the same way with every block sparsity 0 (all
blocks dense, no router, no routing outputs): same exporter, opset, attention code, graph
inputs/outputs and logits policy, so the ratio measures what routing changes and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftp_export.export.request import ExportRequest
from ftp_export.export.targets import get_target
from ftp_export.graph_io import DEFAULT_LOGITS, MERGED, GraphSignature, signatures
from ftp_export.routed.cache import DEFAULT_KV_CACHE
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.runtimes.ort import OrtRuntime

TARGET = "onnx"


@dataclass
class ExportedPair:
    """One export's graph files (the single graph: {'model': path}) and its prefill and decode signatures."""

    files: dict[str, Path]
    signatures: dict[str, GraphSignature]
    opset: int | None

    @property
    def prefill_file(self) -> Path:
        """The graph a prefill runs in."""
        return self.files.get("prefill", self.files.get(MERGED))


def export_model(model: RoutedCausalLM, folder: Path, dtype: str, logits: str = DEFAULT_LOGITS,
                 kv_cache: str = DEFAULT_KV_CACHE) -> ExportedPair:
    """Export ``model`` with the ``onnx`` target into ``folder`` (created), ``kv_cache`` its decode
    cache layout; the target's own onnxruntime sessions (default threads, used by its parity) are dropped."""
    folder.mkdir(parents=True, exist_ok=True)
    target = get_target(TARGET)
    req = ExportRequest(target=TARGET, output=str(folder), dtype=dtype, device="cpu", logits=logits, kv_cache=kv_cache)
    target.check(req)
    result = target.export(model, folder, req, lambda _msg: None)
    graphs = result.manifest["graphs"]
    files = {g: folder / entry["file"] for g, entry in graphs.items()}
    return ExportedPair(files, signatures(model, logits, kv_cache), result.manifest.get("opset"))


def ort_session_factory(threads: int) -> Any:
    """An onnxruntime session factory: CPU provider, ``threads`` intra-op threads, one inter-op
    thread, sequential execution (reproducible timing)."""

    def make(path: Path, providers: list[str]) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    return make


def ort_runtime(pair: ExportedPair, threads: int) -> OrtRuntime:
    """The export's prefill and decode graphs in onnxruntime's CPU provider."""
    return OrtRuntime(pair.files, pair.signatures, device="cpu", session_factory=ort_session_factory(threads))
