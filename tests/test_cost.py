"""Training compute counted from a run's shapes (latentlm.cost)."""

import pytest
import torch

from latentlm.cost import count_training_flops, preset_costs, training_cost
from latentlm.errors import CheckpointError
from latentlm.outputs import LossOutput
from latentlm.recipes import resolve_run_config


def test_count_matches_a_linear_layer_by_hand_and_leaves_no_trace():
    """An embedding then a d x v linear layer: the counted matmuls are forward 2dv and backward 4dv per
    token (gradients of the weight and of the input)."""
    d, v, n = 8, 32, 5
    model = torch.nn.Sequential(torch.nn.Embedding(v, d), torch.nn.Linear(d, v, bias=False))

    def loss(m, batch):
        return LossOutput(m(batch["input_ids"]).logsumexp(-1).mean())

    state = torch.random.get_rng_state()
    flops = count_training_flops(model, loss, n, v)
    assert flops == 6 * d * v * n
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), state)


def test_attention_is_counted_on_the_cpu_as_its_matrix_products():
    """torch's counter has no formula for the CPU's attention kernel (it counts 0 there); ours counts the
    forward as the same attention written as matrix products, the backward as torch counts it on CUDA."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count

    from latentlm.flops import flop_counter

    q, k, v = (torch.randn(2, 4, n, 16, requires_grad=True) for n in (48, 40, 40))
    with FlopCounterMode(display=False) as by_hand:
        torch.softmax(q @ k.transpose(-1, -2) / 4, -1) @ v
    with flop_counter() as forward:
        F.scaled_dot_product_attention(q, k, v)
    assert forward.get_total_flops() == by_hand.get_total_flops() == 2 * (2 * 2 * 4 * 48 * 40 * 16)
    with flop_counter() as both:
        F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(48, 40, dtype=torch.bool).tril()).sum().backward()
    backward = sdpa_backward_flop_count(q.shape, q.shape, k.shape, v.shape)
    assert both.get_total_flops() == forward.get_total_flops() + backward > forward.get_total_flops()


@pytest.mark.slow
def test_a_training_step_counted_on_shapes_only_counts_what_computing_it_counts():
    """count_training_flops does not compute the products it counts (zeros of their shapes instead): for
    every kind a preset trains, the count equals that of the step computed, on random tokens."""
    from latentlm.cost import PRESET_KINDS, _SizeOnly
    from latentlm.flops import flop_counter
    from latentlm.recipes import RunContext, get_recipe, row_length

    tok, ctx = _SizeOnly(800), RunContext()
    small = {"autoencoder": ["model.dim=64", "model.encoder_depth=1", "model.decoder_depth=1"],
             "denoiser": ["model.dim=64"]}
    for kind in PRESET_KINDS:
        recipe = get_recipe(kind)
        cfg = resolve_run_config(kind, "cpu-tiny", overrides=small.get(kind, ["model.dim=64", "model.depth=2"]))
        if kind == "denoiser":
            ae_cfg = resolve_run_config("autoencoder", "cpu-tiny", overrides=small["autoencoder"])
            ctx.autoencoder = get_recipe("autoencoder").build_model(ae_cfg, tok, RunContext()).requires_grad_(False)
        torch.manual_seed(0)
        model, rows = recipe.build_model(cfg, tok, ctx), row_length(recipe, cfg, ctx)
        for seed in (0, 1) if recipe.varying_shapes else (0,):
            ids = torch.randint(3, 800, (1, rows), generator=torch.Generator().manual_seed(seed))
            with torch.random.fork_rng(devices=[]), flop_counter() as computed:
                torch.manual_seed(seed)
                recipe.make_loss(cfg, ctx)(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}).loss.backward()
            model.zero_grad(set_to_none=True)
            counted = count_training_flops(model, recipe.make_loss(cfg, ctx), rows, 800, {0, 1, 2}, seed=seed)
            assert counted == computed.get_total_flops() > 0, kind


def test_cost_grows_with_the_network_and_the_budget():
    costs = preset_costs("cpu-tiny", 800)
    deeper = preset_costs("cpu-tiny", 800, {"ar": ["model.depth=8"], "denoiser": ["train.steps=6000"]})
    assert deeper["ar"].flops_per_token > 1.5 * costs["ar"].flops_per_token
    assert deeper["ar"].trained_params > costs["ar"].trained_params
    assert deeper["denoiser"].flops_per_token == costs["denoiser"].flops_per_token
    assert deeper["denoiser"].total_flops == pytest.approx(
        costs["denoiser"].total_flops * 6000 / resolve_run_config("denoiser", "cpu-tiny")["train"].steps)
    # the denoiser's steps pay the frozen autoencoder's encoding too
    assert costs["denoiser"].frozen_params == costs["autoencoder"].trained_params


def test_a_denoiser_cost_needs_its_autoencoder():
    with pytest.raises(CheckpointError, match="autoencoder"):
        training_cost("denoiser", resolve_run_config("denoiser", "cpu-tiny"), [0] * 800)


def test_a_denoiser_is_counted_on_the_rows_it_trains_on():
    """A denoiser's rows are ``loss.row_lengths`` autoencoder lengths (its ``data.seq_len`` does not say how
    long they are): the count and the tokens use them, as training does, and the count is a mean over
    draws of the continuation length (:data:`SHAPE_DRAWS`), not one draw's."""
    from latentlm.cost import SHAPE_DRAWS, _SizeOnly
    from latentlm.recipes import RunContext, get_recipe, row_length

    tok, recipe = _SizeOnly(800), get_recipe("denoiser")
    ae_cfg = resolve_run_config("autoencoder", "cpu-tiny", overrides=["data.seq_len=64", "model.dim=32"])
    ctx = RunContext(autoencoder=get_recipe("autoencoder").build_model(ae_cfg, tok, RunContext()).requires_grad_(False))
    small = ["data.seq_len=32", "model.dim=32", "model.depth=1"]
    for rows in (1, 2):
        assert row_length(recipe, resolve_run_config("denoiser", "cpu-tiny", overrides=[*small, f"loss.row_lengths={rows}"]),
                          ctx) == 64 * rows
    cfg = resolve_run_config("denoiser", "cpu-tiny", overrides=[*small, "loss.row_lengths=2"])
    cost = training_cost("denoiser", cfg, tok, ctx)
    assert cost.tokens == cfg["train"].steps * cfg["train"].batch_size * 128
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = recipe.build_model(cfg, tok, ctx)
    one = [count_training_flops(model, recipe.make_loss(cfg, ctx), 128, 800, seed=s) for s in range(SHAPE_DRAWS)]
    assert len(set(one)) > 1  # the step's shapes vary from draw to draw
    assert cost.flops_per_token * 128 == pytest.approx(sum(one) / SHAPE_DRAWS)
