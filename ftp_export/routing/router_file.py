"""The schedule's router object and weights file: validation and loading (docs in
:mod:`ftp_export.schedule`, router kinds in :mod:`ftp_export.routing.router`). Every failure is one
:class:`~ftp_export.errors.ScheduleError` line naming the field and the fix."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from ftp_export.errors import ScheduleError
from ftp_export.routing.router import (
    ADAPTER_ACTIVATION,
    ARCHITECTURE,
    INPUTS_FACTORS,
    INPUTS_HIDDEN,
    ROUTER_TYPE,
    RouterBank,
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def schedule_error(where: str, what: str) -> ScheduleError:
    """One ScheduleError line: ``<where>: <what>``."""
    return ScheduleError(f"{where}: {what}")


def check_router(router: Any, path: Path, src: str, model_width: Any) -> tuple[Path, tuple[int, ...]]:
    """The router weights file (present, sha256 as recorded) and the bank's shape: (MLP width,
    hidden-state rank, hidden-state size, skip-adapter rank, skip-adapter size), rank 0 for the
    four-factor router and for no adapter."""
    if not isinstance(router, dict):
        raise schedule_error(src, "field 'router' is missing")
    if router.get("type") != ROUTER_TYPE:
        raise schedule_error(src, f"field 'router.type' is {router.get('type')!r}; this ftp-export runs router type {ROUTER_TYPE!r} "
                         "(a newer ftp-export wrote this schedule, or retrain it with ftp-train)")
    for key in ("features", "hidden", "activation"):
        if router.get(key) != ARCHITECTURE[key]:
            raise schedule_error(src, f"field 'router.{key}' is {router.get(key)!r}; this ftp-export runs {ARCHITECTURE[key]!r}")
    shape = (int(router["hidden"]), 0, 0)
    inputs = router.get("inputs", INPUTS_FACTORS)
    if inputs == INPUTS_HIDDEN:
        rank, size = router.get("hidden_state_rank"), router.get("hidden_state_size")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise schedule_error(src, f"field 'router.hidden_state_rank' is {rank!r}; a hidden-state router needs an integer rank >= 1")
        if size != model_width:
            raise schedule_error(src, f"field 'router.hidden_state_size' is {size!r} but the model's hidden size is {model_width!r}")
        shape = (shape[0], rank, int(size))
    elif inputs != INPUTS_FACTORS:
        raise schedule_error(src, f"field 'router.inputs' is {inputs!r}; this ftp-export reads {INPUTS_FACTORS!r} or {INPUTS_HIDDEN!r}")
    shape = (*shape, *_adapter_shape(router.get("skip_adapter"), src, model_width))
    weights_rel = router.get("weights")
    if not isinstance(weights_rel, str) or not weights_rel:
        raise schedule_error(src, "field 'router.weights' must name the router safetensors file")
    weights = (path.parent / weights_rel).resolve()
    if not weights.is_file():
        raise schedule_error(src, f"router weights {weights} not found (field 'router.weights'); keep the .safetensors next to the JSON")
    expected = router.get("sha256")
    actual = sha256_file(weights)
    if expected != actual:
        raise schedule_error(
            src,
            f"router weights {weights.name} have sha256 {actual[:12]}... but field 'router.sha256' says "
            f"{str(expected)[:12]}...; the weights were modified or belong to another schedule",
        )
    return weights, shape


def _adapter_shape(adapter: Any, src: str, model_width: Any) -> tuple[int, int]:
    """(rank, size) of ``router.skip_adapter``; (0, 0) when absent."""
    if adapter is None:
        return 0, 0
    if not isinstance(adapter, dict):
        raise schedule_error(src, f"field 'router.skip_adapter' is {adapter!r}; expected an object with rank, size and activation")
    rank, size, act = adapter.get("rank"), adapter.get("size"), adapter.get("activation")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise schedule_error(src, f"field 'router.skip_adapter.rank' is {rank!r}; a skip adapter needs an integer rank >= 1")
    if size != model_width:
        raise schedule_error(src, f"field 'router.skip_adapter.size' is {size!r} but the model's hidden size is {model_width!r}")
    if act != ADAPTER_ACTIVATION:
        raise schedule_error(src, f"field 'router.skip_adapter.activation' is {act!r}; this ftp-export runs {ADAPTER_ACTIVATION!r}")
    return rank, int(size)


def load_routers(weights: Path, n_layers: int, shape: tuple[int, ...], src: str) -> RouterBank:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise schedule_error(src, f"router weights {weights.name} unreadable ({exc})") from None
    bank = RouterBank(n_layers, *shape)
    expected = bank.state_dict()
    for name, ref in expected.items():
        if name not in tensors:
            raise schedule_error(src, f"router weights {weights.name} lack tensor {name!r}; the file is for another model")
        if tuple(tensors[name].shape) != tuple(ref.shape):
            raise schedule_error(
                src, f"router tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {tuple(ref.shape)}"
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise schedule_error(src, f"router weights {weights.name} have unexpected tensors (first: {extra[0]!r}); the file is for another model")
    bad = sorted(name for name, t in tensors.items() if not bool(torch.isfinite(t.float()).all()))
    if bad:  # NaN scores would sort as ties and silently route by position
        raise schedule_error(src, f"router weights {weights.name} hold NaN or inf (first: {bad[0]!r}); retrain or restore the schedule")
    bank.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
    return bank.eval()
