"""Benchmark models that need no download: real models' block shapes with random weights."""

from __future__ import annotations

from typing import Any

import torch

SHAPES: dict[str, dict[str, Any]] = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, num_hidden_layers=32),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, num_hidden_layers=32, rope_theta=500000.0),
    # SmolLM2-135M: GQA 9/3 heads, tied embeddings
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, num_hidden_layers=30, rope_theta=100000.0, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2, vocab_size=259, num_hidden_layers=4),
}


def random_llama(shape: str, layers: int | None, dtype: torch.dtype, device: str, attn: str = "sdpa") -> Any:
    """A LlamaForCausalLM of ``shape`` with seeded random weights, built directly on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = dict(SHAPES[shape])
    if layers:
        spec["num_hidden_layers"] = layers
    config = LlamaConfig(**spec, max_position_embeddings=16384)
    config._attn_implementation = attn
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    return model.eval()


def bench_schedule(config: Any, sparsity: float) -> Any:
    """A uniform schedule at ``sparsity`` whose routers rank tokens by their attention factor.

    Position-priority routers (the static default) keep the first tokens of a prompt, which
    flatters every attention that skips keys after its last query (the eager prefill's chunks):
    trained routers pick tokens all over the prompt. Ranking by the attention factor spreads the
    picks as they do, and gives decoded tokens scores that differ (a position-priority score is
    the same for every decoded token, so at batch 1 a block computes all or none of them)."""
    from ftp_export.schedule import new_schedule, uniform_sparsity

    schedule = new_schedule(config, uniform_sparsity(config.num_hidden_layers, sparsity))
    with torch.no_grad():
        for router in schedule.routers.blocks:
            router.fc1.weight.zero_()
            router.fc1.bias.zero_()
            router.fc1.weight[0, 1] = 1.0  # score = relu(attention factor) = the factor (>= 0)
    return schedule
