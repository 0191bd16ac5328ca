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
