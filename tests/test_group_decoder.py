"""The local-AR group decoder: each group's k tokens left to right, every group at once, with an exact
likelihood p(x | z) (its teacher-forced logits) and draws from that same distribution."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from latentlm.autoencoder import TextAutoencoder
from latentlm.errors import ConfigError, InputError

V, K = 5, 3  # a tiny vocabulary: every group of K tokens can be enumerated (125)


def tiny(group_decoder: str, seed: int = 0) -> TextAutoencoder:
    torch.manual_seed(seed)
    ae = TextAutoencoder(vocab_size=V, max_seq_len=2 * K, tokens_per_latent=K, latent_dim=4, dim=16, encoder_depth=1,
                         decoder_depth=1, n_heads=2, group_decoder=group_decoder).eval()
    with torch.no_grad():  # larger than the 0.02 init: logits far from uniform, tokens that shape the next
        ae.head.weight.mul_(3)
        if ae.group_ar is not None:
            ae.group_ar.embed.weight.mul_(50)
    return ae


def group_log_probs(ae: TextAutoencoder, z: torch.Tensor) -> torch.Tensor:
    """log p(x | z) of every possible first group x (V**K,), scored by teacher forcing, second group fixed."""
    groups = torch.tensor(list(itertools.product(range(V), repeat=K)))
    targets = torch.cat([groups, torch.zeros(len(groups), K, dtype=torch.long)], 1)
    with torch.no_grad():
        logits = ae.decode(z.expand(len(groups), -1, -1), targets)
    lp = -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (V**K, 2K)
    return lp[:, :K].sum(1)


@pytest.mark.parametrize("group_decoder", ["local-ar", "parallel"])
def test_the_likelihood_of_every_group_sums_to_one(group_decoder):
    ae = tiny(group_decoder)
    z = torch.randn(1, 2, 4)
    lp = group_log_probs(ae, z)
    assert torch.logsumexp(lp, 0).item() == pytest.approx(0.0, abs=1e-5)
    if group_decoder == "local-ar":  # the joint is not the product of its marginals: tokens depend on each other
        p = lp.exp().view(V, V, V)
        product = p.sum((1, 2))[:, None, None] * p.sum((0, 2))[None, :, None] * p.sum((0, 1))[None, None, :]
        assert (p - product).abs().max() > 1e-3


def test_draws_follow_the_scored_distribution():
    ae = tiny("local-ar")
    z = torch.randn(1, 2, 4)
    exact = group_log_probs(ae, z).exp()
    n = 20_000
    with torch.no_grad():
        draws = ae.decode_tokens(z.expand(n, -1, -1), temperature=1.0, generator=torch.Generator().manual_seed(0))
    index = (draws[:, :K] * torch.tensor([V * V, V, 1])).sum(1)
    freq = torch.bincount(index, minlength=V**K).float() / n
    assert (freq - exact).abs().max() < 0.02  # binomial sd at n = 20,000 is at most 0.0035
    # temperature 0: each token the most likely given the group's tokens before it
    with torch.no_grad():
        greedy = ae.decode_tokens(z)
        assert torch.equal(ae.decode(z, greedy).argmax(-1), greedy)


def test_a_local_ar_autoencoder_round_trips_and_needs_targets(tmp_path):
    ae = tiny("local-ar")
    ae.save_pretrained(tmp_path)
    again = TextAutoencoder.from_pretrained(tmp_path).eval()
    z = torch.randn(2, 2, 4)
    ids = torch.randint(V, (2, 2 * K))
    with torch.no_grad():
        assert torch.equal(ae.decode(z, ids), again.decode(z, ids))
        assert ae(ids).shape == (2, 2 * K, V)  # reconstruction logits, teacher-forced on the input
    with pytest.raises(InputError, match="pass decode\\(latents, targets\\)"):
        ae.decode(z)
    with pytest.raises(InputError, match="targets must be"):
        ae.decode(z, torch.zeros(2, 3 * K, dtype=torch.long))
    with pytest.raises(ConfigError, match="group_decoder"):
        TextAutoencoder(vocab_size=V, group_decoder="tree")


def test_a_pipeline_samples_and_scores_through_a_local_ar_decoder(tiny_tokenizer):
    from latentlm import LatentDiffusionPipeline
    from latentlm.diffusion import LatentDenoiser
    from latentlm.diffusion.likelihood import pipeline_nll_bound
    from latentlm.pipeline_latent_diffusion import make_scheduler

    torch.manual_seed(0)
    ae = TextAutoencoder(vocab_size=len(tiny_tokenizer), max_seq_len=32, latent_dim=8, dim=32, encoder_depth=1,
                         decoder_depth=1, group_decoder="local-ar").eval()
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=8).eval()
    pipe = LatentDiffusionPipeline(tiny_tokenizer, ae, den, make_scheduler("ddim", den))
    out = pipe("lily had", max_new_tokens=12, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    again = pipe("lily had", max_new_tokens=12, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert out.texts == again.texts and out.texts[0].startswith("lily had")
    drawn = pipe("lily had", max_new_tokens=12, num_inference_steps=4, decoder_temperature=1.0,
                 generator=torch.Generator().manual_seed(0))
    assert drawn.texts[0].startswith("lily had")
    ids = tiny_tokenizer("lily had a red kite.", add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
    nats = pipeline_nll_bound(pipe, [ids], n_samples=2, seed=0)[0][0]
    assert 0 < nats < float("inf")
