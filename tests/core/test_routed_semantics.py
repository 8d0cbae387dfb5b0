"""Routing semantics of the PyTorch reference (docs/routing.md)."""

from __future__ import annotations

import torch

from ftp_export.export.parity import pad_batch
from ftp_export.routed.generation import greedy_generate
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.selection import keep_q16, slot_count
from ftp_export.schedule import new_schedule


def _routed(model, sparsity, thresholds=None):
    n = model.config.num_hidden_layers
    return RoutedCausalLM(model, new_schedule(model.config, [0.0] + [sparsity] * (n - 1), decode_thresholds=thresholds))


def test_skipped_tokens_pass_through_and_write_kv(tiny_model):
    """A skipped token's hidden state is unchanged by the block, yet its K/V are in the cache."""
    routed = _routed(tiny_model, 0.5)
    layer = tiny_model.model.layers[1]
    from transformers import DynamicCache

    ids = torch.randint(3, 259, (1, 10), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache()
    hidden_in = {}

    def grab(name):
        def hook(mod, args, out):
            hidden_in.setdefault(name, args[0].detach().clone())

        return hook

    # input_layernorm of block 1 first sees the full residual stream entering the block;
    # input_layernorm of block 2 first sees the stream leaving block 1.
    h1 = tiny_model.model.layers[1].input_layernorm.register_forward_hook(grab("in1"))
    h2 = tiny_model.model.layers[2].input_layernorm.register_forward_hook(grab("in2"))
    try:
        out = routed(ids, past_key_values=cache, mode="prefill")
    finally:
        h1.remove()
        h2.remove()
    r = out.routing[1]
    kept = set(r.indices[r.active].tolist())
    skipped = [t for t in range(10) if t not in kept]
    assert len(kept) == 5 and skipped
    assert torch.equal(hidden_in["in1"][0, skipped], hidden_in["in2"][0, skipped])
    assert not torch.allclose(hidden_in["in1"][0, sorted(kept)], hidden_in["in2"][0, sorted(kept)])
    # K/V for all 10 tokens, skipped ones = projection of their incoming hidden state
    attn = layer.self_attn
    k_cache = cache.layers[1].keys
    assert k_cache.shape[2] == 10
    v_expect = attn.v_proj(layer.input_layernorm(hidden_in["in1"])).view(1, 10, -1, routed.head_dim).transpose(1, 2)
    assert torch.allclose(cache.layers[1].values[:, :, skipped], v_expect[:, :, skipped], atol=1e-6)


def test_padding_does_not_change_routing_or_logits(tiny_model):
    routed = _routed(tiny_model, 0.4)
    g = torch.Generator().manual_seed(5)
    a = torch.randint(3, 259, (13,), generator=g).tolist()
    b = torch.randint(3, 259, (7,), generator=g).tolist()
    ids, mask = pad_batch([a, b], 0, side="left")
    batched = routed(ids, mask)
    for row, seq in enumerate((a, b)):
        single = routed(torch.tensor([seq]))
        n = len(seq)
        assert torch.allclose(batched.logits[row, -n:], single.logits[0], atol=1e-5)
        for blk, (rb, rs) in enumerate(zip(batched.routing, single.routing)):
            if rb is None:
                continue
            off = ids.shape[1] - n
            kept_b = (rb.indices[row][rb.active[row]] - off).tolist()
            kept_s = rs.indices[0][rs.active[0]].tolist()
            assert kept_b == kept_s, f"block {blk}"


def test_prefill_counts_follow_schedule(tiny_model):
    routed = _routed(tiny_model, 0.4)
    ids = torch.randint(3, 259, (2, 23))
    out = routed(ids)
    q = keep_q16(0.6)
    for r in out.routing[1:]:
        assert r.indices.shape == (2, slot_count(23, q))
        assert (r.indices.diff(dim=-1) > 0).all()
        assert r.active.sum(-1).tolist() == [slot_count(23, q)] * 2


def test_decode_threshold_routing(tiny_model):
    n = tiny_model.config.num_hidden_layers
    ids = torch.randint(3, 259, (3, 9))
    mask = torch.ones_like(ids)
    keep_all = _routed(tiny_model, 0.4, thresholds=[None] + [-1e9] * (n - 1))
    skip_all = _routed(tiny_model, 0.4, thresholds=[None] + [1e9] * (n - 1))
    dense_decode = _routed(tiny_model, 0.4)  # null thresholds: decode computes every token
    r_keep = greedy_generate(keep_all, ids, mask, 4)
    r_dense = greedy_generate(dense_decode, ids, mask, 4)
    r_skip = greedy_generate(skip_all, ids, mask, 4)
    for step in range(1, 4):
        assert r_keep.step_routing[step][1].rows.tolist() == [0, 1, 2]
        assert r_skip.step_routing[step][1].rows.numel() == 0
        assert torch.allclose(r_keep.step_logits[step], r_dense.step_logits[step], atol=1e-5)
        assert not torch.allclose(r_skip.step_logits[step], r_dense.step_logits[step], atol=1e-3)


def test_last_logits_are_each_rows_last_valid_position(tiny_model):
    """``logits='last'`` equals the all-position logits at each row's last valid token, with left
    and right padding; a row with no valid token reads position T - 1; decode keeps every new token."""
    from transformers import DynamicCache

    from ftp_export.export.parity import last_valid_index

    routed = _routed(tiny_model, 0.4).eval()
    g = torch.Generator().manual_seed(5)
    rows = [torch.randint(3, 259, (n,), generator=g).tolist() for n in (11, 4, 1)] + [[77] * 7]
    for side in ("left", "right"):
        ids, mask = pad_batch(rows, 0, side=side)
        mask[2] = 0  # no valid token in this row
        with torch.no_grad():
            full = routed(ids, mask, mode="prefill").logits
            last = routed(ids, mask, mode="prefill", logits="last").logits
        idx = torch.from_numpy(last_valid_index(mask.numpy()))
        expected = {"left": [10, 10, 10, 10], "right": [10, 3, 10, 6]}[side]
        assert idx.tolist() == expected, side
        assert last.shape == (len(rows), 1, full.shape[-1])
        torch.testing.assert_close(last[:, 0], full[torch.arange(len(rows)), idx], atol=1e-5, rtol=0)
    # decode with two new tokens per row: logits for both, whatever the prefill returned
    ids, mask = pad_batch(rows, 0, side="left")
    cache = DynamicCache()
    with torch.no_grad():
        routed(ids, mask, past_key_values=cache, mode="prefill", logits="last")
        nxt = torch.randint(3, 259, (len(rows), 2), generator=g)
        mask2 = torch.cat([mask, torch.ones_like(nxt)], 1)
        pos = mask.sum(-1, keepdim=True) + torch.arange(2)
        assert routed(nxt, mask2, pos, past_key_values=cache).logits.shape[:2] == (len(rows), 2)
