"""The Langevin corrector of predictor-corrector sampling (Song et al. 2021, "Score-Based
Generative Modeling through Stochastic Differential Equations", arXiv:2011.13456, Algorithm 5,
VP form). The predictor is any diffusers scheduler: ``LatentDiffusionPipeline(...,
corrector_steps=N)`` runs N corrector steps after each of its steps.

Signature convention (k-diffusion): ``f(model_fn, x, ..., schedule, *, generator=None)`` where
``model_fn(x, t) -> x0_hat`` for latents x (b, n, d) at times t (b,).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from latentlm.diffusion.schedules import NoiseSchedule

X0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def score_from_x0(x: torch.Tensor, x0_hat: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Score of q(z_t): -(z_t - alpha_t x0_hat) / sigma_t^2."""
    return -(x - alpha * x0_hat) / sigma**2


def langevin_correct(
    model_fn: X0Fn, x: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, *, steps: int = 1,
    snr: float = 0.1, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """``steps`` Langevin MCMC steps at time t (b,) with the signal-to-noise step rule:
    eps = 2 (snr * ||z|| / ||score||)^2 * alpha_t^2 (Song et al. 2021, Alg. 5, VP).
    Returns the corrected x and the number of network evaluations."""
    alpha, sigma = (v.to(x.dtype)[:, None, None] for v in schedule.alpha_sigma(t))
    for _ in range(steps):
        score = score_from_x0(x, model_fn(x, t), alpha, sigma)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        grad_norm = score.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
        noise_norm = noise.flatten(1).norm(dim=1)[:, None, None]
        step = 2 * (snr * noise_norm / grad_norm) ** 2 * alpha**2
        x = x + step * score + (2 * step).sqrt() * noise
    return x, steps
