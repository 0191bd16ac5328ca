"""The latent likelihood bound against an exact answer: a two-point latent toy in closed form."""

import math

import numpy as np
import pytest
import torch

from latentlm.diffusion.likelihood import latent_bound
from latentlm.diffusion.schedules import NoiseSchedule
from latentlm.errors import InputError


def toy(m: float, gamma: float, schedule: NoiseSchedule, t0: float):
    """Texts A / B encode to z0 = +m / -m (one latent, width 1); the decoder gives
    p(A | z) = sigmoid(gamma z); the denoiser is Bayes-optimal for the two points,
    so the model's marginal at t0 is the mixture 1/2 N(+-alpha0 m, sigma0^2)."""

    def x0_fn(z_t, t):
        a, s = (v.to(z_t.dtype)[:, None, None] for v in schedule.alpha_sigma(t))
        return m * torch.tanh(a * m * z_t / s**2)

    def decoder_nll(z):  # text A
        return -torch.nn.functional.logsigmoid(gamma * z).flatten(1).sum(1)

    a0, s0 = (float(v) for v in schedule.alpha_sigma(torch.tensor(t0)))
    z = torch.linspace(-12, 12, 200001, dtype=torch.float64)
    dens = 0.5 * (torch.exp(-((z - a0 * m) ** 2) / (2 * s0**2)) + torch.exp(-((z + a0 * m) ** 2) / (2 * s0**2)))
    dens = dens / (s0 * math.sqrt(2 * math.pi))
    p_a = float((torch.sigmoid(gamma * z / a0) * dens).sum() * (z[1] - z[0]))
    return x0_fn, decoder_nll, -math.log(p_a)


def quadrature_bound(m, gamma, schedule, t0, x0_fn, decoder_nll):
    """The same bound by deterministic quadrature (Gauss-Hermite in eps, trapezoid in t)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(120)
    eps = torch.tensor(nodes)
    w = torch.tensor(weights / weights.sum())
    a0, s0 = (float(v) for v in schedule.alpha_sigma(torch.tensor(t0)))
    rec = float((w * decoder_nll(((a0 * m + s0 * eps) / a0).reshape(-1, 1, 1))).sum())
    t = torch.linspace(t0, 1, 20001, dtype=torch.float64)
    a, sig = schedule.alpha_sigma(t)
    z_t = (a[:, None] * m + sig[:, None] * eps[None, :])[..., None]  # (T, E, 1)
    err = ((m - x0_fn(z_t.reshape(-1, 1, 1), t.repeat_interleave(len(eps)))) ** 2).reshape(len(t), len(eps))
    inner = (err * w[None, :]).sum(1)
    integrand = 0.5 * -schedule.d_log_snr_dt(t) * schedule.log_snr(t).exp() * inner
    diff = float(torch.trapezoid(integrand, t))
    a1, s1 = (float(v) for v in schedule.alpha_sigma(torch.tensor(1.0)))
    prior = 0.5 * (a1**2 * m**2 + s1**2 - 1 - math.log(s1**2))
    return rec + diff + prior


@pytest.mark.parametrize("m, gamma", [(1.0, 3.0), (1.5, 1.0), (0.7, 8.0)])
@pytest.mark.parametrize("name", ["cosine", "shifted-cosine"])
def test_bound_never_below_exact_and_tightens_with_samples(m, gamma, name):
    schedule = NoiseSchedule(name)
    t0 = 0.05
    x0_fn, decoder_nll, exact = toy(m, gamma, schedule, t0)
    z0 = torch.full((1, 1, 1), m)
    bound = quadrature_bound(m, gamma, schedule, t0, x0_fn, decoder_nll)
    assert bound >= exact - 1e-6, (bound, exact)  # the bound is never below the exact value
    assert bound - exact < 1.0  # and not vacuous
    ses = []
    for n in (64, 1024, 16384):
        terms = latent_bound(z0, decoder_nll, x0_fn, schedule, t0=t0, n_samples=n, samples_per_call=1024,
                             generator=torch.Generator().manual_seed(n))
        ses.append(float(terms.stderr[0]))
        assert abs(float(terms.total[0]) - bound) < 4 * ses[-1], (n, float(terms.total[0]), bound)
        assert float(terms.total[0]) + 4 * ses[-1] >= exact
    assert ses[0] > ses[1] > ses[2]  # the estimate tightens as samples grow


@pytest.mark.parametrize("block_size", [None, 2])
def test_draws_per_call_change_nothing_but_speed(block_size):
    """Draws stacked along the batch (7 a call, the last call 6) give the one-draw-a-call bound: the same
    noise, times and rows, three latent rows of different values (block-causal: a time per block)."""
    schedule, m = NoiseSchedule("cosine"), 1.0
    _, decoder_nll, _ = toy(m, 3.0, schedule, 0.05)
    z0 = torch.tensor([1.0, -1.0, 0.5]).reshape(3, 1, 1).repeat(1, 4, 1)  # (rows, latents, 1)

    def x0_fn(z_t, t):  # the two-point denoiser at each latent's time
        t = t if t.dim() == 2 else t[:, None]
        a, s = (v.to(z_t.dtype)[..., None] for v in schedule.alpha_sigma(t.repeat_interleave(4 // t.shape[1], 1)))
        return m * torch.tanh(a * m * z_t / s**2)

    one, stacked = (latent_bound(z0, decoder_nll, x0_fn, schedule, t0=0.05, n_samples=20, block_size=block_size,
                                 samples_per_call=k, generator=torch.Generator().manual_seed(3)) for k in (1, 7))
    for name in ("reconstruction", "diffusion", "prior", "stderr"):
        assert torch.allclose(getattr(one, name), getattr(stacked, name), rtol=1e-6), name
    with pytest.raises(InputError, match="samples_per_call"):
        latent_bound(z0, decoder_nll, x0_fn, schedule, t0=0.05, samples_per_call=0)


def test_schedule_identities():
    for name in ("cosine", "shifted-cosine"):
        s = NoiseSchedule(name)
        t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
        a, sig = s.alpha_sigma(t)
        assert torch.allclose(a**2 + sig**2, torch.ones_like(t))
        assert torch.allclose(s.t_of_log_snr(s.log_snr(t)), t)
        h = 1e-6
        num = (s.log_snr(t + h) - s.log_snr(t - h)) / (2 * h)
        assert torch.allclose(s.d_log_snr_dt(t), num, rtol=1e-4)
        assert (s.log_snr(t)[1:] < s.log_snr(t)[:-1]).all()  # noise grows with t
    assert float(NoiseSchedule("shifted-cosine").log_snr(torch.tensor(0.5))) < float(NoiseSchedule("cosine").log_snr(torch.tensor(0.5)))
    betas = NoiseSchedule("cosine").discrete_betas(1000)
    a2 = torch.cumprod(1 - betas, 0)
    a, _ = NoiseSchedule("cosine").alpha_sigma(torch.arange(1, 1001, dtype=torch.float64) / 1000)
    assert torch.allclose(a2, a**2, rtol=1e-3, atol=1e-6)


def two_point(schedule: NoiseSchedule, m: float, bias=0.0):
    """Bayes-optimal x0_hat for z0 in {+m, -m} with prior log-odds ``bias`` for +m (per latent)."""

    def x0(z_t, t):
        a, s = schedule.alpha_sigma(t)
        return m * torch.tanh(a * m * z_t / s**2 + bias / 2)

    return x0


@pytest.mark.parametrize("q", [0.5, 0.8])
def test_bound_chained_over_blocks_never_below_exact_and_tightens(q):
    """Two one-latent blocks: block 1 is +-m at 1/2 each; block 2 repeats the sign of block 1 with
    probability q (its denoiser reads the clean block 1). Text (A, A) = (+m, +m); each block decoded alone
    by p(A | z) = sigmoid(gamma z). The exact -log p = -log p(A) - log p(A | A) in closed form."""
    schedule, t0, m, gamma = NoiseSchedule("cosine"), 0.05, 1.0, 3.0
    bias = math.log(q / (1 - q))
    x0_1, dec, exact_1 = toy(m, gamma, schedule, t0)
    x0_2 = two_point(schedule, m, bias)  # block 2 given a clean block 1 of sign +

    a0, s0 = (float(v) for v in schedule.alpha_sigma(torch.tensor(t0)))
    z = torch.linspace(-12, 12, 200001, dtype=torch.float64)
    dens = q * torch.exp(-((z - a0 * m) ** 2) / (2 * s0**2)) + (1 - q) * torch.exp(-((z + a0 * m) ** 2) / (2 * s0**2))
    dens = dens / (s0 * math.sqrt(2 * math.pi))
    exact = exact_1 - math.log(float((torch.sigmoid(gamma * z / a0) * dens).sum() * (z[1] - z[0])))
    quad = quadrature_bound(m, gamma, schedule, t0, x0_1, dec) + quadrature_bound(
        m, gamma, schedule, t0, lambda z_t, t: x0_2(z_t, t[:, None, None]), dec)
    assert exact <= quad < exact + 2.0, (quad, exact)

    z0 = torch.full((1, 2, 1), m)

    def x0_fn(z_t, t):  # t: one time per block (b, 2); block 2 conditioned on the clean block 1 (+m)
        assert t.shape[1] == 2
        b1 = two_point(schedule, m)(z_t[:, :1].double(), t[:, :1, None].double())
        b2 = x0_2(z_t[:, 1:].double(), t[:, 1:, None].double())
        return torch.cat([b1, b2], 1).float()

    ses = []
    for n in (64, 1024, 4096):
        terms = latent_bound(z0, dec, x0_fn, schedule, t0=t0, n_samples=n, block_size=1, samples_per_call=1024,
                             generator=torch.Generator().manual_seed(n))
        ses.append(float(terms.stderr[0]))
        assert abs(float(terms.total[0]) - quad) < 4 * ses[-1], (n, float(terms.total[0]), quad)
        assert float(terms.total[0]) + 4 * ses[-1] >= exact
    assert ses[0] > ses[1] > ses[2]
    # the context matters: block 2 scored without block 1 (a q = 1/2 denoiser) gets a looser bound
    if q != 0.5:
        assert 2 * quadrature_bound(m, gamma, schedule, t0, x0_1, dec) > quad + 0.1
