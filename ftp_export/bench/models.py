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
    """A uniform schedule at ``sparsity`` (block 0 dense) whose routers score a token by a random
    direction of its normalised hidden state: picks spread over the whole prompt, as trained
    routers' do, and every decoded token gets its own score.

    Why not the four factors. On random weights attention is near uniform, so after the causal
    correction a token's attention factor falls with its position and a top-k on it keeps the
    prompt's first k tokens (measured: every pick at or before token 1126 of 2048 at s = 0.4),
    exactly as position-priority routers do. That flatters attention that skips keys after its
    last query (eager PyTorch's chunks, the compile target's attention op) and penalises a
    materialised masked softmax (onnxruntime: a masked score costs about twice an unmasked one,
    the denormals of its exp). Trained routers spread their picks: the embedded model's s40
    routers on held-out text keep tokens at a mean of 0.37-0.51 of the prompt, with about a
    quarter, a half and three quarters of them before 25%, 50% and 75% of it.

    The router is the ``hidden`` kind of rank 1 and width 2 (a few hundred FLOPs a token, under the
    router budget of every built-in shape): ``score = relu(z) - relu(-z) = z`` with ``z = p_b . x``,
    ``p_b`` a seeded random unit vector per block and ``x`` the block's normalised input."""
    from ftp_export.routing.router import RouterBank
    from ftp_export.schedule import new_schedule, uniform_sparsity

    n, width = int(config.num_hidden_layers), int(config.hidden_size)
    routers = RouterBank(n, hidden=2, state_rank=1, state_size=width)
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for router in routers.blocks:
            direction = torch.randn(1, width, generator=gen)
            router.proj.weight.copy_(direction / direction.norm())
            for p in (router.fc1.weight, router.fc1.bias, router.fc2.bias):
                p.zero_()
            router.fc1.weight[:, -1] = torch.tensor([1.0, -1.0])  # the state input is fc1's last
            router.fc2.weight.copy_(torch.tensor([[1.0, -1.0]]))
    return new_schedule(config, uniform_sparsity(n, sparsity), routers=routers)
