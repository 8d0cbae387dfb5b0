"""What a user asked ``ftp-export`` for: the one input of the export job and of every target."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ExportRequest:
    model: str | None = None
    schedule: str | None = None
    target: str = "onnx"
    output: str | None = None
    # parity tolerances; None: the export dtype's default (export/tolerance.py)
    atol: float | None = None
    rtol: float | None = None
    parity_tokens: int = 16
    dtype: str = "float32"  # devices.DTYPE_CHOICES; optimum's fp16/fp32/bf16 spellings too
    device: str = "cpu"
    # prefill graph's logits: "last" = [B, 1, V] at each row's last valid token (generation),
    # "all" = [B, T, V] (perplexity); decode graphs return every new token's logits either way
    logits: str = "last"  # one of graph_io.LOGITS_CHOICES
