"""The parity criterion: how far an export's logits may be from the PyTorch reference, and how much
of its routing must agree, per export dtype.

A step (the prefill, each decode step) passes iff ``max|d| <= atol + rtol * max|ref|``, where ``d``
is the logit difference and ``ref`` the reference's logits over the same positions: float32 logit
drift grows with the logits' scale (and depth), so a fixed absolute bound is too strict for real
models and needlessly loose for small ones.

The reference is always the float32 PyTorch routed model. Defaults per export dtype (README,
"Parity"):

- float32: atol 1e-4, rtol 2e-5. The embedded model (logits up to ~20) drifts by ~1.5e-5 in
  onnxruntime; SmolLM2-135M (30 blocks, logits ~20) by up to 2e-4 on a left-padded batch, where
  the bound is 1e-4 + 2e-5 * 20 = 5e-4. Routing must be identical.
- float16: atol 1e-2, rtol 8 * 2**-10 = 2**-7 (eight float16 ulps of the largest logit). The
  embedded model's float16 graph drifts by 0.010-0.020 at logits ~21 (bound 0.17); SmolLM2-135M's
  (30 blocks) by 0.087 at logits ~30 (bound 0.25). At least 99% of routing decisions must agree
  with the float32 reference: a score within float16 rounding of a block's k-th score or
  threshold may flip.
- bfloat16: atol 8e-2, rtol 8 * 2**-7 = 2**-4 (eight bfloat16 ulps); 99% routing agreement.
- int8 (``--quantize int8``: 8-bit weights, float32 activations and routing): atol 5e-2, rtol
  2**-4. SmolLM2-135M's int8 graph drifts by 1.08 at prefill logits ~31 (its dense model quantized
  the same way by 1.18: 8-bit weights move the logits by ~4% of their scale); the embedded model's
  by 0.11 at ~24. 99% routing agreement.

Greedy tokens must be identical in every case; a reduced-precision export (float16, bfloat16, int8)
may instead agree on at least as many as the dense model exported in that precision
(``token_floor``, the job's dense baseline).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    """``atol``/``rtol`` of the logit check; ``routing_agreement``: the fraction of routing decisions
    that must agree with the reference (1.0: every routing output identical)."""

    atol: float
    rtol: float
    routing_agreement: float = 1.0

    def bound(self, scale: float) -> float:
        """The largest |logit difference| allowed where the reference's logits reach ``scale``."""
        return self.atol + self.rtol * scale

    @property
    def exact_routing(self) -> bool:
        return self.routing_agreement >= 1.0

    def describe(self) -> str:
        """One line for the terminal: the criterion as it was applied."""
        routing = "routing identical" if self.exact_routing else f"routing agreement >= {self.routing_agreement:.0%}"
        return f"atol {self.atol:.0e} + rtol {self.rtol:.1e} * max|ref| per step, {routing}"


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(atol=1e-4, rtol=2e-5),
    "float16": Tolerance(atol=1e-2, rtol=2**-7, routing_agreement=0.99),
    "bfloat16": Tolerance(atol=8e-2, rtol=2**-4, routing_agreement=0.99),
    "int8": Tolerance(atol=5e-2, rtol=2**-4, routing_agreement=0.99),
}
DEFAULT_ATOL = DEFAULT_TOLERANCES["float32"].atol
DEFAULT_RTOL = DEFAULT_TOLERANCES["float32"].rtol


def tolerance_for(dtype: str = "float32", atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The default criterion of an export in ``dtype`` (a canonical name, or 'int8' for a quantized
    one), ``atol``/``rtol`` overriding."""
    base = DEFAULT_TOLERANCES[dtype]
    return Tolerance(
        atol=base.atol if atol is None else atol,
        rtol=base.rtol if rtol is None else rtol,
        routing_agreement=base.routing_agreement,
    )
