"""A decode block attends with its kept rows against their own caches, and not at all when it keeps
no row (ftp_export/routed/decode_rows.py): the kept rows' outputs and attention signal equal
attending with every row of the call, in both lowerings."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ftp_export.routed.attention import attend, mask_bias
from ftp_export.routed.block import apply_rope, attention_mask_for
from ftp_export.routed.decode_rows import attend_kept_rows
from ftp_export.routed.lowering import TorchLowering
from ftp_export.trt.custom_ops import PluginLowering


def _setup(model, bsz, seq, past):
    torch.manual_seed(0)
    attn = model.model.layers[0].self_attn
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    n_kv = attn.k_proj.out_features // head_dim
    x = torch.randn(bsz, seq, model.config.hidden_size)
    keys, values = (torch.randn(bsz, n_kv, past + seq, head_dim) for _ in range(2))
    all_tok = torch.arange(seq).expand(bsz, seq)
    cos, sin = model.model.rotary_emb(x, all_tok + past)
    call = SimpleNamespace(cos=cos, sin=sin, all_tok=all_tok, past=past)
    key_valid = torch.ones(bsz, past + seq, dtype=torch.bool)
    key_valid[1 % bsz, :3] = False  # a left-padded row
    return x, keys, values, call, attention_mask_for(key_valid, all_tok + past, None), head_dim


@pytest.mark.parametrize("lowering", [TorchLowering(), PluginLowering()], ids=["torch", "plugin"])
@pytest.mark.parametrize(
    "keep_rows",
    [
        [[0, 1, 0, 0], [0, 0, 0, 1], [0, 1, 0, 1]],
        [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]],
        [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],  # nothing kept: the torch lowering runs no query
        [[1]],  # one-row decode step, kept
        [[0]],  # ... skipped
    ],
)
@torch.no_grad()
def test_kept_rows_attend_as_with_every_row(tiny_model, keep_rows, lowering):
    keep = torch.tensor(keep_rows, dtype=torch.bool)
    bsz, seq = keep.shape
    x, keys, values, call, allowed, head_dim = _setup(tiny_model, bsz, seq, past=6)
    layer = tiny_model.model.layers[0]
    flat = torch.nonzero(keep.reshape(-1)).reshape(-1)
    scaling = head_dim**-0.5
    mask = (allowed, mask_bias(allowed, x.dtype))
    out_rows, own = attend_kept_rows(layer, x, flat, call, keys, values, mask, head_dim, scaling, lowering, own=True)
    # reference: every row of the call attends
    q = layer.self_attn.q_proj(x).view(bsz, seq, -1, head_dim).transpose(1, 2)
    full, _, full_own = attend(apply_rope(q, call.cos, call.sin), keys, values, allowed, scaling, call.all_tok + 6, own=True)
    assert out_rows.shape == (len(flat), 1, full.shape[-1])
    assert own.shape == (bsz, seq)
    torch.testing.assert_close(out_rows.squeeze(1), full.reshape(bsz * seq, -1)[flat], rtol=0, atol=1e-5)
    torch.testing.assert_close(own[keep], full_own[keep], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("lowering", "queries"), [(TorchLowering(), 0), (PluginLowering(), 1)], ids=["torch", "plugin"])
@torch.no_grad()
def test_skipped_one_row_step_runs_no_query(tiny_model, monkeypatch, lowering, queries):
    """Plain generation: a decode block that skips the step's only token attends with no query
    (the TensorRT lowering keeps its row)."""
    import ftp_export.routed.decode_rows as decode_rows

    seen = []

    def spy(q, *args, **kwargs):
        seen.append(q.shape[2])
        return attend(q, *args, **kwargs)

    monkeypatch.setattr(decode_rows, "attend", spy)
    x, keys, values, call, allowed, head_dim = _setup(tiny_model, 1, 1, past=6)
    out_rows, own = attend_kept_rows(
        tiny_model.model.layers[0], x, torch.zeros(0, dtype=torch.int64), call, keys, values, (allowed, mask_bias(allowed, x.dtype)),
        head_dim, 0.125, lowering, own=True,
    )
    assert seen == [queries] and out_rows.shape[0] == 0 and own.shape == (1, 1)
