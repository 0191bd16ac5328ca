"""Muon + AdamW: parameter split, a shared learning-rate schedule, training and exact resume."""

import pytest
import torch
import torch.optim._muon as torch_muon
from diffusers.optimization import get_scheduler

import latentlm.device
from latentlm.baselines.autoregressive import ar_loss
from latentlm.errors import ConfigError
from latentlm.optim import (
    MuonWithAdamW,
    float32_newton_schulz,
    is_hidden_matrix,
    make_optimizer,
    newton_schulz_float32,
)
from latentlm.training import TrainConfig, train

from .scripts.tiny_run import RandomTokens, tiny_model
from .test_training import cfg, same_weights


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = tiny_model()
    opt = make_optimizer(model, "muon", lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    assert isinstance(opt, MuonWithAdamW)
    muon = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    adamw = {id(p) for g in opt.adamw.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in muon) == (p.dim() == 2 and ".blocks." in f".{name}"), name
        assert (id(p) in muon) != (id(p) in adamw), name  # every parameter in exactly one optimizer
    assert any(is_hidden_matrix(n, p) for n, p in model.named_parameters())
    assert not any(is_hidden_matrix(n, p) for n, p in model.named_parameters() if "embed" in n)


def test_one_schedule_sets_both_learning_rates():
    opt = make_optimizer(tiny_model(), "muon", lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    sched = get_scheduler("cosine", opt, num_warmup_steps=2, num_training_steps=10)
    for _ in range(3):
        opt.step()
        sched.step()
    lrs = {g["lr"] for o in (opt.muon, opt.adamw) for g in o.param_groups}
    assert len(lrs) == 1 and 0 < lrs.pop() < 1e-3


def test_muon_overfits_one_batch(tmp_path):
    class OneBatch:
        def batch(self, step):
            return RandomTokens().batch(0)

    r = train(tiny_model(), ar_loss, OneBatch(), cfg(steps=150, ema_decay=0.0, warmup_steps=10, optimizer="muon"),
              tmp_path, progress=False)
    first = r.history[0]["loss"]
    assert first > 3.0 and r.train_loss < 0.1, (first, r.train_loss)


def test_muon_run_resumes_exactly(tmp_path):
    muon = cfg(steps=20, optimizer="muon")
    train(tiny_model(), ar_loss, RandomTokens(), muon, tmp_path / "full", progress=False)
    train(tiny_model(), ar_loss, RandomTokens(), muon, tmp_path / "split", stop_after=8, progress=False)
    rest = train(tiny_model(), ar_loss, RandomTokens(), muon, tmp_path / "split", progress=False)
    assert rest.step == 20 and len(rest.history) == 12  # steps 9..20 only
    assert same_weights(tmp_path / "full", tmp_path / "split")


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="train.optimizer must be one of adamw, muon"):
        TrainConfig(optimizer="sgd").validate()


def test_adamw_is_the_default_and_unchanged():
    opt = make_optimizer(tiny_model(), TrainConfig().optimizer, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    assert type(opt) is torch.optim.AdamW
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_resuming_another_optimizers_checkpoints_is_refused_and_keeps_them(tmp_path):
    adamw = cfg(steps=20, save_every=4)
    train(tiny_model(), ar_loss, RandomTokens(), adamw, tmp_path, stop_after=8, progress=False)
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    config = (tmp_path / "run_config.json").read_text() if (tmp_path / "run_config.json").exists() else None
    with pytest.raises(ConfigError, match="train.optimizer='adamw'.*--set train.optimizer=adamw"):
        train(tiny_model(), ar_loss, RandomTokens(), cfg(steps=20, save_every=4, optimizer="muon"), tmp_path,
              run_config={"changed": True}, progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
    assert ((tmp_path / "run_config.json").read_text() if config is not None else None) == config
    rest = train(tiny_model(), ar_loss, RandomTokens(), adamw, tmp_path, progress=False)  # the right one resumes
    assert rest.step == 20 and len(rest.history) == 12


def test_muon_on_a_model_without_blocks_warns_and_uses_adamw():
    with pytest.warns(UserWarning, match="no 2-D weights under a `blocks` module"):
        opt = make_optimizer(torch.nn.Linear(4, 4), "muon", lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    assert type(opt) is torch.optim.AdamW


@pytest.mark.parametrize("shape", [(48, 16), (16, 48)])
def test_float32_newton_schulz_matches_torchs_bfloat16_one(shape):
    """The float32 orthogonalisation is torch's iteration at a higher precision: same result within bf16."""
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    ours = newton_schulz_float32(g, (3.4445, -4.7750, 2.0315), 5, 1e-7)
    theirs = torch_muon._zeropower_via_newtonschulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7).float()
    assert ours.dtype == g.dtype and ours.shape == g.shape
    assert (ours - theirs).abs().max() < 0.03 * theirs.abs().max()
    s = torch.linalg.svdvals(ours)  # orthogonalised: singular values near 1 (0.5-1.5 by design)
    assert s.min() > 0.4 and s.max() < 1.6


def test_muon_step_uses_float32_only_without_native_bf16(monkeypatch):
    original = torch_muon._zeropower_via_newtonschulz
    seen = []
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz",
                        lambda *a: seen.append("torch") or original(*a))
    opt = make_optimizer(tiny_model(), "muon", lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    for p in opt.muon.param_groups[0]["params"]:
        p.grad = torch.randn_like(p)
    for native in (True, False):
        monkeypatch.setattr(latentlm.device, "cpu_has_native_bf16", lambda native=native: native)
        seen.clear()
        opt.step()
        assert bool(seen) == native  # emulated bf16: torch's bf16 iteration is swapped out
    with float32_newton_schulz(True):
        assert torch_muon._zeropower_via_newtonschulz is newton_schulz_float32
    assert torch_muon._zeropower_via_newtonschulz is not newton_schulz_float32  # restored
