"""Runtimes that run exported graphs the way their apps do: one greedy-generation interface
(prefill, then decode steps) over onnxruntime (:mod:`.ort`), AOTInductor packages (:mod:`.aoti`)
and TensorRT engines (:mod:`.tensorrt`). Parity, bench and eval drive exports through these."""
