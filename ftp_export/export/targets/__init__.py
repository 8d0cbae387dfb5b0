"""Export targets: ``onnx`` (:mod:`.onnx`), ``trt`` (:mod:`.trt`), ``compile`` (:mod:`.aoti`).
Importing this package registers them, in this order (:mod:`.base` holds the registry)."""

# isort: off
from ftp_export.export.targets import onnx, trt, aoti  # noqa: F401 - each registers its target
# isort: on
from ftp_export.export.targets.base import REGISTRY, Target, TargetResult, get_target, register


def target_names() -> list[str]:
    return list(REGISTRY)


__all__ = ["REGISTRY", "Target", "TargetResult", "get_target", "register", "target_names"]
