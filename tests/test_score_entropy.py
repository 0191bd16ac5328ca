"""Score entropy (SEDD): its minimum at the true ratios, and the agreement of its absorbing case with MDLM."""

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
