"""How much of the data's spread does each sampler keep when its clean estimate is exact?

    python benchmarks/sampler_spread.py --model runs/ts/denoiser [--steps 8 32 128 512] [--samples 400]

The saved pipeline's schedule and schedulers, with its denoiser replaced by the exact clean estimate of
Gaussian latents N(mu, s^2): mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (z_t - alpha mu). A sampler without
error draws the data's spread s; what it loses at a step count is the sampler's own share of any loss of
diversity, with no network involved. Prints a table of sample std / s and the largest error of the mean
(in units of s) per scheduler and step count.
"""

from __future__ import annotations

import argparse
import warnings

import torch

from latentlm.loading import load_pipeline
from latentlm.pipeline_latent_diffusion import SCHEDULERS, make_scheduler


def spread(pipe, sampler: str, steps: int, samples: int, s: float, n_latents: int = 2) -> tuple[float, float]:
    """(sample std / s, max |sample mean - mu| / s) of ``samples`` draws with the exact estimate."""
    pipe.scheduler = make_scheduler(sampler, pipe.denoiser)
    d = pipe.denoiser.config.latent_dim
    mu = torch.randn(n_latents, d, generator=torch.Generator().manual_seed(1))

    def exact(z_t, t, *a, **kw):
        alpha, sigma = (v.float()[:, None, None] for v in pipe.denoiser.schedule.alpha_sigma(t))
        return mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (z_t - alpha * mu)

    pipe.predict_x0 = exact
    k = pipe.autoencoder.config.tokens_per_latent
    x = pipe([""] * samples, max_new_tokens=n_latents * k, num_inference_steps=steps, mode="parallel",
             generator=torch.Generator().manual_seed(3), output_type="latent").latents
    return float(x.std(0).mean()) / s, float((x.mean(0) - mu).abs().max()) / s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a saved LatentDiffusionPipeline folder (its schedule is used)")
    p.add_argument("--steps", type=int, nargs="+", default=[8, 32, 128, 512])
    p.add_argument("--samples", type=int, default=400)
    p.add_argument("--std", type=float, default=0.5, help="the data's standard deviation per dimension")
    args = p.parse_args()
    warnings.simplefilter("ignore")  # the coverage warning: the estimate here is exact at every t
    pipe = load_pipeline(args.model)
    print(f"| scheduler | {' | '.join(f'{n} steps' for n in args.steps)} |")
    print("|---|" + "---|" * len(args.steps))
    for sampler in SCHEDULERS:
        cells = [spread(pipe, sampler, n, args.samples, args.std) for n in args.steps]
        print(f"| {sampler} | " + " | ".join(f"{sd:.2f} (mean {m:.2f})" for sd, m in cells) + " |")


if __name__ == "__main__":
    main()
