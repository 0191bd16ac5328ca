"""The uniform-state process (latentlm/baselines/uniform_process.py) against answers computed another way:
Bayes' rule by brute force, exact marginals propagated step by step, and the exact likelihood of a tiny
T-step reverse process enumerated over every state."""

import itertools
import math

import pytest
import torch

from latentlm.baselines import uniform_process as U
from latentlm.errors import InputError


def test_forward_process_has_the_stated_marginals():
    k, a = 5, 0.3
    x = torch.full((400_000,), 2)
    z = U.sample_forward(x, torch.tensor(a), k, torch.Generator().manual_seed(0))
    freq = torch.bincount(z, minlength=k).double() / len(z)
    want = U.forward_probs(torch.nn.functional.one_hot(torch.tensor(2), k).double(), torch.tensor(a, dtype=torch.float64))
    assert torch.allclose(freq, want, atol=4 * math.sqrt(0.25 / len(z)))
    assert abs(float(want[2]) - (a + (1 - a) / k)) < 1e-12


def test_posterior_is_bayes_rule():
    torch.manual_seed(0)
    k = 4
    p = torch.rand(k, dtype=torch.float64).softmax(0)
    for a_s, a_t in ((0.9, 0.4), (0.5, 0.5), (1.0, 0.2), (0.3, 0.0)):
        a_s_, a_t_ = torch.tensor(a_s, dtype=torch.float64), torch.tensor(a_t, dtype=torch.float64)
        a_ts = a_t / a_s
        for z_t in range(k):
            # q(z_t | z_s = v) q(z_s = v | p), normalised
            joint = torch.tensor([(a_ts * (v == z_t) + (1 - a_ts) / k) * float(U.forward_probs(p, a_s_)[v])
                                  for v in range(k)], dtype=torch.float64)
            got = U.posterior(p, torch.tensor(z_t), a_s_, a_t_)
            assert torch.allclose(got, joint / joint.sum(), atol=1e-12), (a_s, a_t, z_t)


@pytest.mark.parametrize("kappa", [1.0, 0.6, 0.0])
def test_ancestral_and_psi_steps_keep_the_forward_marginals(kappa):
    """With the exact denoiser of one position (the data distribution pi), every step of T from the
    uniform prior lands on q_{t_i} = alpha pi + (1 - alpha) / K, and the last on pi."""
    torch.manual_seed(1)
    k, steps = 6, 5
    pi = torch.rand(k, dtype=torch.float64).softmax(0)
    d = torch.full((k,), 1 / k, dtype=torch.float64)  # q(z_1): alpha_1 = 0
    for i in range(steps, 0, -1):
        a_t, a_s = U.alpha(torch.tensor(i / steps, dtype=torch.float64)), U.alpha(torch.tensor((i - 1) / steps,
                                                                                               dtype=torch.float64))
        step = torch.stack([U.psi_probs(pi, torch.tensor(z), a_s, a_t, kappa) for z in range(k)])  # (z_t, z_s)
        d = d @ step
        assert torch.allclose(d, U.forward_probs(pi, a_s), atol=1e-12), (kappa, i)
    assert torch.allclose(d, pi, atol=1e-12)


def test_kappa_one_is_the_ancestral_posterior_and_kappa_is_checked():
    p = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    z = torch.tensor(1)
    a_s, a_t = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    assert torch.equal(U.psi_probs(p, z, a_s, a_t, 1.0), U.posterior(p, z, a_s, a_t))
    with pytest.raises(InputError, match="kappa"):
        U.psi_probs(p, z, a_s, a_t, 1.5)


class TableDenoiser:
    """A fixed, arbitrary denoiser of a tiny case: clean-token probabilities for every (z_t, step)."""

    def __init__(self, k: int, length: int, steps: int) -> None:
        g = torch.Generator().manual_seed(3)
        self.k, self.steps = k, steps
        self.table = torch.rand(steps + 1, *([k] * length), length, k, generator=g, dtype=torch.float64).softmax(-1)

    def __call__(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        step = (t.double() * self.steps).round().long()
        return torch.stack([self.table[(int(i), *z.tolist())] for i, z in zip(step, z_t)])


def exact_nll_and_bound(den: TableDenoiser, x: list[int], steps: int) -> tuple[float, float]:
    """-log p(x) of the T-step reverse process (every path enumerated) and its NELBO's exact value."""
    k, n = den.k, len(x)
    states = list(itertools.product(range(k), repeat=n))

    def reverse(z: tuple, i: int) -> dict[tuple, float]:  # p_theta(z_{t_{i-1}} | z_{t_i} = z)
        a_t, a_s = U.alpha(torch.tensor(i / steps, dtype=torch.float64)), U.alpha(
            torch.tensor((i - 1) / steps, dtype=torch.float64))
        p = den(torch.tensor([z]), torch.tensor([i / steps]))[0]
        per_pos = U.posterior(p, torch.tensor(z), a_s, a_t)  # (n, k)
        return {s: math.prod(float(per_pos[j, s[j]]) for j in range(n)) for s in states}

    dist = {z: 1 / len(states) for z in states}  # the uniform prior at t = 1
    for i in range(steps, 0, -1):
        new = dict.fromkeys(states, 0.0)
        for z, w in dist.items():
            for s, q in reverse(z, i).items():
                new[s] += w * q
        dist = new
    nll = -math.log(dist[tuple(x)])
    xt = torch.tensor([x])
    bound = 0.0
    for i in range(1, steps + 1):
        a_t = U.alpha(torch.tensor(i / steps, dtype=torch.float64))
        q_zt = U.forward_probs(torch.nn.functional.one_hot(xt[0], k).double(), a_t)  # (n, k)
        for z in states:
            w = math.prod(float(q_zt[j, z[j]]) for j in range(n))
            a_s = U.alpha(torch.tensor((i - 1) / steps, dtype=torch.float64))
            p = den(torch.tensor([z]), torch.tensor([i / steps]))
            bound += w * float(U.step_kl(xt, torch.tensor([z]), p, a_s, a_t).sum())
    return nll, bound


def test_nelbo_is_never_below_the_exact_nll_and_its_estimate_tightens_with_samples():
    k, steps = 3, 3
    for x in ([0, 2], [1, 1], [2, 0, 1]):
        den = TableDenoiser(k, len(x), steps)
        nll, bound = exact_nll_and_bound(den, x, steps)
        assert bound >= nll - 1e-12  # Jensen
        g = torch.Generator().manual_seed(0)
        errors = []
        for n in (400, 6400):
            draws = U.nelbo_draw(den, torch.tensor([x] * n), k, steps, generator=g)
            mean, se = float(draws.mean()), float(draws.std()) / math.sqrt(n)
            assert abs(mean - bound) < 4 * se + 1e-9, (x, n, mean, bound, se)
            errors.append(se)
        assert errors[1] < errors[0] / 2  # 16x the samples: a quarter of the error


def _exact_one_position_denoiser(pi: torch.Tensor):
    """The exact denoiser when positions are independent with distribution pi: p_theta = pi (the optimum
    of the NELBO at every z_t and t)."""
    def model_fn(z, t):
        return pi.log().expand(*z.shape, -1).float()
    return model_fn


def test_psi_with_zero_corrector_is_ancestral_sampling_draw_for_draw():
    from latentlm.baselines.uniform_decoders import decode_ancestral, decode_psi, prior_state

    torch.manual_seed(0)
    table = torch.randn(7, 7)

    def model_fn(z, t):  # an arbitrary denoiser that reads its input and the time
        return (table[z] * (1 + t[:, None, None])).log_softmax(-1)

    x = torch.tensor([[1, 2, 0, 0, 0, 0], [3, 0, 0, 0, 0, 0]])
    fill = x == 0
    x = prior_state(x, fill, 7, torch.Generator().manual_seed(5))
    a, nfe_a = decode_ancestral(model_fn, x, fill, steps=9, generator=torch.Generator().manual_seed(1))
    b, nfe_b = decode_psi(model_fn, x, fill, steps=9, corrector=0.0, generator=torch.Generator().manual_seed(1))
    c, _ = decode_psi(model_fn, x, fill, steps=9, corrector=0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and nfe_a == nfe_b == 9 and not torch.equal(a, c)
    assert torch.equal(a[~fill], x[~fill])  # the prompt is kept
    with pytest.raises(InputError, match="corrector"):
        decode_psi(model_fn, x, fill, steps=2, corrector=-0.1)


@pytest.mark.parametrize("corrector", [0.0, 0.7])
def test_samplers_land_on_the_data_distribution_with_an_exact_denoiser(corrector):
    from latentlm.baselines.uniform_decoders import decode_psi, prior_state

    pi = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    x = torch.zeros(200, 100, dtype=torch.long)
    fill = torch.ones_like(x, dtype=torch.bool)
    g = torch.Generator().manual_seed(2)
    out, _ = decode_psi(_exact_one_position_denoiser(pi), prior_state(x, fill, 4, g), fill, steps=6,
                        corrector=corrector, generator=g)
    freq = torch.bincount(out.flatten(), minlength=4).double() / out.numel()
    assert torch.allclose(freq, pi, atol=4 * math.sqrt(0.25 / out.numel()))


@pytest.mark.parametrize("k", [4, 60])
def test_the_argmax_of_a_gaussian_diffusion_is_uniform_state_diffusion(k):
    """Duo's duality: argmax(r e_x + eps) has the uniform-state marginal at alpha = gaussian_alpha(r), and
    relaxed_forward's argmax keeps q(z_t | x) at the schedule's alpha while its softmax input tends to it."""
    g = torch.Generator().manual_seed(0)
    n = 60_000
    for r in (0.5, 2.0):
        w = torch.randn(n, k, generator=g, dtype=torch.float64)
        w[:, 1] += r
        hit = float((w.argmax(-1) == 1).double().mean())
        a = float(U.gaussian_alpha(torch.tensor(r), k))
        assert abs(hit - (a + (1 - a) / k)) < 4 * math.sqrt(0.25 / n), (k, r)
    a_t = torch.full((n, 1), 0.4)
    z, soft = U.relaxed_forward(torch.ones(n, 1, dtype=torch.long), a_t, k, tau=1e-4, generator=g)
    freq = torch.bincount(z.flatten(), minlength=k).double() / n
    want = U.forward_probs(torch.nn.functional.one_hot(torch.tensor(1), k).double(), torch.tensor(0.4,
                                                                                           dtype=torch.float64))
    assert torch.allclose(freq, want, atol=4 * math.sqrt(0.25 / n))
    assert torch.equal(soft.argmax(-1), z) and float((soft.max(-1).values > 0.999).double().mean()) > 0.995
    assert torch.allclose(U.gaussian_alpha(U.gaussian_ratio(torch.tensor([0.1, 0.5, 0.9]), k), k),
                          torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), atol=1e-6)


def test_one_pass_kl_equals_the_direct_sum_over_the_vocabulary():
    torch.manual_seed(0)
    for k in (3, 7, 50):
        x = torch.randint(0, k, (6, 9))
        z = torch.where(torch.rand(6, 9) < 0.4, x, torch.randint(0, k, (6, 9)))
        p = torch.rand(6, 9, k, dtype=torch.float64).softmax(-1)
        for a_s, a_t in ((0.9, 0.4), (1.0, 0.3), (0.5, 0.5), (0.2, 0.0), (1.0, 0.0), (0.3, 0.299)):
            args = (torch.full((6, 1, 1), a_s, dtype=torch.float64), torch.full((6, 1, 1), a_t, dtype=torch.float64))
            assert torch.allclose(U.step_kl(x, z, p, *args), U.step_kl_dense(x, z, p, *args), atol=1e-12), (k, a_s)
