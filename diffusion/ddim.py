"""diffusers' DDIM, stepping to the previous timestep it actually set.

``diffusers.DDIMScheduler.step`` takes the previous timestep as ``timestep - N // steps`` (N training
timesteps). With trailing spacing (the pipeline's: the first step starts at pure noise) the timesteps are
``round(N - i N / steps) - 1``, so whenever ``steps`` does not divide N (64, 128, 256, 512 of N = 1000)
each step jumps further than the update assumes: with the exact clean estimate of Gaussian data, 512
steps end with a sample mean off by 0.7 data standard deviations (``tests/test_pipeline.py``).
:class:`StepwiseDDIMScheduler` is DDIM (Song et al. 2021, arXiv:2010.02502, eq. 12) with the previous
timestep read from ``self.timesteps``; the sampler swaps it in for diffusers' class
(:func:`stepwise_ddim`), so saved pipelines keep the diffusers config they had. It also takes custom
timesteps, so DDIM can step at a learned training density's quantiles.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor


class StepwiseDDIMScheduler(DDIMScheduler):
    """:class:`diffusers.DDIMScheduler` whose ``step`` goes to the next of its own timesteps."""

    def set_timesteps(self, num_inference_steps: int | None = None, device=None,
                      timesteps: list[int] | None = None) -> None:
        """diffusers' spacing for ``num_inference_steps``, or the given strictly decreasing ``timesteps``
        (the sampler's steps at the training density's quantiles); the update follows either."""
        if timesteps is None:
            return super().set_timesteps(num_inference_steps, device=device)
        ts = [int(t) for t in timesteps]
        if not ts or any(a <= b for a, b in zip(ts, ts[1:])) or ts[-1] < 0 or ts[0] >= self.config.num_train_timesteps:
            raise ValueError(f"timesteps must decrease strictly within [0, {self.config.num_train_timesteps}), "
                             f"got {ts}")
        self.num_inference_steps = len(ts)
        self.timesteps = torch.tensor(ts, dtype=torch.long, device=device)

    def previous_timestep(self, timestep) -> int:
        """The timestep after ``timestep`` in ``self.timesteps`` (-1 after the last: alpha = final alpha)."""
        ts = self.timesteps.tolist()
        i = ts.index(int(timestep))
        return ts[i + 1] if i + 1 < len(ts) else -1

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True):
        if self.num_inference_steps is None:
            raise ValueError("run set_timesteps before step")
        t, prev = int(timestep), self.previous_timestep(timestep)
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        b_t = 1 - a_t
        kind = self.config.prediction_type
        if kind == "sample":
            x0, eps = model_output, (sample - a_t.sqrt() * model_output) / b_t.sqrt()
        elif kind == "epsilon":
            x0, eps = (sample - b_t.sqrt() * model_output) / a_t.sqrt(), model_output
        elif kind == "v_prediction":
            x0, eps = a_t.sqrt() * sample - b_t.sqrt() * model_output, a_t.sqrt() * model_output + b_t.sqrt() * sample
        else:
            raise ValueError(f"prediction_type {kind!r} is not one of 'sample', 'epsilon', 'v_prediction'")
        if self.config.thresholding:
            x0 = self._threshold_sample(x0)
        elif self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        std = eta * self._get_variance(t, prev).sqrt()
        if use_clipped_model_output:
            eps = (sample - a_t.sqrt() * x0) / b_t.sqrt()
        prev_sample = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps  # eq. 12
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                              dtype=model_output.dtype)
            prev_sample = prev_sample + std * variance_noise
        if not return_dict:
            return prev_sample, x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


def stepwise_ddim(sched):
    """``sched``, or its :class:`StepwiseDDIMScheduler` twin when it is diffusers' DDIM."""
    if type(sched) is DDIMScheduler:
        return StepwiseDDIMScheduler.from_config(sched.config)
    return sched
