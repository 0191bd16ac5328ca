"""Score entropy (SEDD): its minimum at the true ratios, and the agreement of its absorbing case with MDLM."""

import math

import torch

from latentlm.baselines.masked_diffusion import MaskedDiffusionLM, nelbo_terms
from latentlm.baselines.score_entropy import absorbing_score_entropy, score_entropy


def test_score_entropy_is_zero_at_the_true_ratios_and_positive_elsewhere():
    torch.manual_seed(0)
    r = torch.rand(5, 7, dtype=torch.float64) * (torch.rand(5, 7) > 0.3)
    at_truth = score_entropy(r.clamp_min(1e-300).log(), r)
    assert float(at_truth.abs().max()) < 1e-12
    other = score_entropy(torch.randn(5, 7, dtype=torch.float64), r)
    assert bool((other > 0).all())


def test_absorbing_score_entropy_with_normalised_scores_is_mdlms_nelbo():
    """SEDD's absorbing loss with s_y = p_theta(y | x_t) / (e^sigma - 1) equals MDLM's (1/t) cross-entropy,
    position for position, on the same masks."""
    torch.manual_seed(1)
    model = MaskedDiffusionLM(vocab_size=12, dim=32, depth=1, n_heads=4, max_seq_len=16, mask_token_id=2).eval()
    ids = torch.randint(3, 12, (4, 10))
    t = torch.tensor([0.2, 0.5, 0.7, 0.95])
    with torch.random.fork_rng():
        torch.manual_seed(7)
        mdlm = nelbo_terms(model, ids, t)  # (b,): (1/t) sum of masked cross-entropy
    with torch.random.fork_rng():
        torch.manual_seed(7)
        x_t = torch.where(torch.rand(ids.shape) < t[:, None], torch.full_like(ids, 2), ids)
    with torch.no_grad():
        logp = model(x_t).double()  # SUBS: a distribution over the clean token at masked positions
    sigma = -torch.log1p(-t.double())
    log_score = logp - torch.log(torch.expm1(sigma))[:, None, None]
    sedd = absorbing_score_entropy(log_score, ids, x_t, 2, t).sum(-1)
    assert torch.allclose(sedd, mdlm.double(), rtol=1e-5, atol=1e-5)
    # unnormalised scores (SEDD's own parameterisation) cost more than the normalised optimum's value
    worse = absorbing_score_entropy(log_score + 0.3, ids, x_t, 2, t).sum(-1)
    assert bool((worse >= sedd - 1e-9).all())


# ----------------------------------------------------------------------------- uniform transitions

from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

from latentlm.baselines import score_entropy_diffusion as sedd  # noqa: E402
from latentlm.baselines.score_entropy import (  # noqa: E402
    T_MAX,
    tweedie_probs,
    uniform_score_entropy,
    uniform_score_entropy_dense,
)
from latentlm.baselines.uniform_process import posterior  # noqa: E402
from latentlm.errors import InputError  # noqa: E402


def _exact_log_scores(p: torch.Tensor, z: torch.Tensor, alpha_t: torch.Tensor) -> torch.Tensor:
    """log p_t(y) / p_t(z) of a one-position marginal p_t = alpha p + (1 - alpha) / K, per position."""
    q = alpha_t[..., None] * p + (1 - alpha_t[..., None]) / p.shape[-1]
    return q.log() - q.gather(-1, z[..., None]).log()


def test_uniform_score_entropy_in_one_vocabulary_sum_equals_the_direct_sum():
    torch.manual_seed(0)
    k = 9
    x0, z = torch.randint(0, k, (6, 5)), torch.randint(0, k, (6, 5))
    z[:, :2] = x0[:, :2]  # both cases: z_t = x0 and z_t != x0
    for a in (1e-3, 0.2, 0.7, 0.999):
        alpha = torch.full((6, 1), a, dtype=torch.float64)
        ls = torch.randn(6, 5, k, dtype=torch.float64)
        fast, dense = uniform_score_entropy(ls, x0, z, alpha), uniform_score_entropy_dense(ls, x0, z, alpha)
        assert torch.allclose(fast, dense, rtol=1e-9, atol=1e-9), a
        assert bool((fast > 0).all())
        truth = _exact_log_scores(torch.nn.functional.one_hot(x0, k).double(), z, alpha)
        assert float(uniform_score_entropy(truth, x0, z, alpha).abs().max()) < 1e-9  # zero at the true ratios


def test_tweedie_step_with_exact_scores_is_the_exact_reverse_step():
    torch.manual_seed(1)
    k = 7
    p = torch.rand(4, 3, k, dtype=torch.float64).softmax(-1)
    z = torch.randint(0, k, (4, 3))
    for a_s, a_t in ((0.9, 0.5), (1.0, 0.3), (0.2, 1e-3)):
        at = torch.tensor(a_t, dtype=torch.float64)
        ls = _exact_log_scores(p, z, at.expand(4, 3))
        step = tweedie_probs(ls, z, torch.tensor(a_s, dtype=torch.float64), at)
        assert torch.allclose(step, posterior(p, z, torch.tensor(a_s, dtype=torch.float64), at), atol=1e-10)


class _ExactIID:
    """A score model of data whose positions are iid with distribution p: exact scores (or scaled by 1 + err)."""

    def __init__(self, p: torch.Tensor, err: float = 0.0) -> None:
        self.p, self.err = p, err
        self.config = SimpleNamespace(vocab_size=len(p))

    def __call__(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _exact_log_scores(self.p, z, (1 - t.double())[:, None].expand(z.shape)) * (1 + self.err)


def test_the_bound_is_tight_for_exact_scores_never_below_the_nll_and_tightens_with_samples():
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    x = torch.tensor([[0, 1, 4, 0], [2, 3, 0, 4]])
    exact = -p.log()[x].sum(-1)  # -log p(x), positions iid
    mean, se = sedd.nll_bound(_ExactIID(p), x, n_samples=4000)
    assert bool((mean > exact - 4 * se).all()) and bool(((mean - exact).abs() < 4 * se + 0.02).all())
    worse, _ = sedd.nll_bound(_ExactIID(p, err=0.3), x, n_samples=4000)
    assert bool((worse > mean + 0.05).all())  # inexact scores pay for it
    _, se_few = sedd.nll_bound(_ExactIID(p), x, n_samples=64)
    assert bool((se < se_few).all())
    cond, _ = sedd.nll_bound(_ExactIID(p), x, prefix_len=2, n_samples=4000)
    assert bool((cond < mean).all())  # the prompt's tokens are not scored
    with pytest.raises(InputError, match="n_samples"):
        sedd.nll_bound(_ExactIID(p), x, n_samples=1)


def test_tweedie_sampling_with_exact_scores_lands_on_the_data_distribution():
    p = torch.tensor([0.6, 0.25, 0.1, 0.05], dtype=torch.float64)
    model = _ExactIID(p)
    x = torch.randint(0, 4, (4000, 2), generator=torch.Generator().manual_seed(0))
    fill = torch.ones_like(x, dtype=torch.bool)
    out, nfe = sedd.decode_tweedie(model, x, fill, steps=16, generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(out.flatten(), minlength=4).double() / out.numel()
    assert nfe == 16 and torch.allclose(freq, p, atol=0.02)


def test_a_score_entropy_model_trains_and_generates_after_its_prompt():
    torch.manual_seed(0)
    model = sedd.ScoreEntropyLM(vocab_size=12, dim=32, depth=1, n_heads=4, max_seq_len=16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10]])
    before, _ = sedd.nll_bound(model.eval(), x, n_samples=256)
    model.train()
    for _ in range(150):
        out = sedd.score_entropy_loss(model, {"input_ids": x.repeat(8, 1)})
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after, se = sedd.nll_bound(model.eval(), x, n_samples=256)
    other, _ = sedd.nll_bound(model, torch.tensor([[10, 9, 8, 7, 6, 5, 4, 3]]), n_samples=256)
    assert math.isfinite(float(out.loss.detach())) and float(se[0]) > 0
    assert float(after[0]) < 0.6 * float(before[0]) and float(after[0]) < float(other[0])  # it learned the text
    prompt, mask = torch.tensor([[3, 4], [0, 5]]), torch.tensor([[1, 1], [0, 1]])
    new, nfe = sedd.generate(model.eval(), prompt, 6, steps=4, prompt_mask=mask, generator=torch.Generator().manual_seed(0))
    assert new.shape == (2, 6) and nfe == 4 and int(new.max()) < 12
    for bad, match in ((dict(steps=0), "steps must be in"), (dict(max_new_tokens=0), "max_new_tokens")):
        kw = {"max_new_tokens": 4, **bad}
        with pytest.raises(InputError, match=match):
            sedd.generate(model, prompt, kw.pop("max_new_tokens"), **kw)
    assert T_MAX < 1


def test_sedd_trains_loads_and_generates_through_the_cli(synthetic_files, tmp_path, capsys):
    from latentlm.cli import main
    from latentlm.eval.models import ScoreEntropyAdapter, load_language_model

    out = tmp_path / "sedd"
    assert main(["train", "sedd", "--preset", "cpu-tiny", "--data", str(synthetic_files / "train.jsonl"),
                 "--valid", str(synthetic_files / "valid.jsonl"), "--tokenizer", str(synthetic_files / "tokenizer"),
                 "--out", str(out), "--set", "train.steps=4", "--set", "model.dim=32", "--set", "model.depth=1"]) == 0
    lm = load_language_model(out)
    assert isinstance(lm, ScoreEntropyAdapter) and not lm.exact
    assert lm.nll(["once upon a time there was a cat."], n_samples=4).nats_per_token > 0
    capsys.readouterr()
    assert main(["generate", "--model", str(out), "once upon a time", "--num-inference-steps", "4",
                 "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.startswith("once upon a time")
    assert main(["generate", "--model", str(out), "hi", "--decoder", "psi"]) == 2  # a flag of other kinds
    assert "does not apply to" in capsys.readouterr().err
