"""The oracle router (ftp_export/evaluation/oracle.py): routing by the scored text's own skip costs."""

import pytest
import torch

from ftp_export.evaluation.metrics import kl_per_token
from ftp_export.evaluation.oracle import ORACLE_TITLE, OracleScores, oracle_method, oracle_scores
from ftp_export.routed.model import RoutedCausalLM
from ftp_export.routing.selection import topk_select
from ftp_export.schedule import new_schedule

SPARSITY = [0.0, 0.5, 0.5, 0.5]


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 259, (2, 24), generator=torch.Generator().manual_seed(5))


def test_routes_by_the_given_scores(tiny_model, ids):
    hf = tiny_model
    bank = OracleScores(4)
    model = RoutedCausalLM(hf, new_schedule(hf.config, SPARSITY, routers=bank)).eval()
    bank.scores = torch.randn(4, *ids.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(ids, mode="prefill")
    valid = torch.ones_like(ids, dtype=torch.bool)
    for b in (1, 2, 3):
        expected, _ = topk_select(bank.scores[b], valid, model.q16[b])
        assert torch.equal(out.routing[b].indices, expected)
    bank.scores = None
    with pytest.raises(RuntimeError, match="not set"):
        model(ids, mode="prefill")


def test_oracle_beats_the_reversed_oracle_and_the_static_router(default_model):
    """On the embedded (trained) model, skipping the cheapest tokens by their measured costs moves
    the output far less than skipping the costliest ones, and less than the static router."""
    from transformers import AutoTokenizer

    from ftp_export.architectures import DEFAULT_MODEL_DIR

    hf = default_model
    tok = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    text = ["The quick brown fox jumps over the lazy dog while the farmer watches from the porch of his house.",
            "In the beginning of the century, the city grew quickly as new railways connected it to the coast."]
    ids = torch.tensor([tok(t)["input_ids"][:48] for t in text])
    n = hf.config.num_hidden_layers
    sp = [0.0] + [0.4] * (n - 1)
    method = oracle_method(hf, sp, samples=4)
    assert method.name == ORACLE_TITLE and method.decoder is None
    with torch.no_grad():
        dense = hf(ids).logits
        oracle = method.forward(ids, None)
        again = method.forward(ids, None)
        bank = OracleScores(n)
        reversed_model = RoutedCausalLM(hf, new_schedule(hf.config, sp, routers=bank)).eval()
        bank.scores = -oracle_scores(hf, ids, samples=4)
        worst = reversed_model(ids, mode="prefill").logits
        static = RoutedCausalLM(hf, new_schedule(hf.config, sp)).eval()(ids, mode="prefill").logits
    assert torch.equal(oracle, again)  # the costs' sampling is seeded
    kl = {name: float(kl_per_token(x, dense).mean()) for name, x in (("oracle", oracle), ("worst", worst), ("static", static))}
    assert 0 < kl["oracle"] < 0.5 * kl["worst"] and kl["oracle"] < kl["static"], kl


def test_padded_batches_cost_nothing_at_padding(tiny_model, ids):
    """Left padding: no real token attends to a pad, and pads' own predictions are left out, so a
    pad's skip cost is exactly 0 and the oracle scores padded batches (the eval's task items)."""
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    scores = oracle_scores(tiny_model, ids, samples=2, attention_mask=mask)
    assert torch.all(scores[:, 0, :5] == torch.log(torch.tensor(1e-30)))
    assert torch.all(scores[:, :, 5:] > -60)
    method = oracle_method(tiny_model, SPARSITY, samples=2)
    with torch.no_grad():
        assert torch.isfinite(method.forward(ids, mask)).all()
