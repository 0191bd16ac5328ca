"""Score entropy (SEDD, Lou, Meng & Ermon 2024, "Discrete Diffusion Modeling by Estimating the Ratios of the
Data Distribution", arXiv:2310.16834): the discrete analogue of score matching, learning the concrete
score s_theta(x_t)_y ~ p_t(y) / p_t(x_t) for the single-token changes y of x_t.

Denoising score entropy at one position with noisy token x_t and clean token x0 (eq. 9), for a forward
rate matrix Q with total noise sigma(t)::

    L = sigma'(t) sum_{y != x_t} Q(x_t, y) [ s_y - r_y log s_y + K(r_y) ],   r_y = p_t(y | x0) / p_t(x_t | x0),
    K(a) = a (log a - 1)

which is >= 0 with equality at s = r, and whose integral over t bounds -log p(x0) (Theorem 3.6).

Absorbing transitions (x -> mask at rate 1): only masked positions have changes, to every y != mask,
and r_y = 1(y = x0) / (e^sigma - 1). With the log-linear schedule of MDLM (sigma(t) = -log(1 - t)),
sigma' / (e^sigma - 1) = 1 / t, and with scores normalised as s_y = p_theta(y | x_t) / (e^sigma - 1)
(SUBS: a distribution over the clean token) the loss is exactly (1 / t) (-log p_theta(x0 | x_t)): MDLM's
NELBO. So the absorbing case of SEDD with normalised scores *is* MDLM (:mod:`.masked_diffusion`), and is
not trained twice here; :func:`absorbing_score_entropy` takes any scores, normalised or not, and
``tests/test_score_entropy.py`` checks the agreement.

Uniform transitions (the uniform-state process of Duo, with SEDD's unnormalised scores) are a model of their
own, :mod:`.score_entropy_diffusion`: below are their loss, their Tweedie tau-leaping step and their bound.
"""

from __future__ import annotations

import math

import torch

from latentlm.baselines.uniform_process import sample_forward


def k_term(ratio: torch.Tensor) -> torch.Tensor:
    """K(a) = a (log a - 1), with K(0) = 0: the constant that makes score entropy zero at s = r."""
    return torch.where(ratio > 0, ratio * (ratio.clamp_min(1e-30).log() - 1), torch.zeros_like(ratio))


def score_entropy(log_score: torch.Tensor, ratio: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """sum_y w_y [s_y - r_y log s_y + K(r_y)] over the last axis, for log scores (..., K), the true ratios
    r (..., K) and transition weights w (..., K) (Q(x_t, y); 0 where y is not a change of x_t)."""
    cross = torch.where(ratio > 0, ratio * log_score, torch.zeros_like(log_score))  # 0 log 0 = 0
    terms = log_score.exp() - cross + k_term(ratio)
    if weight is not None:
        terms = torch.where(weight > 0, terms * weight, torch.zeros_like(terms))
    return terms.sum(-1)


def absorbing_score_entropy(log_score: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, mask_id: int,
                            t: torch.Tensor) -> torch.Tensor:
    """Denoising score entropy of absorbing diffusion with the log-linear schedule (sigma = -log(1 - t)),
    per position (b, s): log scores (b, s, K) of the changes of each masked position to every token but
    the mask; 0 at unmasked positions (no change is possible). ``t`` (b,)."""
    b, s, k = log_score.shape
    sigma = -torch.log1p(-t.double())[:, None, None]  # (b, 1, 1)
    dsigma = 1 / (1 - t.double())[:, None, None]
    r = torch.nn.functional.one_hot(x0, k).double() / torch.expm1(sigma)  # r_y = 1(y = x0) / (e^sigma - 1)
    allowed = torch.ones(k, dtype=torch.float64, device=log_score.device)
    allowed[mask_id] = 0.0  # a masked token changes to any token but the mask
    loss = dsigma[..., 0] * score_entropy(log_score.double(), r, allowed)
    return torch.where(x_t == mask_id, loss, torch.zeros_like(loss))


# ----------------------------------------------------------------------------- uniform transitions
#
# Uniform transitions at rate sigma'(t) / K to every other token (Q = 11^T / K - I) give the marginal
# p_t(v | x0) = alpha_t 1(v = x0) + (1 - alpha_t) / K with alpha_t = e^{-sigma(t)}: the uniform-state
# process of :mod:`.uniform_process`. With its log-linear alpha_t = 1 - t, sigma'(t) = 1 / alpha_t. Every
# token can change (weights 1 / K), and the true ratios r_y = p_t(y | x0) / p_t(x_t | x0) take two values
# per position, so the loss needs one sum over the vocabulary.

T_MAX = 1 - 1e-3  # the last time trained and sampled (alpha = 1e-3, SEDD's eps): sigma' stays finite


def uniform_score_entropy(log_score: torch.Tensor, x0: torch.Tensor, z_t: torch.Tensor,
                          alpha_t: torch.Tensor) -> torch.Tensor:
    """Denoising score entropy of uniform transitions, sigma'(t) (1 / K) sum_{y != z_t} [s_y - r_y log s_y
    + K(r_y)], per position (b, s), for log scores (b, s, K) of z_t (b, s) with clean ids x0 (b, s) at
    signal levels ``alpha_t`` (b, 1). Its integral over t in [0, 1] bounds -log p(x0) (SEDD, Theorem 3.6)."""
    k = log_score.shape[-1]
    ls = log_score.double()
    a = alpha_t.double()
    b = (1 - a) / k
    ls_z = ls.gather(-1, z_t[..., None])[..., 0]
    ls_x = ls.gather(-1, x0[..., None])[..., 0]
    sum_s = torch.exp(torch.logsumexp(ls, -1)) - ls_z.exp()  # sum over y != z_t of s_y
    sum_ls = ls.sum(-1) - ls_z
    same = x0 == z_t
    r_same = b / (a + b)  # every y != z_t when z_t = x0
    r_clean = (a + b) / b.clamp_min(1e-300)  # y = x0 when z_t != x0 (the other y: ratio 1, K(1) = -1)
    cross = torch.where(same, r_same * sum_ls, sum_ls + (r_clean - 1) * ls_x)
    const = torch.where(same, (k - 1) * k_term(r_same.expand_as(sum_s)), k_term(r_clean.expand_as(sum_s)) - (k - 2))
    return (sum_s - cross + const) / (k * a)


def uniform_score_entropy_dense(log_score: torch.Tensor, x0: torch.Tensor, z_t: torch.Tensor,
                                alpha_t: torch.Tensor) -> torch.Tensor:
    """:func:`uniform_score_entropy` from the explicit ratios and :func:`score_entropy` (the reference)."""
    k = log_score.shape[-1]
    a = alpha_t.double()[..., None]
    p = a * torch.nn.functional.one_hot(x0, k).double() + (1 - a) / k  # p_t(. | x0)
    r = p / p.gather(-1, z_t[..., None])
    weight = 1 - torch.nn.functional.one_hot(z_t, k).double()  # rate 1 / K to every y != z_t (scaled below)
    return score_entropy(log_score.double(), r, weight) / (k * a[..., 0])


def uniform_prior_kl(alpha_end: float, vocab_size: int) -> float:
    """KL(p_{T_MAX}(. | x0) || uniform) per position: what stopping at alpha = ``alpha_end`` > 0 adds to the
    bound (a prior that is not exactly the forward process's end)."""
    k, a = vocab_size, alpha_end
    b = (1 - a) / k
    return (a + b) * math.log((a + b) * k) + (k - 1) * b * math.log(b * k)


def tweedie_probs(log_score: torch.Tensor, z_t: torch.Tensor, alpha_s: torch.Tensor,
                  alpha_t: torch.Tensor) -> torch.Tensor:
    """The Tweedie tau-leaping step of uniform transitions (SEDD, eq. 19), the distribution of z_s (..., K)
    given z_t (...) and its log scores (..., K), alpha_s >= alpha_t broadcast to (..., 1)::

        p(z_s = y) ~ [exp(-(sigma_t - sigma_s) Q) s]_y exp((sigma_t - sigma_s) Q)(z_t, y),  s_{z_t} = 1

    With exact scores of a one-position marginal it is the exact reverse step (the posterior of
    :func:`.uniform_process.posterior`); negative entries of an inexact one are clipped to 0."""
    k = log_score.shape[-1]
    onehot = torch.nn.functional.one_hot(z_t, k).double()
    s = torch.where(onehot > 0, torch.ones_like(onehot), log_score.double().exp())
    a = (alpha_t / alpha_s).double()  # exp(-(sigma_t - sigma_s))
    back = s / a + (1 - 1 / a) / k * s.sum(-1, keepdim=True)  # exp(-dQ) s
    forward = a * onehot + (1 - a) / k  # exp(dQ)(z_t, .)
    probs = (back * forward).clamp_min(0)
    return probs / probs.sum(-1, keepdim=True)


def dse_draw(score_fn, x: torch.Tensor, vocab_size: int, t: torch.Tensor, *, weight: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw of the denoising score entropy of each row of x (b, s) at times t (b,): z_t ~ q(. | x),
    ``score_fn(z_t, t) -> log scores`` (b, s, K), summed over positions (times ``weight`` (b, s) when given).
    With t ~ U(0, T_MAX), T_MAX times its mean plus :func:`uniform_prior_kl` per position bounds -log p(x)."""
    a = (1 - t.double())[:, None]
    z_t = sample_forward(x, a.float(), vocab_size, generator)
    dse = uniform_score_entropy(score_fn(z_t, t.float()), x, z_t, a)
    if weight is not None:
        dse = dse * weight
    return dse.sum(-1)
