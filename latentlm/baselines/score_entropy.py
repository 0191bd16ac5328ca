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
"""

from __future__ import annotations

import torch


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
