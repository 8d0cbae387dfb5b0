"""Schedule JSON + router weights (safetensors): format, validation, writing.

Format (``format_version`` 2)::

    {
      "format": "ftp-schedule", "format_version": 2,
      "base_model": {"name_or_path": ..., "architecture": ..., "fingerprint": {model_type,
                     num_hidden_layers, hidden_size, num_attention_heads, num_key_value_heads,
                     vocab_size, head_dim, rope: {rope_type, rope_theta, ...}, sliding_window,
                     tie_word_embeddings}},
      "target_sparsity": 0.4,            # mean of block_sparsity
      "block_sparsity": [0.0, 0.48, ...],  # one per block, each in [0, 1]; 1 = block dropped
      "router": {"type": "mlp", "features": [...4...], "hidden": 64, "activation": "relu",
                 # a router that sees the token also has (absent: the four-factor router)
                 "inputs": ["factors", "hidden_state"], "hidden_state_rank": 1, "hidden_state_size": D,
                 # an adapter for skipped tokens (absent: a skipped token keeps its hidden state)
                 "skip_adapter": {"rank": 8, "size": D, "activation": "silu"},
                 "weights": "s40.routers.safetensors",   # relative to the JSON's folder
                 "sha256": "<hex of the weights file>"},
      "decode_thresholds": {"context_lengths": [16, 32, ..., 1024],   # knots, increasing
                            "per_block": [null, [0.71, 0.69, ...], ...]},  # one value per knot;
                            # null = compute every token (ftp_export/routing/decode_thresholds.py)
      "produced_by": {"tool": ..., "version": ..., "method": ..., "settings": {...},
                      "calibration": {...}, "seed": 0, "created": "<iso time>"}
    }

Format 1 (before 2026-12-05) still loads: its fingerprint lacks the last four fields (they are
not checked) and its ``decode_thresholds`` is one number per block, a threshold constant in the
context length (``Schedule.format_version`` says which was read; export warns about it).

Router kinds (:mod:`ftp_export.routing.router`): without ``router.inputs`` (or with
``["factors"]``) the four-factor MLP, tensors ``blocks.{b}.fc1/fc2``; with ``["factors",
"hidden_state"]`` the MLP also reads a rank-``hidden_state_rank`` projection of the block's
normalised input (width ``hidden_state_size`` = the model's hidden size): ``blocks.{b}.proj.weight``
[r, D], ``fc1.weight`` [64, 4 + r]. The hidden-state router stayed in format 2: a reader from
before it meets ``proj`` tensors and a wider ``fc1`` and refuses the file with its shape error
(it cannot route with it silently), and four-factor schedules are written byte for byte as before.
Either kind may add ``"skip_adapter": {"rank": a, "size": D, "activation": "silu"}``: the tokens a
block skips (every token of a dropped block) get ``h + U silu(A x)`` (``blocks.{b}.adapter_down.weight`` [a, D],
``blocks.{b}.adapter_up.weight`` [D, a]). Also still format 2: a reader from before it meets the
adapter tensors and refuses the file ("unexpected tensors") rather than skip without them.
An unknown ``router.type`` or ``router.inputs`` is one ScheduleError line.

Every check failure raises :class:`~ftp_export.errors.ScheduleError` with one line naming the
field and the fix.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ftp_export.atomic import atomic_file, atomic_write_text
from ftp_export.errors import ScheduleError
from ftp_export.routing.decode_thresholds import DecodeThresholds, check_curve
from ftp_export.routing.router import RouterBank
from ftp_export.routing.router_file import check_router, load_routers, schedule_error, sha256_file  # noqa: F401 - sha256_file re-exported
from ftp_export.routing.sparsity import dropped_sparsity, routed_sparsity  # noqa: F401 - re-exported

FORMAT = "ftp-schedule"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
FINGERPRINT_KEYS_V1 = (
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)
FINGERPRINT_KEYS = FINGERPRINT_KEYS_V1 + ("head_dim", "rope", "sliding_window", "tie_word_embeddings")


ALL_DROPPED = "every block has sparsity 1 (dropped), so no block would run; keep at least one block below 1"


def all_dropped(block_sparsity: list[float]) -> bool:
    """Every block dropped: the model would be embeddings + LM head only, which no schedule may ask for."""
    return bool(block_sparsity) and all(dropped_sparsity(s) for s in block_sparsity)


@dataclass
class Schedule:
    """A validated schedule with its routers loaded."""

    block_sparsity: list[float]
    routers: RouterBank
    decode_thresholds: DecodeThresholds
    base_model: dict[str, Any]
    produced_by: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    sha256: str = ""  # of the JSON file as loaded/written
    format_version: int = FORMAT_VERSION

    @property
    def num_blocks(self) -> int:
        return len(self.block_sparsity)

    @property
    def target_sparsity(self) -> float:
        return sum(self.block_sparsity) / len(self.block_sparsity)

    def keep_ratio(self, block: int) -> float:
        return 1.0 - self.block_sparsity[block]

    def is_routed(self, block: int) -> bool:
        """Some but not all tokens skip this block (it has a router)."""
        return routed_sparsity(self.block_sparsity[block])

    def is_dropped(self, block: int) -> bool:
        """Every token skips this block: nothing of it runs, not even the K/V projections."""
        return dropped_sparsity(self.block_sparsity[block])

    def check_model(self, fp: dict[str, Any]) -> None:
        """Fail unless this schedule was made for a model with fingerprint ``fp``."""
        mine = self.base_model.get("fingerprint", {})
        for key in FINGERPRINT_KEYS:
            if key in mine and key in fp and mine[key] != fp[key]:
                raise ScheduleError(
                    f"schedule is for a model with {key}={_show(mine[key])} but this model has {key}={_show(fp[key])}; "
                    "make a schedule for this model (ftp-export schedule --uniform S --model M -o S.json)"
                )


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_schedule(path: str | os.PathLike[str]) -> Schedule:
    """Load and validate a schedule JSON and its router weights."""
    path = Path(path)
    src = str(path)
    raw, doc = _read_document(path)
    version = doc["format_version"]
    base = doc.get("base_model")
    if not isinstance(base, dict) or not isinstance(base.get("fingerprint"), dict):
        raise schedule_error(src, "field 'base_model.fingerprint' is missing; it ties the schedule to a model")
    for key in FINGERPRINT_KEYS if version >= 2 else FINGERPRINT_KEYS_V1:
        if key not in base["fingerprint"]:
            raise schedule_error(src, f"field 'base_model.fingerprint.{key}' is missing")
    n_layers = base["fingerprint"]["num_hidden_layers"]
    sparsity = _check_sparsity(doc, n_layers, src)
    thresholds = _check_thresholds(doc.get("decode_thresholds"), version, n_layers, src)
    weights, shape = check_router(doc.get("router"), path, src, base["fingerprint"].get("hidden_size"))
    return Schedule(
        block_sparsity=[float(s) for s in sparsity],
        routers=load_routers(weights, n_layers, shape, src),
        decode_thresholds=thresholds,
        base_model=base,
        produced_by=doc.get("produced_by", {}),
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        format_version=version,
    )


def _check_thresholds(doc: Any, version: int, n_layers: int, src: str) -> DecodeThresholds:
    if version == 1:
        if not isinstance(doc, list) or len(doc) != n_layers:
            raise schedule_error(src, f"field 'decode_thresholds' must be a list of {n_layers} numbers or nulls")
        for i, t in enumerate(doc):
            if t is not None and not _number(t):
                raise schedule_error(src, f"field 'decode_thresholds[{i}]' is {t!r}; use a finite number or null")
        return DecodeThresholds.constant(doc)
    if not isinstance(doc, dict):
        raise schedule_error(src, "field 'decode_thresholds' must be an object with 'context_lengths' and 'per_block'")
    problem = check_curve(doc.get("context_lengths"), doc.get("per_block"), n_layers)
    if problem:
        raise schedule_error(src, f"field {problem}")
    return DecodeThresholds(list(doc["context_lengths"]), [None if v is None else [float(x) for x in v] for v in doc["per_block"]])


def _read_document(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes and its JSON object, checked to be an ftp-export schedule of this version."""
    src = str(path)
    if not path.is_file():
        raise schedule_error(src, "file not found; pass --schedule with an existing schedule JSON")
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise schedule_error(src, f"not valid JSON ({exc}); regenerate it with ftp-train or ftp-export schedule") from None
    if not isinstance(doc, dict):
        raise schedule_error(src, "top level must be a JSON object")
    if doc.get("format") != FORMAT:
        raise schedule_error(src, f"field 'format' must be {FORMAT!r}; this is not an ftp-export schedule")
    version = doc.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise schedule_error(src, f"field 'format_version' is {version!r}; this ftp-export reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    return raw, doc


def _check_sparsity(doc: dict[str, Any], n_layers: int, src: str) -> list[Any]:
    sparsity = doc.get("block_sparsity")
    if not isinstance(sparsity, list) or not sparsity:
        raise schedule_error(src, "field 'block_sparsity' must be a non-empty list of numbers")
    if len(sparsity) != n_layers:
        raise schedule_error(
            src,
            f"field 'block_sparsity' has {len(sparsity)} entries but the model has {n_layers} blocks; "
            "give one sparsity per block",
        )
    for i, s in enumerate(sparsity):
        if not _number(s) or not (0.0 <= s <= 1.0):
            raise schedule_error(src, f"field 'block_sparsity[{i}]' is {s!r}; each block sparsity must be in [0, 1] (1 drops the block)")
    if all_dropped(sparsity):
        raise schedule_error(src, f"field 'block_sparsity': {ALL_DROPPED}")
    target = doc.get("target_sparsity")
    if target is not None:
        if not _number(target) or not (0.0 <= target < 1.0):
            raise schedule_error(src, f"field 'target_sparsity' is {target!r}; it must be in [0, 1)")
        mean = sum(sparsity) / len(sparsity)
        if abs(mean - target) > 1e-3:
            raise schedule_error(src, f"field 'target_sparsity' is {target} but the mean of block_sparsity is {mean:.4f}")
    return sparsity


def save_schedule(schedule: Schedule, path: str | os.PathLike[str]) -> Path:
    """Write ``path`` (JSON) and ``<stem>.routers.safetensors`` beside it, each atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = path.with_name(path.stem + ".routers.safetensors")
    state = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in schedule.routers.state_dict().items()}
    with atomic_file(weights) as tmp_w:
        save_file(state, str(tmp_w))
    produced = dict(schedule.produced_by)
    produced.setdefault("created", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "base_model": schedule.base_model,
        "target_sparsity": round(schedule.target_sparsity, 6),
        "block_sparsity": [round(float(s), 6) for s in schedule.block_sparsity],
        "router": {**schedule.routers.architecture(), "weights": weights.name, "sha256": sha256_file(weights)},
        "decode_thresholds": schedule.decode_thresholds.to_json(),
        "produced_by": produced,
    }
    text = json.dumps(doc, indent=2) + "\n"
    atomic_write_text(path, text)
    schedule.path = path
    schedule.sha256 = hashlib.sha256(text.encode()).hexdigest()
    schedule.format_version = FORMAT_VERSION
    return path


def _thresholds(given: DecodeThresholds | list[float | None] | None, n: int) -> DecodeThresholds:
    """A curve as given, one constant threshold per block from a list, or none."""
    if given is None:
        return DecodeThresholds.unset(n)
    curve = given if isinstance(given, DecodeThresholds) else DecodeThresholds.constant(given)
    if len(curve) != n:
        raise ScheduleError(f"decode_thresholds has {len(curve)} entries but the model has {n} blocks")
    return curve


def uniform_sparsity(num_blocks: int, target: float, dense_first: bool = True) -> list[float]:
    """Equal sparsity on every routed block, block 0 dense, mean equal to ``target``."""
    if not (0.0 < target < 1.0):
        raise ScheduleError(f"--uniform {target}: sparsity must be in (0, 1)")
    routed = num_blocks - 1 if dense_first and num_blocks > 1 else num_blocks
    per_block = target * num_blocks / routed
    if per_block >= 1.0:
        raise ScheduleError(
            f"--uniform {target}: with block 0 dense the other {routed} blocks would need sparsity {per_block:.3f} >= 1"
        )
    first = [0.0] if dense_first and num_blocks > 1 else []
    return first + [per_block] * routed


def new_schedule(
    config: Any,
    block_sparsity: list[float],
    routers: RouterBank | None = None,
    decode_thresholds: DecodeThresholds | list[float | None] | None = None,
    name_or_path: str = "",
    produced_by: dict[str, Any] | None = None,
) -> Schedule:
    """Build an in-memory schedule for a model config (static routers unless given; a router above
    0.5% of a block's FLOPs or of another hidden size is refused)."""
    from ftp_export.architectures import fingerprint
    from ftp_export.flops import check_router_budget
    from ftp_export.routing.router import static_router_bank

    n = int(config.num_hidden_layers)
    if len(block_sparsity) != n:
        raise ScheduleError(f"block_sparsity has {len(block_sparsity)} entries but the model has {n} blocks")
    for i, s in enumerate(block_sparsity):
        if not (0.0 <= s <= 1.0):
            raise ScheduleError(f"block_sparsity[{i}] is {s}; each block sparsity must be in [0, 1] (1 drops the block)")
    if all_dropped(block_sparsity):
        raise ScheduleError(f"block_sparsity: {ALL_DROPPED}")
    if routers is not None:
        if routers.state_rank and routers.state_size != int(config.hidden_size):
            raise ScheduleError(f"hidden-state router of width {routers.state_size} for a model of hidden size {config.hidden_size}")
        if getattr(routers, "adapter_rank", 0) and routers.adapter_size != int(config.hidden_size):
            raise ScheduleError(f"skip adapter of width {routers.adapter_size} for a model of hidden size {config.hidden_size}")
        check_router_budget(config, routers)
    arch = (getattr(config, "architectures", None) or [config.model_type])[0]
    return Schedule(
        block_sparsity=[float(s) for s in block_sparsity],
        routers=routers if routers is not None else static_router_bank(n),
        decode_thresholds=_thresholds(decode_thresholds, n),
        base_model={"name_or_path": name_or_path, "architecture": arch, "fingerprint": fingerprint(config)},
        produced_by=dict(produced_by or {}),
    )
