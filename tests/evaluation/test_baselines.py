"""ShortGPT baseline: block influence and layer dropping on a tiny Llama."""

import torch

from ftp_export.evaluation.baselines import block_influence, drop_blocks, shortgpt_blocks


def test_block_influence_range_and_determinism(tiny_model):
    ids = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    bi = block_influence(tiny_model, ids, batch_size=2)
    assert len(bi) == tiny_model.config.num_hidden_layers
    assert all(0.0 <= x <= 2.0 for x in bi)
    again = block_influence(tiny_model, ids, batch_size=3)
    assert all(abs(a - b) < 1e-5 for a, b in zip(bi, again))


def test_block_influence_respects_mask(tiny_model):
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :] = 0
    mask[1, 0] = 1
    bi = block_influence(tiny_model, ids, mask)
    assert len(bi) == 4


def test_drop_blocks_matches_manual_forward(tiny_model):
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = tiny_model(input_ids=ids, use_cache=False).logits
        short = drop_blocks(tiny_model, [1, 3])
        got = short(input_ids=ids, use_cache=False).logits
        # manual: embed -> layers 0, 2 -> norm -> head, via the HF layers themselves
        inner = tiny_model.model
        h = inner.embed_tokens(ids)
        pos = torch.arange(12).unsqueeze(0).expand(2, 12)
        cos_sin = inner.rotary_emb(h, pos)
        causal = torch.full((12, 12), float("-inf")).triu(1)[None, None]
        for i in (0, 2):
            out = inner.layers[i](h, attention_mask=causal, position_embeddings=cos_sin, position_ids=pos)
            h = out[0] if isinstance(out, tuple) else out
        want = tiny_model.lm_head(inner.norm(h))
        after = tiny_model(input_ids=ids, use_cache=False).logits
    assert len(short.model.layers) == 2 and short.config.num_hidden_layers == 2
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.equal(before, after)  # the original model is untouched
    assert len(tiny_model.model.layers) == 4 and tiny_model.config.num_hidden_layers == 4
    assert short.model.layers[1] is tiny_model.model.layers[2]  # weights shared


def test_shortgpt_blocks_picks_lowest():
    assert shortgpt_blocks([0.5, 0.1, 0.3, 0.1], 2) == [1, 3]
    assert shortgpt_blocks([0.5, 0.1], 0) == []
