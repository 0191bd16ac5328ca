"""Samplers that are not diffusers schedulers: the Langevin corrector and a
predictor-corrector loop (Song et al. 2021, "Score-Based Generative Modeling
through SDEs", Algorithm 5, VP form).

Signature convention (k-diffusion): ``sample_x(model_fn, x, schedule, *, generator=None,
callback=None)`` where ``model_fn(x, t) -> x0_hat`` and ``x`` is the initial noise.
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


@torch.no_grad()
def sample_pc(
    model_fn: X0Fn, x: torch.Tensor, schedule: NoiseSchedule, *, steps: int = 32, corrector_steps: int = 1,
    snr: float = 0.1, generator: torch.Generator | None = None, callback=None,
) -> tuple[torch.Tensor, int]:
    """Predictor-corrector sampling: DDIM (deterministic, x0 form) predictor on a uniform time
    grid from t=1 to 0, then ``corrector_steps`` Langevin steps at each new time.
    Returns the clean sample and the NFE."""
    ts = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    nfe = 0
    b = x.shape[0]
    for i in range(steps):
        t, s = ts[i].expand(b).to(x.device), ts[i + 1].expand(b).to(x.device)
        x0 = model_fn(x, t)
        nfe += 1
        a_t, s_t = (v.to(x.dtype)[:, None, None] for v in schedule.alpha_sigma(t))
        a_s, s_s = (v.to(x.dtype)[:, None, None] for v in schedule.alpha_sigma(s))
        eps = (x - a_t * x0) / s_t
        x = a_s * x0 + s_s * eps  # DDIM step (eta = 0)
        if i + 1 < steps and corrector_steps > 0:
            x, n = langevin_correct(model_fn, x, s, schedule, steps=corrector_steps, snr=snr, generator=generator)
            nfe += n
        if callback is not None:
            callback({"i": i, "t": float(ts[i + 1]), "x": x, "x0": x0})
    return x, nfe
