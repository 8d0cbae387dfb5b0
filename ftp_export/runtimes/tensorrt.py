"""TensorRT: the two engines of a ``--target trt`` export, torch CUDA tensors as I/O buffers.

Only usable where ``import tensorrt`` works; never run on this project's machines (TensorRT
cannot be installed there). Written against the public TensorRT 10 Python API:
``IExecutionContext.set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3`` and an
``IOutputAllocator`` for the decode graph's data-dependent routing rows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftp_export.errors import FTPError
from ftp_export.graph_io import GraphSignature
from ftp_export.runtimes.base import Runtime


class TensorrtRuntime(Runtime):
    """The prefill and decode engines (``<stem>.engine``) in ``folder``, with the plugin library."""

    name = "tensorrt"

    def __init__(self, folder: Path, signatures: dict[str, GraphSignature]) -> None:
        import tensorrt as trt

        from ftp_export.trt.engine import find_plugin_library

        super().__init__(signatures)
        lib = find_plugin_library(folder)
        if lib is not None:
            trt.get_plugin_registry().load_library(str(lib))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {g: runtime.deserialize_cuda_engine((folder / f"{s.stem}.engine").read_bytes()) for g, s in signatures.items()}
        self.contexts = {g: eng.create_execution_context() for g, eng in self.engines.items()}
        self.allocators: dict[tuple[str, str], Any] = {}
        self.trt = trt

    def feed(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).cuda()

    def to_numpy(self, value: torch.Tensor) -> np.ndarray:
        return value.detach().float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.trt.__version__, "device": torch.cuda.get_device_name()}

    def run(self, graph: str, feeds: dict[str, Any]) -> dict[str, Any]:
        trt = self.trt
        engine, ctx = self.engines[graph], self.contexts[graph]
        stream = torch.cuda.current_stream()
        outputs: dict[str, Any] = {}
        dynamic = []
        for name, tensor in feeds.items():
            ctx.set_input_shape(name, tuple(tensor.shape))
            ctx.set_tensor_address(name, tensor.data_ptr())
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
                continue
            shape = tuple(ctx.get_tensor_shape(name))
            dtype = _torch_dtype(engine.get_tensor_dtype(name))
            if any(d < 0 for d in shape):  # data-dependent (decode routing rows)
                alloc = self.allocators.setdefault((graph, name), _torch_output_allocator(dtype))
                ctx.set_output_allocator(name, alloc)
                dynamic.append((name, alloc))
                continue
            buf = torch.empty(shape, dtype=dtype, device="cuda")
            ctx.set_tensor_address(name, buf.data_ptr())
            outputs[name] = buf
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise FTPError(f"TensorRT execution of the {graph} engine failed")
        stream.synchronize()
        for name, alloc in dynamic:
            outputs[name] = alloc.result()
        return outputs


def _torch_dtype(trt_dtype: Any) -> torch.dtype:
    import tensorrt as trt

    return {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int64: torch.int64,
        trt.int32: torch.int32,
        trt.bool: torch.bool,
    }[trt_dtype]


class OutputBuffer:
    """The memory logic of the output allocator, free of TensorRT so it can be tested anywhere.

    TensorRT may ask for a positive byte size even for an empty tensor, and the size need not be
    a multiple of the element size: the buffer holds ceil(size / itemsize) elements (at least
    one), grows only when a request exceeds it (one upper-bound buffer reused across steps), and
    the result is sliced to the notified shape (so N = 0 rows gives an empty tensor)."""

    def __init__(self, dtype: torch.dtype, device: str | torch.device = "cuda") -> None:
        self.dtype = dtype
        self.device = torch.device(device)
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        self.buffer = torch.empty(0, dtype=dtype, device=self.device)
        self.shape: tuple[int, ...] = (0,)

    def reserve(self, size_bytes: int) -> int:
        """Room for ``size_bytes``; returns the buffer's address."""
        elements = max(1, math.ceil(int(size_bytes) / self.itemsize))
        if self.buffer.numel() < elements:
            self.buffer = torch.empty(elements, dtype=self.dtype, device=self.device)
        return self.buffer.data_ptr()

    def set_shape(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(int(d) for d in shape)

    def result(self) -> torch.Tensor:
        need = math.prod(self.shape)
        if need > self.buffer.numel():
            raise FTPError(f"TensorRT reported output shape {self.shape} but allocated only {self.buffer.numel()} elements")
        return self.buffer[:need].view(self.shape)


def _torch_output_allocator(dtype: torch.dtype) -> Any:
    """An IOutputAllocator backed by one growing torch CUDA buffer (:class:`OutputBuffer`)."""
    import tensorrt as trt

    class Allocator(trt.IOutputAllocator):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.memory = OutputBuffer(dtype, "cuda")

        def reallocate_output_async(self, name, memory, size, alignment, stream):  # noqa: ARG002
            return self.memory.reserve(size)

        def reallocate_output(self, name, memory, size, alignment):  # TensorRT < 10 fallback
            return self.memory.reserve(size)

        def notify_shape(self, name, shape):  # noqa: ARG002
            self.memory.set_shape(tuple(shape))

        def result(self) -> torch.Tensor:
            return self.memory.result()

    return Allocator()
