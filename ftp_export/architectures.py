"""Which Hugging Face causal LMs the routed model supports, and how they are loaded.

Loading is always the real Hugging Face path (``from_pretrained``), on a local directory
or a hub id, so real checkpoints work unchanged. Supported families share the
Llama-style decoder block: pre-norm RMSNorm, q/k/v/o projections (with or without
bias), RoPE, gated MLP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ftp_export.errors import FTPError, UnsupportedModelError
from ftp_export.paths import model_dir

#: model_type -> architecture class name, for the families the routed block covers.
SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
}

#: Short names users type (``--model llama2-7b``) -> Hugging Face hub ids.
MODEL_ALIASES: dict[str, str] = {
    "llama2-7b": "meta-llama/Llama-2-7b-hf",
    "llama2-13b": "meta-llama/Llama-2-13b-hf",
    "llama3-8b": "meta-llama/Meta-Llama-3-8B",
    "qwen2-7b": "Qwen/Qwen2-7B",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
}

#: RoPE types whose cos/sin for a position do not depend on which other positions are computed.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
#: RoPE types whose frequencies depend on the longest position the rotary module is shown, so a
#: routed block (which computes a gathered subset of positions) would rotate differently.
POSITION_DEPENDENT_ROPE_TYPES = ("dynamic", "longrope")

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
DEFAULT_MODEL_NAME = "ftp-tiny-llama"


@dataclass(frozen=True)
class ModelRef:
    """A resolved ``--model`` argument."""

    name: str  # short name used in output folder names
    source: str  # what from_pretrained receives (local dir or hub id)


def resolve_model(arg: str | None) -> ModelRef:
    """Turn a ``--model`` value (None, local dir, alias or hub id) into a :class:`ModelRef`."""
    if arg is None or arg in ("default", DEFAULT_MODEL_NAME):
        return ModelRef(DEFAULT_MODEL_NAME, str(DEFAULT_MODEL_DIR))
    path = Path(arg).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FTPError(f"--model {arg}: directory has no config.json; point it at a Hugging Face model folder")
        return ModelRef(path.resolve().name, str(path.resolve()))
    if arg in MODEL_ALIASES:
        local = model_dir(arg)  # materialised offline by `ftp-export setup` (smollm2-135m)
        if (local / "config.json").is_file():
            return ModelRef(arg, str(local))
        return ModelRef(arg, MODEL_ALIASES[arg])
    if "/" in arg and not arg.startswith((".", "/")):
        return ModelRef(arg.split("/")[-1], arg)
    known = ", ".join(sorted(MODEL_ALIASES))
    raise FTPError(f"--model {arg}: no such directory, and not a known alias ({known}) or hub id (org/name)")


def check_supported(config: Any) -> None:
    """Raise :class:`UnsupportedModelError` naming the architecture if it is not covered."""
    model_type = getattr(config, "model_type", None)
    archs = getattr(config, "architectures", None) or [model_type]
    if model_type not in SUPPORTED_MODEL_TYPES:
        supported = ", ".join(sorted(SUPPORTED_MODEL_TYPES.values()))
        raise UnsupportedModelError(
            f"architecture {archs[0]} (model_type {model_type!r}) is not supported; supported: {supported}"
        )
    if getattr(config, "pretraining_tp", 1) not in (1, None):
        raise UnsupportedModelError("pretraining_tp > 1 is not supported; set it to 1 in config.json")
    for rope_type in rope_types(config):
        if rope_type in POSITION_DEPENDENT_ROPE_TYPES or "dynamic" in rope_type:
            raise UnsupportedModelError(
                f"RoPE type {rope_type!r} is not supported: its cos/sin depend on the longest position computed, "
                f"so routed blocks (a subset of positions) would differ; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )


def rope_types(config: Any) -> list[str]:
    """The RoPE type(s) of a config: transformers 5 ``rope_parameters`` (flat, or one dict per
    layer type), or the older ``rope_scaling``; ``["default"]`` when neither names one."""
    found: list[str] = []
    for params in (getattr(config, "rope_parameters", None), getattr(config, "rope_scaling", None)):
        if not isinstance(params, dict):
            continue
        nested = [v for v in params.values() if isinstance(v, dict)]
        for entry in nested if nested and not ({"rope_type", "type"} & set(params)) else [params]:
            found.append(str(entry.get("rope_type", entry.get("type", "default"))))
    return found or ["default"]


def load_config(ref: ModelRef) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref.source)
    except OSError as exc:
        raise FTPError(f"cannot load model config from {ref.source}: {_first_line(exc)}") from None


def load_model(ref: ModelRef, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Any:
    """Load the Hugging Face causal LM for ``ref`` in eval mode, checking the architecture first."""
    from transformers import AutoModelForCausalLM

    config = load_config(ref)
    check_supported(config)
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(ref.source, dtype=dtype, attn_implementation="eager")
    except SafetensorError as exc:
        bad = _unreadable_safetensors(ref.source)
        where = bad or f"the .safetensors weights of {ref.source}"
        raise FTPError(
            f"cannot load model weights {where}: corrupt or truncated ({_first_line(exc)}); re-download or re-save the model"
        ) from None
    except OSError as exc:
        raise FTPError(f"cannot load model weights from {ref.source}: {_first_line(exc)}") from None
    return model.to(device).eval()


def _unreadable_safetensors(source: str) -> str | None:
    """The first ``*.safetensors`` file of a local model folder whose header cannot be read."""
    from safetensors import SafetensorError, safe_open

    folder = Path(source)
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError):
            return str(path)
    return None


def load_tokenizer(ref: ModelRef) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(ref.source)
    except (OSError, ValueError) as exc:
        raise FTPError(f"cannot load tokenizer from {ref.source}: {_first_line(exc)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def fingerprint(config: Any) -> dict[str, Any]:
    """The config fields a schedule is tied to (the schedule format in ftp_export/schedule.py):
    everything that changes what a block computes for a token, so a schedule made for another
    model of the same width and depth is refused."""
    windows = sliding_windows(config)
    heads = int(config.num_attention_heads)
    fp = {
        "model_type": config.model_type,
        "num_hidden_layers": int(config.num_hidden_layers),
        "hidden_size": int(config.hidden_size),
        "num_attention_heads": heads,
        "num_key_value_heads": int(getattr(config, "num_key_value_heads", None) or heads),
        "vocab_size": int(config.vocab_size),
        "head_dim": int(getattr(config, "head_dim", None) or int(config.hidden_size) // heads),
        "rope": rope_fingerprint(config),
        "sliding_window": windows[0] if len(set(windows)) == 1 else windows,
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
    }
    return json.loads(json.dumps(fp))  # JSON-normal form (tuples -> lists), as a loaded schedule holds it


def rope_fingerprint(config: Any) -> dict[str, Any]:
    """RoPE settings as one JSON object: transformers 5 ``rope_parameters`` (or the older
    ``rope_theta`` + ``rope_scaling``), ``rope_type`` always present."""
    rope: dict[str, Any] = {}
    for params in (getattr(config, "rope_scaling", None), getattr(config, "rope_parameters", None)):
        if isinstance(params, dict):
            rope.update(params)
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope.pop("type")
    rope.pop("type", None)
    theta = getattr(config, "rope_theta", None)
    if "rope_theta" not in rope and theta is not None and not any(isinstance(v, dict) for v in rope.values()):
        rope["rope_theta"] = float(theta)
    if not any(isinstance(v, dict) for v in rope.values()):
        rope.setdefault("rope_type", "default")
    return {k: rope[k] for k in sorted(rope)}


def sliding_windows(config: Any) -> list[int | None]:
    """Per-layer sliding attention window (None = full causal attention)."""
    n = int(config.num_hidden_layers)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if config.model_type == "qwen2":
        if not getattr(config, "use_sliding_window", False) or not window:
            return [None] * n
        if layer_types:
            return [window if t == "sliding_attention" else None for t in layer_types]
        return [window] * n
    if window:
        return [int(window)] * n
    return [None] * n


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

