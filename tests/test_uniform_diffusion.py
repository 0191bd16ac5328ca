"""The uniform-state model (duo): its loss learns, its bound is a bound, it trains, loads, generates and
is refused what does not apply, through the library's commands."""

import pytest
import torch

from latentlm.baselines.uniform_diffusion import (
    UniformDiffusionLM,
    generate,
    nll_bound,
    uniform_loss,
)
from latentlm.cli import main
from latentlm.errors import InputError
from latentlm.eval.models import UniformAdapter, load_language_model


@pytest.fixture
def model():
    torch.manual_seed(0)
    return UniformDiffusionLM(vocab_size=12, dim=32, depth=1, n_heads=4, max_seq_len=32, cond_dim=16,
                              loss_steps=50)


def test_loss_is_finite_and_learns_a_constant_sequence(model):
    batch = {"input_ids": torch.full((8, 16), 5)}
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = None
    for _ in range(40):
        loss = uniform_loss(model, batch).loss
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and float(loss.detach()) < first / 2
    mean, se = nll_bound(model, torch.full((1, 16), 5), n_samples=64)
    other, _ = nll_bound(model, torch.tensor([[3, 7] * 8]), n_samples=64)
    assert 0 < float(mean[0]) < float(other[0]) and float(se[0]) > 0


def test_conditional_bound_scores_only_the_continuation(model):
    x = torch.tensor([[3, 4, 5, 6, 7, 8]])
    full, _ = nll_bound(model, x, n_samples=128)
    cond, _ = nll_bound(model, x, prefix_len=3, n_samples=128)
    assert 0 < float(cond[0]) < float(full[0])
    with pytest.raises(InputError):
        nll_bound(model, x, prefix_len=6)


def test_generate_keeps_the_prompt_and_rejects_bad_options(model):
    prompt = torch.tensor([[3, 4], [0, 5]])
    mask = torch.tensor([[1, 1], [0, 1]])
    new, nfe = generate(model, prompt, 6, steps=4, prompt_mask=mask, generator=torch.Generator().manual_seed(0))
    assert new.shape == (2, 6) and nfe == 4 and int(new.max()) < 12
    psi, _ = generate(model, prompt, 6, steps=4, decoder="psi", corrector=0.0, prompt_mask=mask,
                      generator=torch.Generator().manual_seed(0))
    assert torch.equal(new, psi)  # no corrector: ancestral, draw for draw
    for bad, match in ((dict(decoder="llada"), "unknown decoder 'llada' for uniform-state"),
                       (dict(decoder="psi", corrector=1.5), "corrector must be in"),
                       (dict(steps=0), "steps must be in"), (dict(temperature=0.0), "temperature")):
        with pytest.raises(InputError, match=match):
            generate(model, prompt, 4, **bad)


def test_duo_trains_loads_and_generates_through_the_cli(synthetic_files, tmp_path, capsys):
    out = tmp_path / "duo"
    assert main(["train", "duo", "--preset", "cpu-tiny", "--data", str(synthetic_files / "train.jsonl"),
                 "--valid", str(synthetic_files / "valid.jsonl"), "--tokenizer", str(synthetic_files / "tokenizer"),
                 "--out", str(out), "--set", "train.steps=4", "--set", "model.dim=32", "--set", "model.depth=1",
                 "--set", "model.loss_steps=20"]) == 0
    lm = load_language_model(out)
    assert isinstance(lm, UniformAdapter) and not lm.exact
    assert lm.nll(["once upon a time there was a cat."], n_samples=4).nats_per_token > 0
    capsys.readouterr()
    assert main(["generate", "--model", str(out), "once upon a time", "--decoder", "psi", "--corrector", "0.3",
                 "--num-inference-steps", "4", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.startswith("once upon a time")
    assert main(["generate", "--model", str(out), "hi", "--guidance-scale", "2"]) == 2
    assert "does not apply to" in capsys.readouterr().err
    assert main(["generate", "--model", str(out), "hi", "--decoder", "llada", "--num-inference-steps", "2"]) == 2
    assert "unknown decoder 'llada'" in capsys.readouterr().err


def test_the_curriculum_feeds_the_relaxed_input_for_its_first_calls_only(model):
    from latentlm.baselines.uniform_diffusion import UniformLossConfig

    cfg = UniformLossConfig(curriculum_steps=3, curriculum_tau_start=0.1, curriculum_tau_end=0.01)
    batch = {"input_ids": torch.randint(0, 12, (4, 10))}
    taus = [uniform_loss(model, batch, cfg).metrics.get("curriculum_tau") for _ in range(5)]
    assert taus[0] == pytest.approx(0.1) and taus[2] == pytest.approx(0.01) and taus[3:] == [None, None]
    assert int(model.training_calls) == 5
    model.eval()
    assert "curriculum_tau" not in uniform_loss(model, batch, cfg).metrics and int(model.training_calls) == 5
    soft = torch.nn.functional.one_hot(batch["input_ids"], 12).float()
    t = torch.full((4,), 0.3)
    assert torch.allclose(model(soft, t), model(batch["input_ids"], t), atol=1e-5)  # one-hot weights = ids
