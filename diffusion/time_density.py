"""The density of a denoiser's training times, and where a sampler's steps fall outside it.

A denoiser learns only the times t it is trained at. The training times are drawn as
``sample_times`` (diffusion/losses.py) says: uniform, or logit-normal t = sigmoid(m + s n),
n ~ N(0, 1), with a share ``uniform_share`` of the rows drawn uniform instead (a mixture that keeps
mass at every t). The same description, saved with the pipeline (``training_times`` in its config),
gives the density here, so a pipeline can say before sampling which of its steps the denoiser
hardly ever trained at.
"""

from __future__ import annotations

import math
import warnings

import torch

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


def time_density_spec(sampling: str, mean: float = 0.0, std: float = 1.0, uniform_share: float = 0.0) -> dict:
    """The description saved with a pipeline (JSON): the training loss's time settings."""
    return {"sampling": sampling, "mean": float(mean), "std": float(std), "uniform_share": float(uniform_share)}


def time_cdf(spec: dict, t: torch.Tensor) -> torch.Tensor:
    """P(T <= t) under the training density ``spec`` (a :func:`time_density_spec`), for t in [0, 1]."""
    t = t.double().clamp(0.0, 1.0)
    if spec["sampling"] == "uniform":
        return t
    logit = torch.log(t.clamp_min(1e-12)) - torch.log1p(-t.clamp_max(1 - 1e-12))
    ln = 0.5 * (1 + torch.erf((logit - spec["mean"]) / (spec["std"] * math.sqrt(2))))
    share = spec.get("uniform_share", 0.0)
    return share * t + (1 - share) * ln


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
            + (f"({spec['mean']:g}, {spec['std']:g})" if spec["sampling"] != "uniform" else "")
            + (f" with {spec['uniform_share']:g} uniform" if spec.get("uniform_share") else "")
            + "): its estimates there are untrained. Train with times that cover the sampler's steps "
            "(loss.time_uniform_share, a broader loss.time_std).", UntrainedTimesWarning, stacklevel=3)
    return bad
