"""Uniform-state discrete diffusion: the forward process, its posteriors, the Psi-sampler's step and the
discrete-time NELBO, for any denoiser that gives clean-token probabilities p_theta(x0 | z_t).

Forward process over K tokens (Austin et al. 2021, D3PM "uniform"; UDLM, Schiff et al. 2024; Duo, Sahoo
et al. 2025, arXiv:2506.10892), each position independently::

    q(z_t | x) = Cat(alpha_t e_x + (1 - alpha_t) / K),    alpha_t = 1 - t (log-linear, Duo's default)

so any token can be rewritten at any step (unlike masking). With alpha_{t|s} = alpha_t / alpha_s, the
posterior for s < t, written for a distribution p over x (a one-hot x gives the true posterior; the
denoiser's p_theta gives the reverse step p_theta(z_s | z_t))::

    q(z_s = v | z_t, p) = [alpha_t K p_v 1(v = z_t) + (alpha_{t|s} - alpha_t) 1(v = z_t) + (alpha_s - alpha_t) p_v
                           + (1 - alpha_{t|s})(1 - alpha_s) / K] / [alpha_t K p_{z_t} + 1 - alpha_t]

(the product q(z_t | z_s = v) q(z_s = v | p), normalised). At s = 0 it is the posterior over the clean
token, p(x0 = v | z_t) proportional to p_v q(z_t | v).

Psi-sampler step (Deschenaux, Gulcehre & Sahoo, arXiv:2602.21185): a mixture of the ancestral posterior
and a predictor-corrector move that predicts x0 and noises it forward to s, both keeping the marginals
of the forward process when p_theta is exact::

    kappa q(z_s | z_t, p) + (1 - kappa) [alpha_s q(x0 | z_t, p) + (1 - alpha_s) / K]

kappa = 1 is ancestral sampling; the corrector's strength is 1 - kappa.

NELBO of the T-step sampler on times t_i = i / T (t_0 = 0, alpha_0 = 1, q(z_1 | x) uniform = the
prior, so its KL term is 0)::

    -log p(x) <= sum_{i=1}^{T} E_{z_{t_i} ~ q(. | x)} KL(q(z_{t_{i-1}} | z_{t_i}, x) || p_theta(z_{t_{i-1}} | z_{t_i}))

where the i = 1 term is the reconstruction -log p_theta(x | z_{t_1}). :func:`nelbo_draw` estimates it
with one step index i ~ U{1..T} per call (unbiased: T times that step's KL).

Duality (Duo): z_t = argmax(w_t) of a Gaussian diffusion on one-hot vectors, w_t = r e_x + eps with
eps ~ N(0, I), has exactly the uniform-state marginal with

    alpha_t = (K P(r) - 1) / (K - 1),   P(r) = P(argmax w = x) = int phi(z - r) Phi(z)^(K - 1) dz

(:func:`gaussian_alpha`). Duo's curriculum feeds the network the tempered softmax of w_t instead of its
argmax (a low-variance relaxation); :func:`relaxed_forward` draws both at the r whose alpha is the
schedule's, so the NELBO's z_t keeps its distribution and only the network's input changes.
"""

from __future__ import annotations

import torch

from latentlm.errors import InputError


def alpha(t: torch.Tensor) -> torch.Tensor:
    """The log-linear signal level alpha_t = 1 - t."""
    return 1 - t


def forward_probs(p: torch.Tensor, alpha_t: torch.Tensor) -> torch.Tensor:
    """q(z_t | p) (..., K) for a distribution p (..., K) over the clean token: alpha_t p + (1 - alpha_t) / K."""
    return alpha_t * p + (1 - alpha_t) / p.shape[-1]


def sample_forward(ids: torch.Tensor, alpha_t: torch.Tensor, vocab_size: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """z_t ~ q(z_t | x) for token ids (b, s) at signal levels ``alpha_t`` (b, 1): each token kept with
    probability alpha_t, else replaced by a uniform draw over the K tokens (which may be itself)."""
    keep = torch.rand(ids.shape, generator=generator, device=ids.device) < alpha_t
    noise = torch.randint(0, vocab_size, ids.shape, generator=generator, device=ids.device)
    return torch.where(keep, ids, noise)


def posterior(p: torch.Tensor, z_t: torch.Tensor, alpha_s: torch.Tensor, alpha_t: torch.Tensor) -> torch.Tensor:
    """q(z_s | z_t, p) (..., K) for p (..., K) and z_t (...); ``alpha_s``, ``alpha_t`` broadcast to (..., 1)
    with alpha_s >= alpha_t (s earlier, less noisy). alpha_s = 1 gives the posterior over the clean token."""
    k = p.shape[-1]
    at_zt = torch.nn.functional.one_hot(z_t, k).to(p.dtype)
    alpha_ts = alpha_t / alpha_s
    num = (alpha_t * k * p * at_zt + (alpha_ts - alpha_t) * at_zt + (alpha_s - alpha_t) * p
           + (1 - alpha_ts) * (1 - alpha_s) / k)
    den = alpha_t * k * p.gather(-1, z_t[..., None]) + 1 - alpha_t
    return num / den


def psi_probs(p: torch.Tensor, z_t: torch.Tensor, alpha_s: torch.Tensor, alpha_t: torch.Tensor,
              kappa: float) -> torch.Tensor:
    """The Psi-sampler's distribution of z_s: kappa x ancestral posterior + (1 - kappa) x the clean-token
    posterior noised forward to s. ``kappa`` in [0, 1]; 1 is ancestral sampling."""
    if not 0 <= kappa <= 1:
        raise InputError(f"kappa must be in [0, 1] (1: ancestral, no corrector), got {kappa!r}")
    ancestral = posterior(p, z_t, alpha_s, alpha_t)
    if kappa == 1:
        return ancestral
    corrected = forward_probs(posterior(p, z_t, torch.ones_like(alpha_s), alpha_t), alpha_s)
    return kappa * ancestral + (1 - kappa) * corrected


def step_kl(x: torch.Tensor, z_t: torch.Tensor, p: torch.Tensor, alpha_s: torch.Tensor,
            alpha_t: torch.Tensor) -> torch.Tensor:
    """KL(q(z_s | z_t, x) || q(z_s | z_t, p)) at each position (...), in nats, for clean ids x (...), the
    noisy ids z_t (...) and the denoiser's clean-token probabilities p (..., K). At alpha_s = 1 it is the
    reconstruction term -log q(x0 = x | z_t, p).

    One pass over the vocabulary: the true posterior puts the same mass c / D on every token other than x
    and z_t (c = (1 - alpha_{t|s})(1 - alpha_s) / K), so its KL needs the model posterior's log-numerators
    summed over the vocabulary and read at x and z_t only (:func:`step_kl_dense` is the direct sum)."""
    k = p.shape[-1]
    a_t, a_s = (a.to(p.dtype)[..., 0] if a.dim() else a.to(p.dtype) for a in (alpha_t, alpha_s))  # (..., 1) -> (...)
    a_ts = a_t / a_s
    c = (1 - a_ts) * (1 - a_s) / k
    same = (x == z_t).to(p.dtype)
    p_x, p_z = p.gather(-1, x[..., None])[..., 0], p.gather(-1, z_t[..., None])[..., 0]
    # the true posterior's numerators at x and at z_t (one entry when x = z_t), and its normaliser
    true_x = a_t * k * same + (a_ts - a_t) * same + (a_s - a_t) + c
    true_z = (a_ts - a_t) + c  # used when x != z_t
    den_true = a_t * k * same + 1 - a_t
    # the model posterior's numerators: (alpha_s - alpha_t) p_v + c, plus alpha_t K p_z + alpha_ts - alpha_t at z_t
    model_x = (a_s - a_t) * p_x + c + (a_t * k * p_x + a_ts - a_t) * same
    model_z = (a_s - a_t) * p_z + c + a_t * k * p_z + a_ts - a_t
    den_model = a_t * k * p_z + 1 - a_t
    log = torch.log
    # the other K - 1 (x = z_t) or K - 2 tokens: c / D_true (log c - log numerator), from one sum over the vocabulary
    n_rest = k - 2 + same
    rest = torch.zeros_like(p_x)
    if bool((c > 0).any()):
        bulk = log((a_s - a_t)[..., None] * p + c[..., None]).sum(-1)  # sum_v log((alpha_s - alpha_t) p_v + c)
        base_x = log((a_s - a_t) * p_x + c)
        base_z = log((a_s - a_t) * p_z + c)
        rest_log_model = bulk - base_z - (1 - same) * base_x  # over the tokens other than x and z_t
        rest = torch.where(c > 0, c / den_true * (n_rest * log(c.clamp_min(1e-300)) - rest_log_model),
                           torch.zeros_like(rest))
    q_x = true_x / den_true
    q_z = true_z / den_true
    kl = torch.where(q_x > 0, q_x * (log(true_x.clamp_min(1e-300)) - log(model_x)), torch.zeros_like(q_x))
    kl = kl + (1 - same) * torch.where(
        q_z > 0, q_z * (log(true_z.clamp_min(1e-300)) - log(model_z)), torch.zeros_like(q_z))
    return kl + rest - log(den_true) + log(den_model)


def step_kl_dense(x: torch.Tensor, z_t: torch.Tensor, p: torch.Tensor, alpha_s: torch.Tensor,
                  alpha_t: torch.Tensor) -> torch.Tensor:
    """:func:`step_kl` as the direct sum over the vocabulary of both posteriors (the reference)."""
    k = p.shape[-1]
    true = posterior(torch.nn.functional.one_hot(x, k).to(p.dtype), z_t, alpha_s, alpha_t)
    model = posterior(p, z_t, alpha_s, alpha_t)
    ratio = torch.where(true > 0, true * (true.clamp_min(1e-30).log() - model.clamp_min(1e-30).log()),
                        torch.zeros_like(true))
    return ratio.sum(-1)


def nelbo_draw(denoise, x: torch.Tensor, vocab_size: int, steps: int, *, weight: torch.Tensor | None = None,
               generator: torch.Generator | None = None, step: torch.Tensor | None = None,
               relax_tau: float | None = None) -> torch.Tensor:
    """One unbiased draw of the T-step NELBO of each row of x (b, s), in nats: a step i ~ U{1..T} per row
    (or the given ``step`` (b,)), z_{t_i} ~ q(. | x), and T x KL of that step summed over positions
    (times ``weight`` (b, s) when given: 0 for positions not scored). ``denoise(z_t, t) -> p`` gives the
    clean-token probabilities (b, s, K) at times t (b,). With ``relax_tau`` (Duo's curriculum) z_t is the
    argmax of a Gaussian diffusion and ``denoise`` gets its tempered softmax (b, s, K) instead of z_t."""
    b = x.shape[0]
    if step is None:
        step = torch.randint(1, steps + 1, (b,), generator=generator, device=x.device)
    t = step.to(torch.float64) / steps
    s = (step - 1).to(torch.float64) / steps
    a_t, a_s = alpha(t)[:, None], alpha(s)[:, None]
    if relax_tau is None:
        z_t = inputs = sample_forward(x, a_t.to(torch.float32), vocab_size, generator)
    else:
        z_t, inputs = relaxed_forward(x, a_t.to(torch.float32), vocab_size, relax_tau, generator)
    p = denoise(inputs, t.to(torch.float32)).to(torch.float64)
    kl = step_kl(x, z_t, p, a_s[..., None], a_t[..., None])
    if weight is not None:
        kl = kl * weight
    return steps * kl.sum(-1)



def gaussian_alpha(r: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The uniform-state alpha of z = argmax(r e_x + eps) over K = ``vocab_size`` tokens, for signal-to-noise
    ratios r >= 0 (any shape): (K P(r) - 1) / (K - 1) with P(r) = int phi(z - r) Phi(z)^(K-1) dz, by the
    trapezoid rule on a fine grid in float64 (Phi^(K-1) through log Phi, exact for K in the thousands)."""
    r = r.to(torch.float64)
    z = torch.linspace(-12.0, 12.0, 6001, dtype=torch.float64) + r[..., None]
    log_phi_cdf = torch.special.log_ndtr(z)
    density = torch.exp(-0.5 * (z - r[..., None]) ** 2 + (vocab_size - 1) * log_phi_cdf) / (2 * torch.pi) ** 0.5
    p = torch.trapezoid(density, z, dim=-1)
    return ((vocab_size * p - 1) / (vocab_size - 1)).clamp(0, 1)


_RATIO_TABLES: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def gaussian_ratio(alpha_t: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The signal-to-noise ratio r whose argmax has the uniform-state ``alpha_t`` (any shape, in [0, 1)):
    :func:`gaussian_alpha` inverted by interpolation in a monotone table (made once per vocabulary size)."""
    if vocab_size not in _RATIO_TABLES:
        rs = torch.linspace(0.0, 12.0, 4001, dtype=torch.float64)
        _RATIO_TABLES[vocab_size] = (gaussian_alpha(rs, vocab_size), rs)
    alphas, rs = _RATIO_TABLES[vocab_size]
    a = alpha_t.to(torch.float64).clamp(0, float(alphas[-1]))
    idx = torch.searchsorted(alphas, a.reshape(-1)).clamp(1, len(rs) - 1)
    lo, hi = alphas[idx - 1], alphas[idx]
    frac = ((a.reshape(-1) - lo) / (hi - lo).clamp_min(1e-300)).clamp(0, 1)
    return (rs[idx - 1] + frac * (rs[idx] - rs[idx - 1])).reshape(a.shape)


def relaxed_forward(ids: torch.Tensor, alpha_t: torch.Tensor, vocab_size: int, tau: float,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Duo's relaxation: w = r e_x + eps (b, s, K) at the r of ``alpha_t`` (b, 1); returns z_t = argmax w
    (b, s), distributed as q(z_t | x), and softmax(w / ``tau``) (b, s, K), the network's input (one-hot
    of z_t as tau -> 0)."""
    r = gaussian_ratio(alpha_t, vocab_size).to(torch.float32)  # (b, 1)
    w = torch.randn(*ids.shape, vocab_size, generator=generator, device=ids.device)
    w = w + r[..., None] * torch.nn.functional.one_hot(ids, vocab_size).to(w.dtype)
    return w.argmax(-1), (w / tau).softmax(-1)
