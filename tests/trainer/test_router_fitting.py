"""Step 2a: per-token skip costs and routers fitted to them (tiny random Llama)."""

import pytest
import torch

from ftp_export.evaluation.metrics import kl_per_token
from ftp_export_trainer.router_fitting import RouterFitConfig, fit_routers
from ftp_export_trainer.skip_costs import skip_costs


def _skip_one(model, ids, block, token, eps=1.0):
    """Logits with one token skipping a fraction ``eps`` of one block (eps=1: its output is its input)."""
    layer = model.model.layers[block]

    def hook(module, args, kwargs, out):
        h_in = args[0] if args else kwargs["hidden_states"]
        h_out = out[0] if isinstance(out, tuple) else out
        h_out = h_out.clone()
        h_out[:, token] -= eps * (h_out[:, token] - h_in[:, token])
        return (h_out, *out[1:]) if isinstance(out, tuple) else h_out

    handle = layer.register_forward_hook(hook, with_kwargs=True)
    try:
        return model(input_ids=ids, use_cache=False).logits
    finally:
        handle.remove()


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@torch.no_grad()
def test_skip_costs_are_the_second_order_kl_of_skipping(tiny_model):
    """cost[b, t] = lim KL(skip a fraction eps of token t's update in block b) / eps^2, summed
    over positions; the Monte Carlo Fisher estimate must match it token by token. The full skip
    (eps = 1) is far outside the quadratic regime on this random model but must still rank alike."""
    seq, eps = 16, 0.05
    ids = torch.randint(0, 259, (1, seq), generator=torch.Generator().manual_seed(1))
    costs = skip_costs(tiny_model, ids, samples=512, batch_size=1, seed=0)
    assert costs.shape == (4, 1, seq) and bool((costs >= 0).all())
    dense = tiny_model(input_ids=ids, use_cache=False).logits
    for block in (1, 2):
        local = torch.stack([kl_per_token(_skip_one(tiny_model, ids, block, t, eps), dense).sum() / eps**2 for t in range(seq)])
        ratio = costs[block, 0] / local
        assert bool((ratio > 0.75).all() and (ratio < 1.33).all()), ratio
        assert _spearman(costs[block, 0], local) > 0.85
        full = torch.stack([kl_per_token(_skip_one(tiny_model, ids, block, t), dense).sum() for t in range(seq)])
        assert _spearman(costs[block, 0], full) > 0.3


def test_skip_costs_do_not_depend_on_batching(tiny_model):
    ids = torch.randint(0, 259, (3, 12), generator=torch.Generator().manual_seed(2))
    a = skip_costs(tiny_model, ids, samples=2, batch_size=3, seed=5)
    b = skip_costs(tiny_model, ids, samples=2, batch_size=3, seed=5)
    assert torch.equal(a, b)
    assert a.shape == (4, 3, 12)


def test_fitted_routers_keep_the_tokens_that_cost_most_to_skip(tiny_model):
    """Costs rising with position: the fitted routers must keep the *last* tokens (the static
    router keeps the first ones), whatever the sparsity factor says."""
    n_seq, seq = 4, 16
    ids = torch.randint(0, 259, (n_seq, seq), generator=torch.Generator().manual_seed(3))
    pos = torch.arange(seq, dtype=torch.float32)
    costs = torch.exp(0.5 * pos).expand(4, n_seq, seq).clone()
    sparsity = [0.0, 0.5, 0.75, 0.5]
    bank, explained = fit_routers(tiny_model, sparsity, costs, ids, RouterFitConfig(steps=300), seed=0)
    assert explained[0] is None and all(e is not None and e > 0.95 for e in explained[1:])
    from ftp_export.routed.model import RoutedCausalLM
    from ftp_export.schedule import new_schedule

    out = RoutedCausalLM(tiny_model, new_schedule(tiny_model.config, sparsity, routers=bank))(ids)
    for b, s in enumerate(sparsity):
        if s > 0:
            k = round((1 - s) * seq)
            assert out.routing[b].indices.tolist() == [list(range(seq - k, seq))] * n_seq
    from ftp_export.routing.factors import router_features

    # a fixed attention signal: an unseeded random one made the test depend on the tests run before it
    feats = router_features(torch.full((1, seq), 0.5), pos.long().unsqueeze(0), torch.tensor([seq]), torch.ones(1, seq, dtype=torch.bool), 0.1)
    top = [[set(bank(b, feats.index_fill(-1, torch.tensor([3]), s)).topk(seq // 2).indices[0].tolist()) for s in (0.1, 0.5, 0.9)]
           for b in (1, 2, 3)]
    assert all(sets == [set(range(seq // 2, seq))] * 3 for sets in top), top


def test_negative_fit_steps_are_refused(tmp_path, capsys):
    from ftp_export_trainer.cli import main

    assert main(["--sparsity", "0.4", "--fit-steps", "-1", "-o", str(tmp_path / "x.json")]) == 2
    assert "--fit-steps" in capsys.readouterr().err


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])


def test_step_2a_fits_every_free_block():
    """A block step 1 left dense or dropped is routed in step 2a's forward (so its router is fitted);
    routed blocks keep their sparsity, blocks that are not free stay as they are."""
    from ftp_export_trainer.router_step import FIT_DENSE, FIT_DROPPED, fit_sparsity

    assert fit_sparsity([0.0, 0.0, 1.0, 0.4, 1.0], [1, 2, 3]) == [0.0, FIT_DENSE, FIT_DROPPED, 0.4, 1.0]
    assert 0 < FIT_DENSE < 0.5 < FIT_DROPPED < 1
