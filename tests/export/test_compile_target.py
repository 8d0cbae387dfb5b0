"""--target compile specifics: the prefill is traced where every top-k slot count is generic, and a
PyTorch app can feed one package's outputs straight into the next (the packages come from the
session's default-model exports, tests/export/conftest.py)."""

from __future__ import annotations

import torch

from ftp_export.export.job import DEFAULT_SCHEDULE
from ftp_export.export.parity import pad_batch
from ftp_export.graph_io import prefill_trace_length, trace_specs
from ftp_export.routed.generation import greedy_generate
from ftp_export.routed.lowering import TorchLowering
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.selection import slot_count
from ftp_export.schedule import load_schedule
from tests.helpers import ATOL


def test_prefill_trace_length_keeps_every_slot_count_generic(default_model):
    # the shipped schedule: block 3 (s = 0.966) has K = 1 up to T = 29, so 8 tokens specialised it
    routed = RoutedCausalLM(default_model, load_schedule(DEFAULT_SCHEDULE))
    t = prefill_trace_length(routed)
    topk = [b for b in range(len(routed.layers)) if routed.block_mode(b, "prefill") == "topk"]
    assert t == 30 and slot_count(8, routed.q16[3]) == 1
    assert all(2 <= slot_count(t, routed.q16[b]) <= t - 1 for b in topk)


def test_prefill_present_feeds_decode_as_returned(default_export, default_model, drop09_schedule):
    """A PyTorch app feeds the prefill package's present tensors, as returned, into the decode package."""
    rc, out, _ = default_export("compile", "drop+0.9")
    assert rc == 0
    routed = RoutedCausalLM(default_model, load_schedule(drop09_schedule)).eval()
    n = routed.config.num_hidden_layers
    prefill = torch._inductor.aoti_load_package(str(out / "decoder_model.pt2"))
    decode = torch._inductor.aoti_load_package(str(out / "decoder_with_past_model.pt2"))
    g = torch.Generator().manual_seed(12)
    a = torch.randint(3, 250, (21,), generator=g).tolist()  # K = 3 at block 2: an 8-token trace read slot 0 only
    ids, mask = pad_batch([a, a[:9], [77] * 14], 0, side="left")
    ref = greedy_generate(routed, ids, mask, 3)
    with torch.no_grad():
        outs = prefill(ids, mask, (torch.cumsum(mask, -1) - 1).clamp(min=0))
        assert (outs[0] - ref.step_logits[0]).abs()[mask.bool()].max().item() <= ATOL
        present = list(outs[1 : 1 + 2 * n])
        assert all(t.is_contiguous() for t in present)
        for step in (1, 2):
            nxt = ref.tokens[:, step - 1 : step].contiguous()  # packages read inputs with their traced strides
            pos = mask.sum(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            outs = decode(nxt, mask, pos, *present)
            assert (outs[0] - ref.step_logits[step]).abs().max().item() <= ATOL, step
            present = list(outs[1 : 1 + 2 * n])


def _exported_prefill(model: RoutedCausalLM) -> torch.export.ExportedProgram:
    spec = trace_specs(model)["prefill"]
    with torch.no_grad():
        return torch.export.export(spec.module, spec.args, dynamic_shapes=spec.signature.dynamic_shapes())


def test_attention_op_lowering_is_one_node_per_block_with_the_graphs_results(default_model):
    """The compile target's default lowering: every attending block's prefill attention is one
    ftp_export::attention node (its kernel the eager chunked attention), none in the graph
    lowering, and both programs give the same logits, routing and cache on a padded batch (the
    cache at its valid positions: a padding query's output, which nothing reads, depends on how
    many keys its chunk spans)."""
    schedule = load_schedule(DEFAULT_SCHEDULE)
    programs = {
        op: _exported_prefill(RoutedCausalLM(default_model, schedule, lowering=TorchLowering(attention_op=op)).eval())
        for op in (True, False)
    }
    count = {op: sum(n.target is torch.ops.ftp_export.attention.default for n in p.graph.nodes) for op, p in programs.items()}
    attending = sum(not schedule.is_dropped(b) for b in range(default_model.config.num_hidden_layers))
    assert count == {True: attending, False: 0}
    g = torch.Generator().manual_seed(5)
    ids, mask = pad_batch([torch.randint(3, 250, (n,), generator=g).tolist() for n in (300, 41)], 0, side="left")
    pos = (torch.cumsum(mask, -1) - 1).clamp(min=0)
    with torch.no_grad():
        got, want = (programs[op].module()(ids, mask, pos) for op in (True, False))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        if a.dim() == 4:  # present [B, Hkv, S, Dh]
            a, b = (t.transpose(1, 2)[mask.bool()] for t in (a, b))
        if a.is_floating_point():
            assert (a - b).abs().max().item() <= ATOL
        else:
            assert torch.equal(a, b)

