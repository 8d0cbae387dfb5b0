"""``--target onnx`` writes one decoder graph, ``model.onnx``: top-k routing when the past is empty,
threshold routing otherwise. It must be the two graphs' equal to the last bit (same parity, same
routing, same logits), store each weight once, run without onnxruntime warnings, and generate in
onnxruntime-genai from the export folder as it is."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from ftp_export.calibration.thresholds import calibrate_decode_thresholds
from ftp_export.export.onnx_export import export_onnx
from ftp_export.export.parity import run_parity
from ftp_export.graph_io import MERGED, PAST, SEQUENCE, TOTAL
from ftp_export.routed.generation import greedy_generate
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.runtimes.ort import OrtRuntime, ort_session
from ftp_export.schedule import new_schedule, uniform_sparsity
from tests.helpers import ATOL, assert_parity, parity_cases


@pytest.fixture(scope="module")
def both_layouts(tiny_model, tmp_path_factory):
    """The same routed model (sparsity 0.4, decode thresholds calibrated so decode really skips)
    exported as the prefill/decode pair and as the single graph, every position's logits."""
    n = tiny_model.config.num_hidden_layers
    routed = RoutedCausalLM(tiny_model, new_schedule(tiny_model.config, uniform_sparsity(n, 0.4))).eval()
    stream = torch.randint(3, 259, (2000,), generator=torch.Generator().manual_seed(2))
    calibrate_decode_thresholds(routed, stream, max_context=64, windows=8)
    pair = export_onnx(routed, tmp_path_factory.mktemp("pair"), logits="all")
    single = export_onnx(routed, tmp_path_factory.mktemp("single"), logits="all", merged=True)
    return routed, pair, single


def test_single_graph_passes_the_same_parity_as_the_two_graphs(both_layouts, capfd):
    routed, pair, single = both_layouts
    assert set(single.files) == {MERGED} and single.files[MERGED].name == "model.onnx"
    capfd.readouterr()
    warn = lambda path, providers: ort_session(path, providers, log_level=2)  # noqa: E731
    one, two = OrtRuntime(single.files, single.signatures, session_factory=warn), OrtRuntime(pair.files, pair.signatures)
    report = run_parity(routed, one, parity_cases(), atol=ATOL)
    assert_parity(report)  # prefill top-k and decode threshold routing identical to PyTorch's
    assert report["decode_skip_rate"]["blocks"], "decode blocks must really route in this case"
    assert "[W:" not in capfd.readouterr().err  # onnxruntime warned of nothing (e.g. a declared shape)
    for case in parity_cases(new_tokens=4):
        a = one.generate(case.input_ids.numpy(), case.attention_mask.numpy(), 4)
        b = two.generate(case.input_ids.numpy(), case.attention_mask.numpy(), 4)
        for la, lb in zip(a.logits, b.logits):
            assert np.array_equal(la, lb)  # the branches are the traced graphs as they are
        assert all(ra.keys() == rb.keys() and all(np.array_equal(ra[k], rb[k]) for k in ra) for ra, rb in zip(a.routing, b.routing))
        assert np.array_equal(a.tokens, b.tokens)


def test_the_branch_that_does_not_route_a_block_returns_its_outputs_empty(both_layouts):
    routed, _, single = both_layouts
    runtime = OrtRuntime(single.files, single.signatures)
    case = parity_cases(new_tokens=2)[0]
    ids, mask = case.input_ids.numpy(), case.attention_mask.numpy()
    pos = np.clip(np.cumsum(mask, -1) - 1, 0, None)
    prefill = runtime.run("prefill", {"input_ids": ids, "attention_mask": mask, "position_ids": pos})
    topk = [b for b in range(len(routed.layers)) if routed.block_mode(b, "prefill") == "topk"]
    threshold = [b for b in range(len(routed.layers)) if routed.block_mode(b, "decode") == "threshold"]
    assert topk and threshold
    for b in topk:
        assert prefill[f"routing.{b}.indices"].shape[0] == ids.shape[0] and prefill[f"routing.{b}.indices"].shape[1] > 0
    for b in threshold:
        assert prefill[f"routing.{b}.rows"].shape == (0,)
    past = single.signatures["prefill"].past_feeds(prefill)
    nxt = prefill["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
    step = runtime.run("decode", {"input_ids": nxt, "attention_mask": np.concatenate([mask, np.ones_like(nxt)], 1),
                                  "position_ids": mask.sum(-1, keepdims=True), **past})
    for b in topk:
        assert step[f"routing.{b}.indices"].shape == (ids.shape[0], 0) and step[f"routing.{b}.active"].shape == (ids.shape[0], 0)


def test_single_graph_stores_each_weight_once_and_names_dims_as_optimum(both_layouts):
    _, pair, single = both_layouts
    model = onnx.load(str(single.files[MERGED]))
    assert [n.op_type for n in model.graph.node].count("If") == 1
    branches = {a.name: a.g for n in model.graph.node if n.op_type == "If" for a in n.attribute}
    assert set(branches) == {"then_branch", "else_branch"} and all(not g.initializer for g in branches.values())
    prefill = onnx.load(str(pair.prefill))
    weights = {t.name: t for t in prefill.graph.initializer if np.prod(t.dims) >= 1024}
    merged = {t.name for t in model.graph.initializer}
    assert weights and set(weights) <= merged  # the prefill's weights, at their names, in the outer graph
    assert not [t for t in model.graph.initializer if t.name.startswith("decode/") and np.prod(t.dims) >= 1024]  # not twice
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in (*model.graph.input, *model.graph.output)}
    assert dims["input_ids"] == ["batch_size", SEQUENCE] and dims["attention_mask"] == ["batch_size", TOTAL]
    assert all(v[2] == PAST for k, v in dims.items() if k.startswith("past_key_values."))
    assert all(v[2] == TOTAL for k, v in dims.items() if k.startswith("present."))
    assert dims["logits"][:2] == ["batch_size", SEQUENCE]


def test_onnxruntime_genai_generates_the_routed_models_tokens(default_export, default_model):
    """onnxruntime-genai loads the default export folder unmodified (genai_config.json written by the
    export) and its greedy tokens are the PyTorch routed model's, for every parity prompt at batch 1
    and for a batch of equal-length prompts. (onnxruntime-genai 0.18 does not mask pad tokens it is
    given, so a left-padded batch cannot be compared.)"""
    og = pytest.importorskip("onnxruntime_genai")
    from ftp_export.architectures import load_tokenizer, resolve_model
    from ftp_export.export.job import DEFAULT_SCHEDULE, PARITY_PROMPTS
    from ftp_export.schedule import load_schedule

    rc, out, _ = default_export("onnx", "shipped")
    assert rc == 0 and (out / "genai_config.json").is_file()
    routed = RoutedCausalLM(default_model, load_schedule(DEFAULT_SCHEDULE)).eval()
    tokenizer = load_tokenizer(resolve_model(None))
    model = og.Model(str(out))
    new = 8

    def genai_tokens(ids: np.ndarray) -> np.ndarray:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=ids.shape[1] + new, do_sample=False, batch_size=ids.shape[0])
        gen = og.Generator(model, params)
        gen.append_tokens(ids.astype(np.int32))
        steps = []
        while not gen.is_done():
            gen.generate_next_token()
            steps.append(np.array(gen.get_next_tokens()))
        return np.stack(steps, 1)

    prompts = [tokenizer(p)["input_ids"] for p in PARITY_PROMPTS]
    shortest = min(map(len, prompts))
    batches = [[p] for p in prompts] + [[p[:shortest] for p in prompts]]
    for batch in batches:
        ids = torch.tensor(batch)
        want = greedy_generate(routed, ids, torch.ones_like(ids), new).tokens.numpy()
        got = genai_tokens(ids.numpy())
        assert np.array_equal(got, want), (batch, got, want)
