"""TensorRT engine build and a greedy runner over the engines' KV cache (TensorRT 10 Python API).

Only imported where ``import tensorrt`` works. Not run on this project's machines (TensorRT
cannot be installed here); written against the public TensorRT 10 API: ``Builder``,
``OnnxParser``, optimisation profiles, ``IExecutionContext.set_input_shape`` /
``set_tensor_address`` / ``execute_async_v3`` and an ``IOutputAllocator`` for the decode graph's
data-dependent routing output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftp_export.errors import FTPError
from ftp_export.export.graphs import DECODE_FILE, PREFILL_FILE

PROFILES = {
    # name: (min, opt, max) as (batch, seq, past)
    PREFILL_FILE: ((1, 1, 0), (1, 512, 0), (8, 2048, 0)),
    DECODE_FILE: ((1, 1, 1), (4, 1, 1024), (8, 1, 4096)),
}


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


def build_engines(folder: Path, log: Any, precision: str = "bf16") -> dict[str, Any]:
    """Build decoder_model.engine and decoder_with_past_model.engine in ``folder``."""
    import tensorrt as trt

    lib = find_plugin_library(folder)
    if lib is None:
        return {"built": False, "message": f"TensorRT engine not built: no libftp_plugins.so; run {folder}/build_engines.sh"}
    logger = trt.Logger(trt.Logger.WARNING)
    registry = trt.get_plugin_registry()
    registry.load_library(str(lib))
    built = {}
    for onnx_file, (lo, opt, hi) in PROFILES.items():
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(folder / onnx_file)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise FTPError(f"TensorRT could not parse {onnx_file}: {errors}")
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.BF16 if precision == "bf16" else trt.BuilderFlag.FP16)
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
        config.plugins_to_serialize = [str(lib)]
        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise FTPError(f"TensorRT failed to build an engine for {onnx_file}")
        engine = folder / onnx_file.replace(".onnx", ".engine")
        engine.write_bytes(bytes(blob))
        built[onnx_file] = engine.name
        log(f"      built {engine.name}")
    return {"built": True, "engines": built, "precision": precision, "message": "TensorRT engines built"}


class EngineRunner:
    """Greedy generation over the two engines with torch CUDA tensors as I/O buffers."""

    def __init__(self, folder: Path, num_layers: int) -> None:
        import tensorrt as trt
        import torch

        lib = find_plugin_library(folder)
        if lib is not None:
            trt.get_plugin_registry().load_library(str(lib))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {
            name: runtime.deserialize_cuda_engine((folder / name.replace(".onnx", ".engine")).read_bytes()) for name in PROFILES
        }
        self.contexts = {name: eng.create_execution_context() for name, eng in self.engines.items()}
        self.num_layers = num_layers
        self.torch = torch
        self.trt = trt

    def _run(self, name: str, feeds: dict[str, Any]) -> dict[str, Any]:
        torch, trt = self.torch, self.trt
        engine, ctx = self.engines[name], self.contexts[name]
        stream = torch.cuda.current_stream()
        outputs: dict[str, Any] = {}
        allocators = []
        for name_in, tensor in feeds.items():
            ctx.set_input_shape(name_in, tuple(tensor.shape))
            ctx.set_tensor_address(name_in, tensor.data_ptr())
        for i in range(engine.num_io_tensors):
            tname = engine.get_tensor_name(i)
            if engine.get_tensor_mode(tname) != trt.TensorIOMode.OUTPUT:
                continue
            shape = tuple(ctx.get_tensor_shape(tname))
            dtype = _torch_dtype(engine.get_tensor_dtype(tname))
            if any(d < 0 for d in shape):  # data-dependent (decode routing rows)
                alloc = _TorchOutputAllocator(dtype)
                ctx.set_output_allocator(tname, alloc)
                allocators.append((tname, alloc))
                continue
            buf = torch.empty(shape, dtype=dtype, device="cuda")
            ctx.set_tensor_address(tname, buf.data_ptr())
            outputs[tname] = buf
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise FTPError(f"TensorRT execution of {name} failed")
        stream.synchronize()
        for tname, alloc in allocators:
            outputs[tname] = alloc.result()
        return outputs

    def generate(self, input_ids: Any, attention_mask: Any, new_tokens: int) -> Any:
        torch = self.torch
        ids = input_ids.cuda()
        mask = attention_mask.cuda().long()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._run(PREFILL_FILE, {"input_ids": ids, "attention_mask": mask, "position_ids": pos})
        tokens = []
        for step in range(new_tokens):
            nxt = out["logits"][:, -1].argmax(-1, keepdim=True)
            tokens.append(nxt)
            if step == new_tokens - 1:
                break
            pos = mask.sum(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
            feeds = {"input_ids": nxt, "attention_mask": mask, "position_ids": pos}
            for i in range(self.num_layers):
                feeds[f"past_key_values.{i}.key"] = out[f"present.{i}.key"]
                feeds[f"past_key_values.{i}.value"] = out[f"present.{i}.value"]
            out = self._run(DECODE_FILE, feeds)
        return torch.cat(tokens, 1).cpu()


def _torch_dtype(trt_dtype: Any) -> Any:
    import tensorrt as trt
    import torch

    return {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int64: torch.int64,
        trt.int32: torch.int32,
        trt.bool: torch.bool,
    }[trt_dtype]


def _output_allocator_base() -> type:
    import tensorrt as trt

    return trt.IOutputAllocator


class _TorchOutputAllocator:
    """IOutputAllocator backed by torch CUDA memory (created lazily to subclass the TRT type)."""

    def __new__(cls, dtype: Any):
        base = _output_allocator_base()

        class Impl(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                super().__init__()
                self.buffer = None
                self.shape = None
                self.dtype = dtype

            def reallocate_output(self, name, memory, size, alignment):  # noqa: ARG002
                import torch

                self.buffer = torch.empty(max(int(size), 1), dtype=torch.uint8, device="cuda")
                return self.buffer.data_ptr()

            def notify_shape(self, name, shape):  # noqa: ARG002
                self.shape = tuple(shape)

            def result(self):
                import math

                n = math.prod(self.shape) if self.shape else 0
                return self.buffer.view(self.dtype)[:n].view(self.shape)

        return Impl()
