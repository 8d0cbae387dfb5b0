"""The runtime interface and the one greedy loop every runtime is driven by.

A runtime returns its outputs as its apps receive them (numpy arrays from onnxruntime, torch
tensors from AOTInductor), and one step's ``present`` outputs go into the next step's
``past_key_values`` exactly as returned, never through a conversion an app would not make.
Only logits and routing decisions are converted to numpy, to be compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftp_export.graph_io import GraphSignature
from ftp_export.runtimes.kv_buffer import AppendBuffer


@dataclass
class StepTrace:
    """What a greedy run produced: logits and routing per step (prefill: [B, T, V], or [B, 1, V]
    from a graph exported with ``--logits last``; then [B, 1, V] per decode step)."""

    logits: list[np.ndarray] = field(default_factory=list)
    routing: list[dict[str, np.ndarray]] = field(default_factory=list)
    tokens: np.ndarray | None = None


class Runtime:
    """Runs an export's prefill and decode graphs. Subclasses implement :meth:`run` (native values
    in and out) and, where their values are not numpy arrays, :meth:`feed` and :meth:`to_numpy`."""

    name = "runtime"

    def __init__(self, signatures: dict[str, GraphSignature]) -> None:
        self.signatures = signatures
        # run-time shapes that contradict the graphs' declared shapes (parity fails on any)
        self.shape_problems: list[str] = []

    def run(self, graph: str, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run ``graph`` ('prefill' or 'decode') on named feeds; returns {output name: value}."""
        raise NotImplementedError

    def feed(self, array: np.ndarray) -> Any:
        """A host array (token ids, masks, positions) as this runtime's input value."""
        return array

    def to_numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value)

    def info(self) -> dict[str, Any]:
        """What ran, for the manifest and the parity report."""
        return {"name": self.name}

    def check_shapes(self, graph: str, feeds: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Add to :attr:`shape_problems` where a step's shapes contradict ``graph``'s declared ones
        (runtimes whose graphs declare shapes); called on every step of :meth:`generate`, not by
        :meth:`run`, so timing loops do not pay for it."""

    def _step(self, graph: str, feeds: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray]]:
        outs = self.run(graph, feeds)
        self.check_shapes(graph, feeds, outs)
        signature = self.signatures[graph]
        # only ``graph``'s own routing outputs: a single graph also returns the other graph's, empty
        routing = {k: self.to_numpy(v) for k, v in outs.items() if k in signature.routing}
        return self.to_numpy(outs["logits"]), signature.past_feeds(outs), routing

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray, new_tokens: int) -> StepTrace:
        """Greedy decoding: the runtime's own argmax feeds its next step (sequences run past EOS).
        The next token comes from the last position of the returned logits: with left padding (as
        here) that is each row's last valid token whether the prefill returns all positions or only it.
        Graphs of the ``append`` cache layout decode against an :class:`AppendBuffer` sized for the run."""
        trace = StepTrace()
        mask = attention_mask.astype(np.int64)
        pos = np.clip(np.cumsum(mask, -1) - 1, 0, None).astype(np.int64)
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": mask, "position_ids": pos}
        logits, past, routing = self._step("prefill", {k: self.feed(v) for k, v in feeds.items()})
        # the append layout: the app's cache buffer, sized for the whole run
        buffer = AppendBuffer(past, mask, mask.shape[1] + new_tokens) if self.signatures["decode"].kv_cache == "append" else None
        tokens = np.zeros((input_ids.shape[0], 0), dtype=np.int64)
        for step in range(new_tokens):
            trace.logits.append(logits)
            trace.routing.append(routing)
            nxt = logits[:, -1, :].argmax(-1)[:, None].astype(np.int64)
            tokens = np.concatenate([tokens, nxt], axis=1)
            if step == new_tokens - 1:
                break
            pos = mask.sum(-1, keepdims=True).astype(np.int64)
            one = np.ones_like(nxt)
            mask = np.concatenate([mask, one], axis=1)
            feeds = {"input_ids": nxt, "attention_mask": mask, "position_ids": pos}
            if buffer is not None:  # the buffer's past and its mask (the unused tail masked)
                feeds.update(buffer.feeds(one))
            native = past if buffer is None else {}  # the previous step's present, as returned
            logits, past, routing = self._step("decode", {**{k: self.feed(v) for k, v in feeds.items()}, **native})
            if buffer is not None:
                buffer.append(past, one)
        trace.tokens = tokens
        return trace
