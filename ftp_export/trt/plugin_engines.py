"""GPU check of the four ``ftp`` plugins inside TensorRT (issue 19; gpu_check.sh stage ``plugin-engines``).
Per node a one-node ONNX graph with the node's real I/O types (int32 flags and size tensor, int64
indices/rows) and dynamic dims; adversarial cases (N = 0, T = 1, K = T, batch 64, tied scores, float16)
run in onnxruntime with the reference ops and, where ``import tensorrt`` works, in a strongly typed
engine built from that graph with ``libftp_plugins.so``; outputs must be equal bit for bit.

    python -m ftp_export.trt.plugin_engines --lib build/libftp_plugins.so --out build/plugin_engines
Exit status: 0 all equal, 1 a mismatch or error, 77 (gpu_check's SKIP) where TensorRT does not import.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftp_export.errors import FTPError
from ftp_export.export.onnx_export import OPSET
from ftp_export.trt.custom_ops import DOMAIN, PLUGIN_VERSION, register_onnx_schemas

# symbolic (dynamic) dims by I/O name; the I/O names and types come from custom_ops' schemas
DIMS = {"hidden": "BTD", "residual": "BTD", "out": "BTD", "scores": "BT", "valid": "BT", "indices": "BK", "active": "BK",
        "gathered": "BKD", "rows_data": "ND", "rows": "N", "count": ""}
NODE_DIMS = {"FtpTopKScatter": {"rows": "BKD"}, "FtpThresholdGather": {"gathered": "ND"}}
SIZE_OUTPUTS = ("count",)  # no engine output (as in the exported graph): N is checked as gathered's / rows' shape
_alive: dict[str, Any] = {}  # the logger, the runtime and the loaded plugin libraries


@dataclass
class Case:
    node: str
    name: str
    dtype: str  # hidden-state dtype: float32 / float16
    attrs: dict[str, Any]
    feeds: dict[str, np.ndarray]


def one_node_model(node: str, case: Case) -> Any:
    """A one-node ONNX model of ``node`` (domain ``ftp``, opset :data:`OPSET`), dynamic dims."""
    import onnx
    from onnx import helper

    register_onnx_schemas()
    schema = onnx.defs.get_schema(node, 1, DOMAIN)
    types = {"T": case.dtype, "tensor(float)": "float32", "tensor(int32)": "int32", "tensor(int64)": "int64"}

    def value(p: Any) -> Any:
        return helper.make_tensor_value_info(p.name, helper.np_dtype_to_tensor_dtype(np.dtype(types[p.type_str])), list(dims[p.name]))

    ins, outs, dims = schema.inputs, schema.outputs, {**DIMS, **NODE_DIMS.get(node, {})}
    n = helper.make_node(node, [i.name for i in ins], [o.name for o in outs], name=node, domain=DOMAIN,
                         plugin_version=PLUGIN_VERSION, plugin_namespace="", **case.attrs)
    graph = helper.make_graph([n], f"one_{node}", [value(i) for i in ins], [value(o) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
                              producer_name="ftp_export.trt.plugin_engines")
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    return model


def _hidden(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    h = rng.standard_normal(shape).astype(dtype)
    h.reshape(-1)[:: 7] = -0.0  # signed zeros must survive the copy
    h.reshape(-1)[1:: 11] = np.inf
    return h


def _gather_feeds(rng: np.random.Generator, dtype: str, b: int, t: int, d: int, ties: bool = False) -> dict[str, np.ndarray]:
    scores = (rng.integers(-2, 3, (b, t)) * 0.5 if ties else rng.standard_normal((b, t))).astype(np.float32)
    if ties and t > 2:
        scores[0, :2], scores[-1, -1] = (-0.0, 0.0), np.inf  # signed zeros tie; +inf is clamped to 256
    valid = (rng.random((b, t)) < 0.8).astype(np.int32)
    valid[0] = 1
    if b > 2:  # a row without a valid token (k_b = 0); any non-zero flag reads as true
        valid[1], valid[2, 0] = 0, 5
    return {"hidden": _hidden(rng, (b, t, d), dtype), "scores": scores, "valid": valid}


def _topk_scatter_feeds(rng, dtype, b, t, d, k, active=None):
    indices = np.sort(np.stack([rng.permutation(t)[:k] for _ in range(b)]), axis=1).astype(np.int64)
    act = (rng.random((b, k)) < 0.7).astype(np.int32) if active is None else np.full((b, k), active, np.int32)
    return {"residual": _hidden(rng, (b, t, d), dtype), "rows": _hidden(rng, (b, k, d), dtype), "indices": indices, "active": act}


def _row_scatter_feeds(rng, dtype, b, t, d, n):
    rows = rng.permutation(b * t)[:n].astype(np.int64)
    return {"residual": _hidden(rng, (b, t, d), dtype), "rows_data": _hidden(rng, (n, d), dtype), "rows": rows}


def cases(node: str | None = None) -> list[Case]:
    """Deterministic cases of ``node`` (default all): (name, attributes, (B, T, D, ties or K/N, active))."""
    def q(r: float) -> dict[str, int]:
        return {"keep_q16": round(r * 65536)}

    spec = {
        "FtpTopKGather": (_gather_feeds, [("basic", q(0.6), (3, 10, 5)), ("ties", q(0.4), (4, 9, 4, True)),
                           ("T1", q(0.4), (4, 1, 3)), ("K=T", q(1.0), (3, 6, 8, True)), ("batch64", q(0.5), (64, 16, 8))]),
        "FtpTopKScatter": (_topk_scatter_feeds, [("basic", {}, (3, 10, 5, 6)), ("none-active", {}, (2, 7, 3, 3, 0)),
                            ("T1", {}, (4, 1, 3, 1, 7)), ("K=T", {}, (3, 6, 8, 6)), ("batch64", {}, (64, 16, 8, 8))]),
        "FtpThresholdGather": (_gather_feeds, [
            ("basic", {"threshold": 0.25}, (3, 10, 5)), ("above-all(N=0)", {"threshold": 1e30}, (3, 10, 5)),
            ("ties-at-threshold", {"threshold": 0.5}, (4, 9, 4, True)), ("T1", {"threshold": 0.0}, (4, 1, 3)),
            ("below-all", {"threshold": -1e30}, (3, 6, 8, True)), ("batch64", {"threshold": 0.0}, (64, 1, 65))]),
        "FtpRowScatter": (_row_scatter_feeds, [("basic", {}, (3, 10, 5, 7)), ("N=0", {}, (3, 10, 5, 0)),
                           ("T1", {}, (4, 1, 3, 2)), ("all-rows", {}, (3, 6, 8, 18)), ("batch64", {}, (64, 1, 65, 40))]),
    }
    rng = np.random.default_rng(19)
    every = [Case(n, name + tag, dtype, attrs, make(rng, dtype, *args))
             for dtype, tag in (("float32", ""), ("float16", "-fp16")) for n, (make, table) in spec.items()
             for name, attrs, args in table]
    return [c for c in every if node in (None, c.node)]


def reference_outputs(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``model`` in onnxruntime (CPU) with the reference ops."""
    import onnx

    from ftp_export.trt.reference_ops import reference_session

    with tempfile.TemporaryDirectory(prefix="ftp-one-node-") as tmp:
        onnx.save(model, str(path := Path(tmp) / "model.onnx"))
        sess = reference_session(path)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def build_engine(model: Any, feed_sets: list[dict[str, np.ndarray]], lib: Path) -> Any:
    """A strongly typed engine of ``model`` (``lib`` loaded), one profile covering every feed set's shapes."""
    import tensorrt as trt

    from ftp_export.trt.engine import strongly_typed_flags

    if "logger" not in _alive:  # one logger and runtime for the process; they outlive the engines
        _alive.update(logger=(logger := trt.Logger(trt.Logger.WARNING)), runtime=trt.Runtime(logger))
    logger = _alive["logger"]
    if str(lib) not in _alive:  # once per process: a second load would register the creators again
        _alive[str(lib)] = trt.get_plugin_registry().load_library(str(lib))
    model = type(model).FromString(model.SerializeToString())
    for out in [o for o in model.graph.output if o.name in SIZE_OUTPUTS]:
        model.graph.output.remove(out)
    network = (builder := trt.Builder(logger)).create_network(strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        raise FTPError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config, profile = builder.create_builder_config(), builder.create_optimization_profile()
    for name in feed_sets[0]:  # the network inputs; opt = max
        shapes = np.array([f[name].shape for f in feed_sets])
        profile.set_shape(name, tuple(map(int, shapes.min(0))), *[tuple(map(int, shapes.max(0)))] * 2)
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise FTPError(f"TensorRT failed to build the one-node engine of {model.graph.node[0].op_type}")
    return _alive["runtime"].deserialize_cuda_engine(blob)


def run_engine(engine: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``engine`` on ``feeds`` (torch CUDA buffers, runtimes.tensorrt's output allocator); numpy outputs."""
    import tensorrt as trt
    import torch

    from ftp_export.runtimes.tensorrt import _torch_dtype, _torch_output_allocator

    ctx = engine.create_execution_context()
    keep, outputs, dynamic = [], {}, []

    def device(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, int]:
        n = int(np.prod(shape))  # the address of a 1-element buffer: an empty tensor's data_ptr() is 0
        buf = torch.empty(max(1, n), dtype=dtype, device="cuda")
        return buf[:n].view(shape), buf.data_ptr()

    for name, array in feeds.items():
        host = torch.from_numpy(np.ascontiguousarray(array))
        dev, addr = device(tuple(host.shape), host.dtype)
        keep.append(dev.copy_(host))
        ctx.set_input_shape(name, tuple(array.shape))
        ctx.set_tensor_address(name, addr)
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
            continue
        shape, dtype = tuple(ctx.get_tensor_shape(name)), _torch_dtype(engine.get_tensor_dtype(name))
        if any(d < 0 for d in shape):  # data-dependent (N rows)
            ctx.set_output_allocator(name, alloc := _torch_output_allocator(dtype))
            dynamic.append((name, alloc))
            continue
        outputs[name], addr = device(shape, dtype)
        ctx.set_tensor_address(name, addr)
    stream = torch.cuda.current_stream()
    if not ctx.execute_async_v3(stream.cuda_stream):
        raise FTPError("TensorRT execution of a one-node engine failed")
    stream.synchronize()
    outputs.update({name: alloc.result() for name, alloc in dynamic})
    return {k: v.cpu().numpy() for k, v in outputs.items()}


def engine_outputs(model: Any, feeds: dict[str, np.ndarray], lib: Path) -> dict[str, np.ndarray]:
    """Build a one-node engine for exactly ``feeds``' shapes and run it (needs TensorRT and a GPU)."""
    return run_engine(build_engine(model, [feeds], lib), feeds)


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> list[str]:
    """Output names that differ: dtype, shape or any bit (a size tensor only where ``got`` has it)."""
    return [k for k, r in ref.items() if (k not in SIZE_OUTPUTS or k in got) and (
        k not in got or got[k].dtype != r.dtype or got[k].shape != r.shape or got[k].tobytes() != r.tobytes())]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftp_export.trt.plugin_engines", description=__doc__.split("\n\n")[0])
    p.add_argument("--lib", default="build/libftp_plugins.so", help="libftp_plugins.so built from plugins/")
    p.add_argument("--out", help="folder for plugin_engines.json")
    a = p.parse_args(argv)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        print("SKIP: tensorrt not importable")
        return 77  # gpu_check's SKIP
    if not (lib := Path(a.lib)).is_file():
        print(f"FAIL: --lib {lib}: not found (build plugins/ with CMake first)")
        return 1
    every, engines, rows = cases(), {}, []
    for c in every:
        model, key = one_node_model(c.node, c), (c.node, c.dtype, json.dumps(c.attrs, sort_keys=True))
        row = {"node": c.node, "case": c.name, "status": "ERROR", "differs": []}
        try:  # one engine per node, dtype and attributes (keep_q16 / threshold are build-time plugin fields)
            if key not in engines:
                same = [x.feeds for x in every if (x.node, x.dtype, x.attrs) == (c.node, c.dtype, c.attrs)]
                engines[key] = build_engine(model, same, lib)
            row["differs"] = compare(reference_outputs(model, c.feeds), run_engine(engines[key], c.feeds))
            row["status"] = "FAIL" if row["differs"] else "PASS"
        except Exception as e:  # noqa: BLE001 - a failed build or run fails this row, not the check
            row["error"] = f"{type(e).__name__}: {e}"
        rows.append(row)
    print(f"{'node':<20} {'case':<26} {'status':<6} detail")
    for r in rows:
        print(f"{r['node']:<20} {r['case']:<26} {r['status']:<6} {r.get('error') or ','.join(r['differs'])}")
    failed = sum(r["status"] != "PASS" for r in rows)
    print(f"plugin engines: {len(rows) - failed}/{len(rows)} equal to the reference ops (TensorRT {tensorrt.__version__})")
    if a.out:
        (out := Path(a.out)).mkdir(parents=True, exist_ok=True)
        (out / "plugin_engines.json").write_text(json.dumps({"tensorrt": tensorrt.__version__, "rows": rows}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
