"""onnxruntime: the exported ONNX graphs in an InferenceSession, arrays in and out."""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftp_export.graph_io import MERGED, GraphSignature
from ftp_export.runtimes.base import Runtime

SessionFactory = Callable[[Path, list[str]], Any]


def providers_for(device: str | torch.device) -> list[str]:
    """Execution providers for a ``--device``: CUDA first where this onnxruntime has it, CPU always."""
    import onnxruntime as ort

    wanted = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        wanted.insert(0, "CUDAExecutionProvider")
    return wanted


def ort_session(path: Path, providers: list[str], log_level: int = 3) -> Any:
    """An InferenceSession; ``log_level`` 3 logs errors only, 2 warnings too."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = log_level
    return ort.InferenceSession(str(path), opts, providers=providers)


def shape_contradictions(declared: dict[str, list[Any]], actual: dict[str, tuple[int, ...]]) -> list[str]:
    """Where run-time shapes contradict the declared ones (what onnxruntime warns about): another
    rank, a static dimension of another size, one dimension name with two sizes in a call, or a
    ``A + B`` dimension that is not the sum of ``A`` and ``B``. Other expressions are not checked."""
    problems: list[str] = []
    sizes: dict[str, int] = {}
    sums: list[tuple[str, int, str, int]] = []
    for name, dims in declared.items():
        shape = actual.get(name)
        if shape is None:
            continue
        if len(dims) != len(shape):
            problems.append(f"{name} declared rank {len(dims)} {list(dims)}, got shape {list(shape)}")
            continue
        for axis, (dim, size) in enumerate(zip(dims, shape)):
            if isinstance(dim, int) and dim != size:
                problems.append(f"{name} dim {axis} declared {dim}, got {size}")
            elif isinstance(dim, str) and dim.isidentifier():
                if sizes.setdefault(dim, size) != size:
                    problems.append(f"{name} dim {axis} '{dim}' is {size}, elsewhere {sizes[dim]}")
            elif isinstance(dim, str) and all(t.strip().isidentifier() for t in dim.split("+")):
                sums.append((name, axis, dim, size))
    for name, axis, dim, size in sums:
        terms = [t.strip() for t in dim.split("+")]
        if all(t in sizes for t in terms) and sum(sizes[t] for t in terms) != size:
            problems.append(f"{name} dim {axis} '{dim}' is {size}, not {sum(sizes[t] for t in terms)}")
    return problems


ORT_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def empty_past(session: Any, batch: int) -> dict[str, np.ndarray]:
    """The ``past_key_values.*`` feeds that start a sequence in a graph with a past (the single
    graph): ``[batch, kv_heads, 0, head_dim]`` each; none for a graph without past inputs."""
    return {
        v.name: np.zeros((batch, v.shape[1], 0, v.shape[3]), dtype=ORT_NUMPY_TYPES[v.type])
        for v in session.get_inputs() if v.name.startswith("past_key_values.")
    }


class OrtRuntime(Runtime):
    """The prefill and decode ONNX graphs in onnxruntime (``session_factory`` may add custom ops),
    or the single graph (``files`` = {'model': path}) run for both: a prefill feeds it an empty
    past, as optimum and onnxruntime-genai do when a sequence starts."""

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

    @property
    def merged(self) -> bool:
        """Whether one graph (``model.onnx``) runs both the prefill and the decode steps."""
        return MERGED in self.sessions

    def session(self, graph: str) -> Any:
        return self.sessions[MERGED if self.merged else graph]

    def _full_feeds(self, graph: str, feeds: dict[str, Any]) -> dict[str, Any]:
        if self.merged and graph == "prefill":
            return {**feeds, **empty_past(self.session(MERGED), int(np.shape(feeds["input_ids"])[0]))}
        return feeds

    def run(self, graph: str, feeds: dict[str, Any]) -> dict[str, Any]:
        """Every output of the graph that runs ``graph`` (the single graph's include the other
        graph's routing outputs, empty)."""
        sess = self.session(graph)
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(None, self._full_feeds(graph, feeds))))

    def check_shapes(self, graph: str, feeds: dict[str, Any], outputs: dict[str, Any]) -> None:
        sess = self.session(graph)
        feeds = self._full_feeds(graph, feeds)
        declared = {v.name: v.shape for v in (*sess.get_inputs(), *sess.get_outputs())}
        actual = {name: tuple(np.shape(v)) for name, v in (*feeds.items(), *outputs.items())}
        for problem in shape_contradictions(declared, actual):
            if f"{graph}: {problem}" not in self.shape_problems:
                self.shape_problems.append(f"{graph}: {problem}")

    def info(self) -> dict[str, Any]:
        used = self.session("prefill").get_providers()
        return {"name": self.name, "version": metadata.version("onnxruntime"), "providers": used}
