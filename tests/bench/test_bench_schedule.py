"""The bench's routed model picks tokens all over the prompt, as trained routers do: a prefix
(what routers ranking a random model's attention factor pick) would flatter attention that skips
keys after its last query and penalise a materialised masked softmax."""

from __future__ import annotations

import torch

from ftp_export.bench.models import bench_schedule, random_llama
from ftp_export.routed.model import RoutedCausalLM


def test_bench_routers_spread_their_picks_over_the_prompt():
    model = random_llama("tiny", None, torch.float32, "cpu")
    schedule = bench_schedule(model.config, 0.4)
    assert schedule.routers.kind == "hidden"
    seq = 256
    ids = torch.randint(0, model.config.vocab_size, (2, seq), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = RoutedCausalLM(model, schedule).eval()(ids)
    routed = [r.indices for r in out.routing if r is not None and getattr(r, "indices", None) is not None]
    assert len(routed) == model.config.num_hidden_layers - 1  # block 0 dense
    for idx in routed:
        k = idx.shape[1]
        for row in idx:
            assert not torch.equal(row, torch.arange(k))  # not the prompt's first k tokens
            pos = row.float() / seq
            assert 0.35 < pos.mean().item() < 0.65, pos.mean()
            assert (pos >= 0.75).float().mean().item() > 0.15  # late tokens are computed too
    # the two rows (different prompts) keep different tokens: the scores depend on the content
    assert not torch.equal(routed[0][0], routed[0][1])
