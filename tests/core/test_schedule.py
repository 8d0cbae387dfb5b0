"""Schedule JSON + router weights: round trip and every validation error users can hit."""

from __future__ import annotations

import json

import pytest
import torch

from ftp_export.architectures import fingerprint
from ftp_export.errors import ScheduleError
from ftp_export.schedule import load_schedule, new_schedule, save_schedule, uniform_sparsity


@pytest.fixture()
def saved(tmp_path, tiny_model):
    sch = new_schedule(tiny_model.config, uniform_sparsity(4, 0.3), decode_thresholds=[None, 0.5, 0.25, 0.125])
    return save_schedule(sch, tmp_path / "s30.json")


def _edit(path, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def test_round_trip(saved, tiny_model):
    sch = load_schedule(saved)
    assert sch.block_sparsity == pytest.approx([0.0, 0.4, 0.4, 0.4])
    assert abs(sch.target_sparsity - 0.3) < 1e-6
    assert sch.format_version == 2 and sch.decode_thresholds.values == [None, [0.5], [0.25], [0.125]]
    sch.check_model(fingerprint(tiny_model.config))
    w = saved.with_name("s30.routers.safetensors")
    assert w.is_file()
    ref = new_schedule(tiny_model.config, [0.0] * 4).routers.state_dict()
    for k, v in sch.routers.state_dict().items():
        assert torch.equal(v, ref[k])


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda d: d.update(block_sparsity=d["block_sparsity"][:3]), "has 3 entries but the model has 4 blocks"),
        (lambda d: d["block_sparsity"].__setitem__(2, 1.2), "block_sparsity[2]"),
        (lambda d: d["block_sparsity"].__setitem__(1, -0.1), "block_sparsity[1]"),
        (lambda d: d["block_sparsity"].__setitem__(1, "x"), "block_sparsity[1]"),
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d["router"].update(sha256="0" * 64), "sha256"),
        (lambda d: d["router"].update(weights="missing.safetensors"), "not found"),
        (lambda d: d["router"].update(hidden=32), "router.hidden"),
        (lambda d: d.update(decode_thresholds=[None]), "decode_thresholds"),
        (lambda d: d["decode_thresholds"].update(context_lengths=[64, 32]), "strictly increasing"),
        (lambda d: d["decode_thresholds"]["per_block"].__setitem__(1, [0.5, 0.1]), "per_block[1]"),
        (lambda d: d["decode_thresholds"]["per_block"].__setitem__(2, ["nan"]), "per_block[2]"),
        (lambda d: d["decode_thresholds"].pop("per_block"), "per_block"),
        (lambda d: d["base_model"]["fingerprint"].pop("rope"), "fingerprint.rope"),
        (lambda d: d.update(target_sparsity=0.9), "target_sparsity"),
        (lambda d: d["base_model"]["fingerprint"].pop("hidden_size"), "fingerprint.hidden_size"),
    ],
)
def test_invalid_fields_name_the_field(saved, mutate, needle):
    _edit(saved, mutate)
    with pytest.raises(ScheduleError) as err:
        load_schedule(saved)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(ScheduleError, match="not valid JSON"):
        load_schedule(bad)


def test_tampered_weights(saved):
    w = saved.with_name("s30.routers.safetensors")
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ScheduleError, match="modified"):
        load_schedule(saved)


def test_wrong_model(saved, tmp_path):
    from transformers import LlamaConfig

    other = LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ScheduleError, match="hidden_size=64 but this model has hidden_size=32"):
        load_schedule(saved).check_model(fingerprint(other))


def test_uniform_sparsity_keeps_block0_dense_and_mean():
    s = uniform_sparsity(6, 0.4)
    assert s[0] == 0.0 and abs(sum(s) / 6 - 0.4) < 1e-12
    with pytest.raises(ScheduleError):
        uniform_sparsity(2, 0.6)  # block 1 alone would need 1.2


def test_non_finite_router_weights_are_refused(saved):
    """NaN scores would sort as ties and route by position alone; a matching sha256 is no excuse."""
    from safetensors.torch import load_file, save_file

    from ftp_export.schedule import sha256_file

    w = saved.with_name("s30.routers.safetensors")
    tensors = load_file(str(w))
    tensors["blocks.2.fc1.weight"][0, 0] = float("nan")
    save_file(tensors, str(w))
    _edit(saved, lambda d: d["router"].__setitem__("sha256", sha256_file(w)))
    with pytest.raises(ScheduleError, match=r"NaN or inf \(first: 'blocks.2.fc1.weight'\)"):
        load_schedule(saved)


@pytest.mark.parametrize("target", [1.0, None])
def test_all_blocks_dropped_is_refused_on_load(saved, target):
    def drop_all(doc):
        doc["block_sparsity"] = [1.0] * 4
        doc.pop("target_sparsity")
        if target is not None:
            doc["target_sparsity"] = target

    _edit(saved, drop_all)
    with pytest.raises(ScheduleError) as err:
        load_schedule(saved)
    assert "no block would run" in str(err.value) and "\n" not in str(err.value)


def test_all_blocks_dropped_is_refused_by_new_schedule_and_the_routed_model(tiny_model):
    from ftp_export.routed.model import RoutedCausalLM

    with pytest.raises(ScheduleError, match="no block would run"):
        new_schedule(tiny_model.config, [1.0] * 4)
    sch = new_schedule(tiny_model.config, [0.0, 1.0, 1.0, 1.0])  # one block left: allowed
    RoutedCausalLM(tiny_model, sch)
    sch.block_sparsity[0] = 1.0  # reached otherwise (edited in memory)
    with pytest.raises(ScheduleError, match="no block would run"):
        RoutedCausalLM(tiny_model, sch)
