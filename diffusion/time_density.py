"""The density of a denoiser's training times, and where a sampler's steps fall outside it.

A denoiser learns only the times t it is trained at. The training times are drawn as
``sample_times`` (diffusion/losses.py) says: uniform; logit-normal t = sigmoid(m + s n),
n ~ N(0, 1); or learned (:class:`TimeWarp`, CDCD's time warping, arXiv:2211.15089), each with a share
``uniform_share`` of the rows drawn uniform instead (a mixture that keeps mass at every t). The same
description, saved with the pipeline (``training_times`` in its config), gives the density here, so
a pipeline can say before sampling which of its steps the denoiser hardly ever trained at.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from latentlm.choices import current_value

# a step counts as untrained when the training density around it is below this share of uniform's
# (logit-normal(0.25, 0.15) falls below it under t = 0.43 and over t = 0.69; logit-normal(0, 1) nowhere in
# 0.03-0.97)
UNTRAINED_SHARE = 0.01
WINDOW = 0.02  # half-width of the interval of t around a step whose training mass is measured
# steps at t >= PURE_NOISE see noise alone (alpha_t < 0.04 on the cosine schedule): the estimate there is
# the one learned just below, and every density vanishing at t = 1 would flag them
PURE_NOISE = 0.98


class UntrainedTimesWarning(UserWarning):
    """A sampler visits times at which the denoiser was hardly trained."""


class TimeWarp(nn.Module):
    """A learned density of training times (CDCD's time warping): a monotone piecewise-linear fit
    F(t) = b + sum of the increments of the bins below t, of the denoiser's error at time t (the x0 error:
    it grows with the noise). Times are drawn with density proportional to dF/dt, so training goes where
    the error changes fastest, which is where the estimate turns from noise into text. The fit's
    parameters live in the denoiser (saved, checkpointed and averaged with it); its loss is added to the
    denoiser's, with the target detached, so its gradient reaches the fit only."""

    def __init__(self, bins: int) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.zeros(bins))  # increments softplus(raw): uniform at the start
        self.bias = nn.Parameter(torch.zeros(()))

    @property
    def bins(self) -> int:
        return self.raw.numel()

    def increments(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw.float()) / self.bins  # (bins,) rise of F over each bin

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """F(t), any shape of times in [0, 1]."""
        inc = self.increments()
        below = torch.cat([inc.new_zeros(1), inc.cumsum(0)])  # F - b at the bins' left edges
        x = t.float().clamp(0, 1) * self.bins
        i = x.floor().long().clamp(max=self.bins - 1)
        return self.bias + below[i] + (x - i) * inc[i]

    def density(self) -> torch.Tensor:
        """The probability of each bin (bins,), proportional to F's rise over it."""
        inc = self.increments().detach()
        return inc / inc.sum()

    def sample(self, u: torch.Tensor) -> torch.Tensor:
        """Times with the learned density from uniforms ``u`` in [0, 1) (inverse CDF; keeps stratification)."""
        return _piecewise_icdf(self.density().to(u.device), u)


def _piecewise_icdf(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF of the density that is p[i] * bins on bin i of [0, 1] (p sums to 1)."""
    cdf = p.double().cumsum(0)
    i = torch.searchsorted(cdf, u.double().clamp(0, 1 - 1e-12), right=True).clamp(max=len(p) - 1)
    start = cdf[i] - p[i].double()
    frac = ((u.double() - start) / p[i].double().clamp_min(1e-30)).clamp(0, 1)
    return ((i + frac) / len(p)).float()


def time_density_spec(sampling: str, mean: float = 0.0, std: float = 1.0, uniform_share: float = 0.0,
                      bins: list[float] | None = None) -> dict:
    """The description saved with a pipeline (JSON): the training loss's time settings; ``bins``: the
    probability of each bin of a learned density (:meth:`TimeWarp.density`)."""
    spec = {"sampling": current_value(sampling), "mean": float(mean), "std": float(std), "uniform_share": float(uniform_share)}
    if bins is not None:
        spec["bins"] = [float(x) for x in bins]
    return spec


def time_cdf(spec: dict, t: torch.Tensor) -> torch.Tensor:
    """P(T <= t) under the training density ``spec`` (a :func:`time_density_spec`), for t in [0, 1]."""
    t = t.double().clamp(0.0, 1.0)
    if spec["sampling"] == "uniform":
        return t
    if spec["sampling"] == "learned":
        if not spec.get("bins"):  # saved before training ended: the density is still uniform
            dist = t
        else:
            p = torch.tensor(spec["bins"], dtype=torch.float64)
            p = p / p.sum()
            below = torch.cat([p.new_zeros(1), p.cumsum(0)])
            x = t * len(p)
            i = x.floor().long().clamp(max=len(p) - 1)
            dist = below[i] + (x - i) * p[i]
    else:
        logit = torch.log(t.clamp_min(1e-12)) - torch.log1p(-t.clamp_max(1 - 1e-12))
        dist = 0.5 * (1 + torch.erf((logit - spec["mean"]) / (spec["std"] * math.sqrt(2))))
    share = spec.get("uniform_share", 0.0)
    return share * t + (1 - share) * dist


def step_times(spec: dict, n: int) -> list[float]:
    """``n`` sampler times spaced by the training density ``spec``, from t = 1 (pure noise) down: the
    (1 - i / n) quantiles, i = 0..n-1, so the steps fall as densely as the training times did."""
    grid = torch.linspace(0, 1, 20_001, dtype=torch.float64)
    cdf = time_cdf(spec, grid)
    u = 1 - torch.arange(n, dtype=torch.float64) / n
    return [float(grid[i]) for i in torch.searchsorted(cdf, u).clamp(max=len(grid) - 1)]


def mass_near(spec: dict, t: torch.Tensor, window: float = WINDOW) -> torch.Tensor:
    """Training mass within ``window`` of each t, as a share of what uniform times would give there."""
    lo, hi = (t - window).clamp(0, 1), (t + window).clamp(0, 1)
    return (time_cdf(spec, hi) - time_cdf(spec, lo)) / (hi - lo).clamp_min(1e-12)


def untrained_times(spec: dict | None, times: list[float]) -> list[float]:
    """The times among ``times`` (below PURE_NOISE) where the training density ``spec`` has under
    UNTRAINED_SHARE of uniform's mass (none when ``spec`` is None: a pipeline saved without its training
    times)."""
    times = [x for x in times if x < PURE_NOISE]
    if not spec or not times:
        return []
    t = torch.tensor(times, dtype=torch.float64)
    return [float(x) for x, m in zip(t, mass_near(spec, t)) if m < UNTRAINED_SHARE]


def warn_untrained(spec: dict | None, times: list[float], what: str) -> list[float]:
    """Warn (UntrainedTimesWarning) when some of a sampler's ``times`` fall where the denoiser hardly
    trained; returns those times."""
    bad = untrained_times(spec, times)
    if bad:
        low = [t for t in bad if float(time_cdf(spec, torch.tensor(t))) < 0.5]  # below the training times
        high = [t for t in bad if t not in low]
        where = " and ".join(([f"t <= {max(low):.2f}"] if low else []) + ([f"t >= {min(high):.2f}"] if high else []))
        warnings.warn(
            f"{len(bad)} of the {len(times)} steps of {what} fall at times the denoiser was hardly trained at "
            f"({where}; its training times: {spec['sampling']}"
            + (f"({spec['mean']:g}, {spec['std']:g})" if spec["sampling"] == "logit-normal" else "")
            + (f" with {spec['uniform_share']:g} uniform" if spec.get("uniform_share") else "")
            + "): its estimates there are untrained. Train with times that cover the sampler's steps "
            "(loss.time_uniform_share, a broader loss.time_std).", UntrainedTimesWarning, stacklevel=3)
    return bad
