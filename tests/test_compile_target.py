"""--target compile: AOTInductor packages load without the model code and match eager PyTorch
(logits, routing, greedy tokens) with the onnx target's tolerances."""

from __future__ import annotations

import torch

from ftp_export.calibration import calibrate_decode_thresholds
from ftp_export.compile.target import export_target
from ftp_export.parity import run_parity
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.schedule import new_schedule, uniform_sparsity
from tests.test_onnx_parity import ATOL, _assert_report, _cases


def test_aoti_packages_match_eager(tiny_model, tmp_path):
    n = tiny_model.config.num_hidden_layers
    routed = RoutedCausalLM(tiny_model, new_schedule(tiny_model.config, uniform_sparsity(n, 0.4))).eval()
    calibrate_decode_thresholds(routed, torch.randint(3, 259, (4, 48), generator=torch.Generator().manual_seed(2)), prompt_len=24)
    result = export_target(routed, tmp_path, req=None, log=lambda s: None)
    assert (tmp_path / "decoder_model.pt2").is_file() and (tmp_path / "decoder_with_past_model.pt2").is_file()
    assert result.manifest["graphs"]["decode"]["inputs"][3] == "past_key_values.0.key"
    report = run_parity(routed, result.generator, _cases(new_tokens=12), atol=ATOL)
    _assert_report(report)
