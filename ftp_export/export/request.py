"""What a user asked ``ftp-export`` for: the one input of the export job and of every target."""

from __future__ import annotations

from dataclasses import dataclass

AOTI_ATTENTION = ("op", "graph")  # --aoti-attention choices (ExportRequest.aoti_attention)


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
    # "all" = [B, T, V] (perplexity, onnxruntime-genai); decode graphs return every new token's
    # logits either way; None: the target's default (Target.default_logits)
    logits: str | None = None  # one of graph_io.LOGITS_CHOICES
    # --target trt: how decode (threshold) blocks are lowered, routed/lowering.py's DECODE_LOWERINGS:
    # "dynamic" = gather the kept rows (data-dependent count), "static" = every row, masked
    decode_lowering: str = "dynamic"
    # --target compile: "op" = prefill attention is the ftp_export::attention custom op (eager's
    # chunked attention at run time; the packages then need Python with ftp_export importable),
    # "graph" = attention traced into the packages (self-contained, C++ loadable, slower at long prompts)
    aoti_attention: str = "op"
    # --target onnx: "int8" = 8-bit weights for every weight MatMul outside the routing path
    # (export/quantize.py); None = the weights in ``dtype``
    quantize: str | None = None
    # False (--no-parity): no runtime session and no reference, for a model whose float32 reference
    # and runtime session do not fit in memory beside it (README, "Exporting a 7B model")
    parity: bool = True
    # --target onnx: the present outputs' layout, routed/cache.py's KV_CACHE_CHOICES: "concat" = the
    # whole cache (optimum, onnxruntime-genai), "append" = the call's K/V only, the app keeps the cache
    kv_cache: str = "concat"
