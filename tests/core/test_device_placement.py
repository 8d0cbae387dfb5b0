"""Device placement: the routed model lives wholly on the Hugging Face model's device.

CI has no GPU, so the check uses the ``meta`` device: a parameter, buffer or freshly made tensor
left on the CPU while the model is elsewhere makes these tests fail just as it fails on CUDA
(landed main's defect: the schedule's RouterBank stayed on the CPU when the model moved)."""

from __future__ import annotations

import pytest
import torch

from ftp_export.devices import resolve_device, torch_dtype
from ftp_export.errors import FTPError
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.schedule import new_schedule


def _schedule(config):
    n = config.num_hidden_layers
    return new_schedule(config, [0.0] + [0.5] * (n - 2) + [1.0], decode_thresholds=[None] + [0.1] * (n - 1))


@pytest.fixture()
def meta_model(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), attn_implementation="eager")
    return model.to("meta").eval()


def test_every_parameter_and_buffer_follows_the_model(meta_model):
    routed = RoutedCausalLM(meta_model, _schedule(meta_model.config))
    where = {name: t.device.type for name, t in [*routed.named_parameters(), *routed.named_buffers()]}
    assert where and set(where.values()) == {"meta"}, {k: v for k, v in where.items() if v != "meta"}
    assert all(p.dtype == torch.float32 for p in routed.routers.parameters())
    assert routed.device.type == "meta"


def test_routed_prefill_and_decode_run_on_the_models_device(meta_model):
    """Every tensor the forward makes must be on the model's device: a CPU one fails on meta."""
    import torch.fx.experimental._config as fx_config
    from transformers import DynamicCache

    routed = RoutedCausalLM(meta_model, _schedule(meta_model.config)).eval()
    ids = torch.zeros(2, 12, dtype=torch.int64, device="meta")
    mask = torch.ones(2, 13, dtype=torch.int64, device="meta")
    # meta has no data, so nonzero (decode's threshold selection) needs a stand-in count
    with torch.no_grad(), fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        cache = DynamicCache()
        out = routed(ids, mask[:, :12], past_key_values=cache, mode="prefill")
        step = routed(ids[:, :1], mask, torch.full((2, 1), 12, device="meta"), past_key_values=cache, mode="decode")
    assert out.logits.device.type == "meta" and out.logits.shape == (2, 12, meta_model.config.vocab_size)
    assert step.logits.device.type == "meta" and step.logits.shape == (2, 1, meta_model.config.vocab_size)


def test_router_float32_with_a_reduced_precision_model(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.bfloat16, attn_implementation="eager")
    routed = RoutedCausalLM(model.eval(), _schedule(model.config))
    assert {p.dtype for p in routed.routers.parameters()} == {torch.float32}
    assert {p.dtype for p in routed.hf.parameters()} == {torch.bfloat16}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_a_gpu_is_one_clear_error():
    with pytest.raises(FTPError, match="no CUDA device"):
        resolve_device("cuda")


def test_bad_device_and_dtype_names():
    with pytest.raises(FTPError, match="not a device"):
        resolve_device("gpu0")
    with pytest.raises(FTPError, match="choose one of"):
        torch_dtype("float64")
    assert resolve_device("cpu") == torch.device("cpu")
