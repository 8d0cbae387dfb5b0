"""ftp_export.trt.plugin_engines, the one-node engine check of gpu_check.sh (issue 19), on the CPU: its
one-node models are valid ONNX with the plugins' real I/O types and run in onnxruntime with the
reference ops for every case; the reference outputs match an independent computation; the entry
point skips (77) where TensorRT is absent. The engine path itself needs TensorRT and a GPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ftp_export.routing.selection import slot_count, topk_select
from ftp_export.trt import plugin_engines as pe
from ftp_export.trt.custom_ops import NODES

pytest.importorskip("onnxruntime_extensions")
CASES = pe.cases()
ELEM = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT32: "int32",
        onnx.TensorProto.INT64: "int64"}
# the plugins' boundary types (plugins/README.md); "T" = the hidden-state dtype
IO_TYPES = {
    "FtpTopKGather": (["T", "float32", "int32"], ["T", "int64", "int32"]),
    "FtpTopKScatter": (["T", "T", "int64", "int32"], ["T"]),
    "FtpThresholdGather": (["T", "float32", "int32"], ["T", "int64", "int32"]),
    "FtpRowScatter": (["T", "T", "int64"], ["T"]),
}


def _case(node: str, name: str) -> pe.Case:
    return next(c for c in CASES if c.node == node and c.name == name)


def test_every_node_has_the_required_cases():
    names = {(c.node, c.name) for c in CASES}
    assert {c.node for c in CASES} == set(NODES)
    for node in NODES:
        assert {(node, "T1"), (node, "batch64"), (node, "T1-fp16")} <= names
    assert ("FtpTopKGather", "K=T") in names and ("FtpThresholdGather", "above-all(N=0)") in names
    assert ("FtpRowScatter", "N=0") in names and ("FtpTopKGather", "ties") in names
    assert _case("FtpTopKGather", "batch64").feeds["hidden"].shape[0] == 64
    assert np.array_equal(pe.cases()[3].feeds["scores"], CASES[3].feeds["scores"])  # deterministic


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.node}-{c.name}")
def test_one_node_model_is_valid_and_runs_with_the_reference_ops(case):
    model = pe.one_node_model(case.node, case)
    onnx.checker.check_model(model, full_check=True)
    (node,) = model.graph.node
    assert node.domain == "ftp" and node.op_type == case.node
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b""
    assert {k: attrs[k] for k in case.attrs} == pytest.approx(case.attrs)
    want_in, want_out = IO_TYPES[case.node]
    got_in = [ELEM[v.type.tensor_type.elem_type] for v in model.graph.input]
    got_out = [ELEM[v.type.tensor_type.elem_type] for v in model.graph.output]
    assert got_in == [case.dtype if t == "T" else t for t in want_in]
    assert got_out == [case.dtype if t == "T" else t for t in want_out]
    for v in model.graph.input:  # dynamic dims only
        assert all(d.dim_param and not d.dim_value for d in v.type.tensor_type.shape.dim)
    out = pe.reference_outputs(model, case.feeds)
    assert list(out) == [v.name for v in model.graph.output]
    assert [str(v.dtype) for v in out.values()] == got_out
    assert pe.compare(out, out) == []


def test_topk_gather_reference_equals_topk_select():
    for name in ("ties", "K=T", "T1", "batch64-fp16"):
        c = _case("FtpTopKGather", name)
        out = pe.reference_outputs(pe.one_node_model(c.node, c), c.feeds)
        valid = torch.from_numpy(c.feeds["valid"] != 0)
        indices, active = topk_select(torch.from_numpy(c.feeds["scores"]), valid, c.attrs["keep_q16"])
        assert np.array_equal(out["indices"], indices.numpy()) and np.array_equal(out["active"], active.numpy().astype(np.int32))
        b, t, _ = c.feeds["hidden"].shape
        assert out["indices"].shape == (b, slot_count(t, c.attrs["keep_q16"]))
        gathered = np.take_along_axis(c.feeds["hidden"], out["indices"][..., None], axis=1)
        assert gathered.tobytes() == out["gathered"].tobytes()
    assert _case("FtpTopKGather", "K=T").attrs["keep_q16"] == 65536
    assert out["indices"].shape[1] == _case("FtpTopKGather", "batch64-fp16").feeds["scores"].shape[1] // 2


def test_threshold_gather_reference_edge_cases():
    for name in ("above-all(N=0)", "above-all(N=0)-fp16"):
        c = _case("FtpThresholdGather", name)
        out = pe.reference_outputs(pe.one_node_model(c.node, c), c.feeds)
        d = c.feeds["hidden"].shape[-1]
        assert out["gathered"].shape == (0, d) and out["rows"].shape == (0,) and int(out["count"]) == 0
    c = _case("FtpThresholdGather", "ties-at-threshold")
    out = pe.reference_outputs(pe.one_node_model(c.node, c), c.feeds)
    keep = (c.feeds["valid"] != 0) & (c.feeds["scores"] >= np.float32(c.attrs["threshold"]))
    rows = np.flatnonzero(keep.reshape(-1))
    assert (c.feeds["scores"] == 0.5).any() and np.array_equal(out["rows"], rows) and int(out["count"]) == rows.size
    assert out["gathered"].tobytes() == c.feeds["hidden"].reshape(-1, c.feeds["hidden"].shape[-1])[rows].tobytes()


def test_scatter_references_equal_numpy():
    for name in ("basic", "T1", "none-active-fp16"):
        c = _case("FtpTopKScatter", name)
        f = c.feeds
        want = f["residual"].copy()
        for b, j in zip(*np.nonzero(f["active"])):
            want[b, f["indices"][b, j]] = f["rows"][b, j]
        out = pe.reference_outputs(pe.one_node_model(c.node, c), f)["out"]
        assert out.tobytes() == want.tobytes()
    for name in ("N=0", "all-rows", "batch64-fp16"):
        c = _case("FtpRowScatter", name)
        f = c.feeds
        want = f["residual"].copy().reshape(-1, f["residual"].shape[-1])
        want[f["rows"]] = f["rows_data"]
        out = pe.reference_outputs(pe.one_node_model(c.node, c), f)["out"]
        assert out.tobytes() == want.tobytes()


def test_compare_sees_a_flipped_bit_and_a_dtype_change():
    ref = {"x": np.array([0.0, 1.0], np.float32), "i": np.arange(3)}
    assert pe.compare(ref, {"x": np.array([-0.0, 1.0], np.float32), "i": np.arange(3)}) == ["x"]
    assert pe.compare(ref, {"x": ref["x"], "i": np.arange(3, dtype=np.int32)}) == ["i"]
    assert pe.compare(ref, {"x": ref["x"]}) == ["i"]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt importable here")
def test_main_skips_without_tensorrt(tmp_path, capsys):
    assert pe.main(["--lib", str(tmp_path / "missing.so"), "--out", str(tmp_path / "out")]) == 77
    assert "SKIP: tensorrt not importable" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_gpu_check_runs_the_stage_after_the_engines_are_built():
    script = (Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.sh").read_text()
    assert "stage plugin-engines" in script and "needs_tensorrt" in script.split("stage plugin-engines")[1].split("\n")[0]
    assert script.index("stage trt-engines") < script.index("stage plugin-engines")
    assert "export-trt-cuda/build/libftp_plugins.so" in script


def test_compare_ignores_a_size_tensor_only_when_the_engine_lacks_it():
    ref = {"rows": np.arange(2), "count": np.array(2, np.int32)}
    assert pe.compare(ref, {"rows": np.arange(2)}) == []
    assert pe.compare(ref, {"rows": np.arange(2), "count": np.array(3, np.int32)}) == ["count"]
    assert pe.compare(ref, {"count": ref["count"]}) == ["rows"]


class _FakeTrt:
    """The slice of the tensorrt module build_engine uses, recording what it is asked."""

    def __init__(self):
        self.loaded, self.parsed, self.shapes = [], [], {}
        fake = self

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.shapes[name] = (lo, opt, hi)

        class Parser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse(self, blob):
                fake.parsed.append(onnx.load_from_string(blob))
                return True

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.flags = flags
                return object()

            def create_builder_config(self):
                return type("Config", (), {"add_optimization_profile": lambda self, p: None})()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"engine"

        self.Builder, self.OnnxParser = Builder, Parser
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
        self.Runtime = type("Runtime", (), {"__init__": lambda self, logger: None,
                                            "deserialize_cuda_engine": lambda self, blob: ("engine", blob)})
        self.NetworkDefinitionCreationFlag = type("Flags", (), {"STRONGLY_TYPED": 1})
        self.get_plugin_registry = lambda: type("Registry", (), {"load_library": lambda s, p: fake.loaded.append(p)})()
        self.__version__ = "fake"


def test_build_engine_against_a_fake_tensorrt(monkeypatch, tmp_path):
    fake = _FakeTrt()
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", fake)
    monkeypatch.setattr(pe, "_alive", {})
    group = [c for c in pe.cases("FtpRowScatter") if c.dtype == "float32"]
    assert pe.build_engine(pe.one_node_model(group[0].node, group[0]), [c.feeds for c in group], tmp_path / "x.so") == ("engine", b"engine")
    assert fake.flags == 2 and fake.loaded == [str(tmp_path / "x.so")]
    assert fake.shapes["rows"] == ((0,), (40,), (40,)) and fake.shapes["residual"] == ((3, 1, 3), (64, 10, 65), (64, 10, 65))
    c = pe.cases("FtpThresholdGather")[0]
    pe.build_engine(pe.one_node_model(c.node, c), [c.feeds], tmp_path / "x.so")
    assert fake.loaded == [str(tmp_path / "x.so")]  # loaded once per process
    assert [o.name for o in fake.parsed[-1].graph.output] == ["gathered", "rows"]  # the size tensor stays inside


@pytest.mark.parametrize("flip", [False, True])
def test_main_with_a_fake_engine(monkeypatch, tmp_path, capsys, flip):
    fake = _FakeTrt()
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", fake)
    monkeypatch.setattr(pe, "_alive", {})
    lib = tmp_path / "libftp_plugins.so"
    lib.write_bytes(b"")
    feeds_of = {}

    def fake_run(engine, feeds):  # the reference itself, one bit flipped in one case when asked
        case = feeds_of[id(feeds)]
        out = pe.reference_outputs(pe.one_node_model(case.node, case), feeds)
        out.pop("count", None)
        if flip and case.node == "FtpTopKGather" and case.name == "ties":
            out["indices"] = out["indices"].copy()
            out["indices"][0, 0] ^= 1
        return out

    every = pe.cases()
    feeds_of.update({id(c.feeds): c for c in every})
    monkeypatch.setattr(pe, "cases", lambda node=None: every)
    monkeypatch.setattr(pe, "run_engine", fake_run)
    assert pe.main(["--lib", str(lib), "--out", str(tmp_path / "out")]) == (1 if flip else 0)
    report = json.loads((tmp_path / "out" / "plugin_engines.json").read_text())
    bad = [(r["node"], r["case"], r["differs"]) for r in report["rows"] if r["status"] != "PASS"]
    assert len(report["rows"]) == len(every) and bad == ([("FtpTopKGather", "ties", ["indices"])] if flip else [])
    assert f"{len(every) - flip}/{len(every)} equal" in capsys.readouterr().out
