"""``--kv-cache append``: the graph's ``present`` holds only the call's K/V, the app keeps the cache
in a buffer it feeds back whole (masked tail), and nothing in the graph copies the cache. The
graph must pass the same parity as the concat layout, route identically, read no value from the
masked tail, and refuse what it cannot serve."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from ftp_export.architectures import ModelRef, load_model
from ftp_export.calibration.thresholds import calibrate_decode_thresholds
from ftp_export.cli import main
from ftp_export.errors import FTPError
from ftp_export.export.onnx_export import export_onnx
from ftp_export.export.parity import run_parity
from ftp_export.graph_io import MERGED, SEQUENCE, TOTAL
from ftp_export.routed.attention import attend
from ftp_export.routed.cache import CachedKV, TensorCache
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.runtimes.kv_buffer import AppendBuffer
from ftp_export.runtimes.ort import OrtRuntime
from ftp_export.schedule import new_schedule, uniform_sparsity
from tests.helpers import ATOL, assert_parity, build_tiny, parity_cases


@pytest.fixture(scope="module")
def layouts(tiny_model, tmp_path_factory):
    """One routed model (s = 0.4, decode thresholds calibrated so decode skips) as the single
    graph in both cache layouts."""
    n = tiny_model.config.num_hidden_layers
    routed = RoutedCausalLM(tiny_model, new_schedule(tiny_model.config, uniform_sparsity(n, 0.4))).eval()
    stream = torch.randint(3, 259, (2000,), generator=torch.Generator().manual_seed(2))
    calibrate_decode_thresholds(routed, stream, max_context=64, windows=8)
    graphs = {kv: export_onnx(routed, tmp_path_factory.mktemp(kv), logits="all", merged=True, kv_cache=kv) for kv in ("concat", "append")}
    runtimes = {kv: OrtRuntime(g.files, g.signatures) for kv, g in graphs.items()}
    return routed, graphs, runtimes


def test_append_graph_passes_parity_and_decodes_as_the_concat_graph(layouts):
    routed, _, runtimes = layouts
    report = run_parity(routed, runtimes["append"], parity_cases(), atol=ATOL)
    assert_parity(report)
    assert report["decode_skip_rate"]["blocks"], "decode blocks must really route in this case"
    assert not runtimes["append"].shape_problems
    for case in parity_cases(new_tokens=6):
        a = runtimes["append"].generate(case.input_ids.numpy(), case.attention_mask.numpy(), 6)
        c = runtimes["concat"].generate(case.input_ids.numpy(), case.attention_mask.numpy(), 6)
        for la, lc in zip(a.logits, c.logits):
            np.testing.assert_allclose(la, lc, atol=1e-5, rtol=0)
        for ra, rc in zip(a.routing, c.routing):
            assert ra.keys() == rc.keys() and all(np.array_equal(ra[k], rc[k]) for k in ra)
        assert np.array_equal(a.tokens, c.tokens)


def _prefill_buffer(runtime, ids, capacity):
    mask = np.ones_like(ids)
    pos = np.tile(np.arange(ids.shape[1]), (ids.shape[0], 1))
    outs = runtime.run("prefill", {"input_ids": ids, "attention_mask": mask, "position_ids": pos})
    return AppendBuffer(runtime.signatures["prefill"].past_feeds(outs), mask, capacity)


def test_present_is_the_calls_kv_and_the_masked_tail_is_never_read(layouts):
    _, graphs, runtimes = layouts
    rt = runtimes["append"]
    ids = np.random.default_rng(0).integers(3, 259, (2, 13)).astype(np.int64)
    step = {"input_ids": ids[:, 12:], "position_ids": np.full((2, 1), 12, dtype=np.int64)}
    exact = _prefill_buffer(rt, ids[:, :12], 12)
    roomy = _prefill_buffer(rt, ids[:, :12], 40)
    for buf in roomy.buffers.values():  # stale finite values past the filled positions: masked, so unread
        buf[:, :, 12:] = np.random.default_rng(1).normal(0, 50, buf[:, :, 12:].shape)
    one = rt.run("decode", {**step, **exact.feeds(np.ones((2, 1), np.int64))})
    two = rt.run("decode", {**step, **roomy.feeds(np.ones((2, 1), np.int64))})
    np.testing.assert_allclose(one["logits"], two["logits"], atol=1e-5, rtol=0)
    assert all(np.array_equal(one[k], two[k]) for k in one if k.startswith("routing."))
    concat = runtimes["concat"].run("decode", {**step, **exact.feeds(np.ones((2, 1), np.int64))})
    for name in rt.signatures["decode"].present:
        assert one[name].shape[2] == 1  # only the new token
        np.testing.assert_allclose(one[name], concat[name][:, :, -1:], atol=1e-6, rtol=0)
    graph = onnx.load(str(graphs["append"].files[MERGED]), load_external_data=False)
    dims = {o.name: [d.dim_param for d in o.type.tensor_type.shape.dim] for o in graph.graph.output}
    assert dims["present.0.key"][2] == SEQUENCE
    assert graphs["append"].signatures[MERGED].manifest_entry("model.onnx")["kv_cache"] == "append"
    concat_dims = {o.name: [d.dim_param for d in o.type.tensor_type.shape.dim] for o in onnx.load(
        str(graphs["concat"].files[MERGED]), load_external_data=False).graph.output}
    assert concat_dims["present.0.key"][2] == TOTAL


def test_append_buffer_grows_rewinds_and_rejects_a_concat_present():
    past = {"past_key_values.0.key": np.arange(2 * 1 * 3 * 2, dtype=np.float32).reshape(2, 1, 3, 2)}
    buf = AppendBuffer(past, np.array([[0, 1, 1], [1, 1, 1]]), capacity=4)
    buf.append({"past_key_values.0.key": np.full((2, 1, 1, 2), 7.0, np.float32)}, np.ones((2, 1), np.int64))
    feeds = buf.feeds(np.ones((2, 2), np.int64))  # 4 filled + 2 new > capacity 4: doubled, content kept
    assert buf.capacity == 8 and feeds["past_key_values.0.key"].shape == (2, 1, 8, 2)
    assert np.array_equal(feeds["past_key_values.0.key"][:, :, :3], past["past_key_values.0.key"])
    assert (feeds["past_key_values.0.key"][:, :, 3] == 7).all()
    assert feeds["attention_mask"].tolist() == [[0, 1, 1, 1, 0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0, 1, 1]]
    buf.rewind(3)
    assert buf.length == 3 and buf.mask[:, 3:].sum() == 0
    with pytest.raises(ValueError, match="concat-layout"):
        buf.append({"past_key_values.0.key": np.zeros((2, 1, 4, 2), np.float32)}, np.ones((2, 1), np.int64))
    with pytest.raises(ValueError, match="expected"):
        AppendBuffer({"past_key_values.0.key": np.zeros((2, 1, 5, 2), np.float32)}, np.ones((2, 3)), 8)


def test_split_cache_attention_equals_the_concatenated_one():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 3, 8, generator=g)
    pk, pv, nk, nv = (torch.randn(2, 2, n, 8, generator=g) for n in (9, 9, 3, 3))
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[0, :4] = False
    q_index = torch.arange(9, 12).expand(2, 3)
    allowed = valid[:, None, :] & (torch.arange(12) <= q_index[..., None])
    for own in (False, True):
        joined = attend(q, torch.cat([pk, nk], 2), torch.cat([pv, nv], 2), allowed, 0.3, q_index, own=own)
        split = attend(q, CachedKV(pk, nk), CachedKV(pv, nv), allowed, 0.3, q_index, own=own)
        for a, b in zip(joined, split):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    cache = TensorCache([(pk, pv)], "append")
    k, v = cache.update(nk, nv, 0)
    assert isinstance(k, CachedKV) and cache.present[0][0] is nk
    with pytest.raises(ValueError, match="kv_cache"):
        TensorCache(None, "inplace")


def test_append_refuses_sliding_windows_and_other_targets(tmp_path, capsys):
    windowed = load_model(ModelRef("mistral", str(build_tiny(tmp_path / "mistral", "mistral", sliding_window=6))))
    routed = RoutedCausalLM(windowed, new_schedule(windowed.config, [0.0] * windowed.config.num_hidden_layers))
    with pytest.raises(FTPError, match="sliding-window"):
        export_onnx(routed, tmp_path, kv_cache="append")
    assert main(["--target", "trt", "--kv-cache", "append", "-o", str(tmp_path / "t")]) == 2
    assert "--kv-cache append is a --target onnx layout" in capsys.readouterr().err


def test_cli_writes_the_append_layout_in_the_manifest_and_no_genai_config(tmp_path, capsys):
    out = tmp_path / "append"
    assert main(["--kv-cache", "append", "-o", str(out), "--no-parity"]) == 0  # the embedded default model; parity: above
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kv_cache"] == "append" and manifest["graphs"][MERGED]["kv_cache"] == "append"
    assert not (out / "genai_config.json").exists()
    assert "onnxruntime-genai needs --kv-cache concat" in capsys.readouterr().out
