"""TensorRT engine build (TensorRT 10 Python API); the engines run in
:mod:`ftp_export.runtimes.tensorrt`.

Only imported where ``import tensorrt`` works. Not run on this project's machines (TensorRT
cannot be installed here); written against the public TensorRT 10 API: ``Builder``,
``OnnxParser``, optimisation profiles from :data:`ftp_export.trt.sources.PROFILES`.

Precision: the network is *strongly typed* (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; TensorRT
11 is always strongly typed and keeps the flag only for compatibility), so every tensor keeps the type
the ONNX graph gives it: the export dtype for the model, float32 for the routing islands (router MLP,
factors, scores, thresholds, selection). No FP16/BF16 builder flag is set: a strongly typed network
takes its precision from the tensor types, and with those flags on a weakly typed network TensorRT could
run the routing in 16 bits and flip top-k or threshold decisions (``BuilderFlag.BF16`` does not exist in TensorRT 11 anyway). The engine's
precision is therefore the graph's (``ftp-export --dtype``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftp_export.errors import FTPError
from ftp_export.graph_io import GRAPH_FILES
from ftp_export.trt.sources import PROFILES


def find_plugin_library(folder: Path) -> Path | None:
    for cand in (folder / "build" / "libftp_plugins.so", Path("build") / "libftp_plugins.so"):
        if cand.is_file():
            return cand
    return None


def _shapes(name: str, batch: int, seq: int, past: int, kv_heads: int, head_dim: int) -> tuple[int, ...]:
    if name in ("input_ids", "position_ids"):
        return (batch, seq)
    if name == "attention_mask":
        return (batch, past + seq)
    return (batch, kv_heads, past, head_dim)  # past_key_values.*


def strongly_typed_flags(trt: Any) -> int:
    """``create_network`` flags of a strongly typed network (the flag's own value: it moved between
    TensorRT 10 and 11, where the mode is always on)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_engines(folder: Path, log: Any, shown: Path | None = None, dtype: str = "float32") -> dict[str, Any]:
    """Build decoder_model.engine and decoder_with_past_model.engine in ``folder`` as strongly typed
    networks (precision = the graphs' ``dtype``); the message names ``shown`` (default ``folder``):
    the folder the user gets when ``folder`` is a temporary build folder."""
    import tensorrt as trt

    lib = find_plugin_library(folder)
    if lib is None:
        return {"built": False, "message": f"TensorRT engine not built: no libftp_plugins.so; run {(shown or folder) / 'build_engines.sh'}"}
    logger = trt.Logger(trt.Logger.WARNING)
    registry = trt.get_plugin_registry()
    registry.load_library(str(lib))
    built = {}
    for graph, (lo, opt, hi) in PROFILES.items():
        onnx_file = f"{GRAPH_FILES[graph]}.onnx"
        builder = trt.Builder(logger)
        network = builder.create_network(strongly_typed_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(folder / onnx_file)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise FTPError(f"TensorRT could not parse {onnx_file}: {errors}")
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            kv_heads, head_dim = (tensor.shape[1], tensor.shape[3]) if tensor.name.startswith("past_") else (0, 0)
            profile.set_shape(
                tensor.name,
                _shapes(tensor.name, *lo, kv_heads, head_dim),
                _shapes(tensor.name, *opt, kv_heads, head_dim),
                _shapes(tensor.name, *hi, kv_heads, head_dim),
            )
        config.add_optimization_profile(profile)
        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise FTPError(f"TensorRT failed to build an engine for {onnx_file}")
        engine = folder / onnx_file.replace(".onnx", ".engine")
        engine.write_bytes(bytes(blob))
        built[onnx_file] = engine.name
        log(f"      built {engine.name}")
    return {"built": True, "engines": built, "precision": {"graph": dtype, "routing": "float32", "network": "strongly typed"}, "message": f"TensorRT engines built in {shown or folder}"}
