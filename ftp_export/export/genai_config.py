"""``genai_config.json``: what onnxruntime-genai needs to generate from an ``onnx`` export folder as
it is (``og.Model(folder)``), in the layout its model builder writes.

The single graph routes a prompt by top-k only when its past is empty, so the config turns off
``past_present_share_buffer`` (with it on, onnxruntime-genai feeds a max-length past buffer from
the first step). Search defaults are greedy; tokens come from the generation config where it has
them, else from the model config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftp_export.graph_io import LOGITS, MERGED, GraphSignature

GENAI_CONFIG = "genai_config.json"


def _token(config: Any, generation: Any, name: str) -> Any:
    value = getattr(generation, name, None) if generation is not None else None
    return value if value is not None else getattr(config, name, None)


def genai_config(config: Any, generation: Any, signature: GraphSignature, file: str) -> dict[str, Any]:
    """The genai_config.json document for the single graph ``file`` (``signature``, graph 'model')
    of a model with Hugging Face ``config`` and ``generation`` config (None: the config's tokens)."""
    if signature.graph != MERGED:
        raise ValueError(f"onnxruntime-genai runs the single graph ({MERGED}.onnx), not the {signature.graph} graph")
    heads = int(config.num_attention_heads)
    head_size = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    context = int(getattr(config, "max_position_embeddings", 2048))
    eos = _token(config, generation, "eos_token_id")
    pad = _token(config, generation, "pad_token_id")
    pad = pad if pad is not None else (eos[0] if isinstance(eos, list) else eos)
    return {
        "model": {
            "bos_token_id": _token(config, generation, "bos_token_id"),
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": file,
                "head_size": head_size,
                "hidden_size": int(config.hidden_size),
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": LOGITS,
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": heads,
                "num_hidden_layers": int(config.num_hidden_layers),
                "num_key_value_heads": int(getattr(config, "num_key_value_heads", None) or heads),
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": config.model_type,
            "vocab_size": int(config.vocab_size),
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": context,  # an upper bound; apps set their own per request
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            # the graph routes a prompt by top-k only when its past is empty: no preallocated past
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def write_genai_config(out: Path, config: Any, generation: Any, signature: GraphSignature, file: str) -> Path:
    path = out / GENAI_CONFIG
    path.write_text(json.dumps(genai_config(config, generation, signature, file), indent=4) + "\n")
    return path
