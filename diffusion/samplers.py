"""The latent samplers: functions of one signature, called by :class:`~latentlm.LatentDiffusionPipeline`'s
denoising stage (as the MDLM decoders are by :func:`latentlm.baselines.mdlm_decoders.generate`)::

    sample_x(estimate, plan, noise, n_latents, *, generator=None, callback=None, interrupt=None, **options)
        -> SamplerOutput(latents, tokens)

* ``estimate``: an :class:`Estimate`, the clean-latent estimate x0_hat(z_t, t) with guidance and
  self-conditioning, counting network evaluations (``estimate.nfe``);
* ``plan``: a :class:`StepPlan`, the scheduler's steps and how each one meets the denoiser;
* ``noise(n)``: initial noise (b, n, d) for ``n`` latents (drawn, or the caller's ``latents``);
* ``callback(i, timestep, tensors) -> dict | None`` after each network call, ``tensors`` =
  ``{"latents": the current sample, "x0": the step's estimate}``; a returned ``"latents"`` replaces
  the sample (diffusers' ``callback_on_step_end`` contract);
* ``interrupt()``: True stops sampling after the current step.

Samplers: :func:`sample_parallel` (every latent at once), :func:`sample_staggered` (blocks of a
block-causal denoiser in flight at increasing noise levels) and :func:`sample_block_ar` (one block at a
time: staggered with one block in flight).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from latentlm.diffusion.ddim import stepwise_ddim
from latentlm.diffusion.sampling import langevin_correct
from latentlm.diffusion.schedules import NoiseSchedule
from latentlm.diffusion.time_density import step_times

StepCallback = Callable[[int, torch.Tensor, dict[str, torch.Tensor]], "dict | None"]


def steps_to_run(n_steps: int, denoising_end: float) -> int:
    """Steps of ``n_steps`` that a sampler with ``denoising_end`` runs: ceil(denoising_end x n_steps), at least 1."""
    return max(1, min(n_steps, math.ceil(denoising_end * n_steps - 1e-9)))


def set_timesteps(sched, num_inference_steps: int, device, spacing: str = "scheduler",
                  training_times: dict | None = None) -> None:
    """``sched.set_timesteps``: the scheduler's own spacing (``spacing="scheduler"``) or steps at the
    quantiles of the ``training_times`` density (``"training"``, CDCD-style; steps that round to one
    timestep are merged, so there may be fewer)."""
    if spacing == "scheduler":
        sched.set_timesteps(num_inference_steps, device=device)
        return
    n_train = sched.config.num_train_timesteps  # timestep k is time (k + 1) / N (StepPlan.to_denoiser)
    times = step_times(training_times, num_inference_steps)
    timesteps = sorted({min(n_train - 1, max(0, round(t * n_train) - 1)) for t in times}, reverse=True)
    sched.set_timesteps(timesteps=timesteps, device=device)


@dataclass
class StepPlan:
    """The scheduler's steps and how each meets the denoiser, decided once before the loop.

    ``to_denoiser(x, i, ts) -> (z_t, t)``: the variance-preserving latent and time (b,) of step i;
    ``to_scheduler(x0_hat, x, i)``: the model output the scheduler's ``step`` expects; ``run``: the
    steps to run (fewer than ``len(timesteps)`` when sampling stops early, ``denoising_end``).

    Discrete VP schedulers (prediction_type="sample"): t = (timestep + 1) / N, z_t = the sample, output
    x0_hat. Flow matching, x = (1 - s) x0 + s eps: z_t = (sigma_t / s) x at the t with
    alpha_t / sigma_t = (1 - s) / s, output the velocity eps - x0_hat.
    """

    scheduler: object
    timesteps: torch.Tensor
    to_denoiser: Callable
    to_scheduler: Callable
    run: int

    @property
    def complete(self) -> bool:
        """Whether every step runs (else the sample is the last step's clean estimate)."""
        return self.run == len(self.timesteps)


def plan_steps(sched, schedule: NoiseSchedule, num_inference_steps: int, device, *, spacing: str = "scheduler",
               training_times: dict | None = None, denoising_end: float = 1.0) -> StepPlan:
    """Set ``sched``'s timesteps (:func:`set_timesteps`) and return its :class:`StepPlan` for a denoiser
    trained on ``schedule`` (diffusers' DDIM replaced by :class:`~latentlm.diffusion.ddim.StepwiseDDIMScheduler`, which steps to the
    timesteps it set)."""
    sched = stepwise_ddim(sched)
    set_timesteps(sched, num_inference_steps, device, spacing, training_times)
    timesteps = sched.timesteps
    run = steps_to_run(len(timesteps), denoising_end)
    if isinstance(sched, FlowMatchEulerDiscreteScheduler):
        sig = [float(v) for v in sched.sigmas[: len(timesteps)]]
        ts = [schedule.t_of_log_snr(torch.tensor(2 * math.log(max(1 - s, 1e-12) / s))) for s in sig]
        scale = [float(schedule.alpha_sigma(t)[1]) for t in ts]
        times = [t.float().to(device) for t in ts]

        def to_denoiser(x, i, _ts):
            return x * scale[i] / sig[i], times[i].expand(len(x))

        def to_scheduler(x0, x, i):
            return (x - (1 - sig[i]) * x0) / sig[i] - x0

        return StepPlan(sched, timesteps, to_denoiser, to_scheduler, run)
    n_train = sched.config.num_train_timesteps

    def vp_to_denoiser(x, i, ts):
        return sched.scale_model_input(x, ts), ((ts.float() + 1) / n_train).expand(len(x)).to(device)

    return StepPlan(sched, timesteps, vp_to_denoiser, lambda x0, x, i: x0, run)


class Estimate:
    """x0_hat(x, t): ``predict(z_t, t, prompt, prompt_mask, self_cond, **inputs)`` with classifier-free
    guidance x0 = uncond + w (cond - uncond) for w > 1 (Ho & Salimans 2022, arXiv:2207.12598) at times t inside
    ``interval`` (Kynkaanniemi et al. 2024, arXiv:2404.07724) and self-conditioning on the previous
    estimate (Chen et al. 2022, arXiv:2208.04202). ``nfe`` counts network calls; ``prev`` is the estimate
    fed back at the next call (a sampler that keeps one per block sets it before each call).
    ``cond_inputs`` / ``uncond_inputs``: more denoiser inputs of each branch (the block KV caches)."""

    def __init__(self, predict: Callable, dtype: torch.dtype, self_conditioning: bool, prompt=None,
                 prompt_mask=None, guidance_scale: float = 1.0, interval: tuple[float, float] = (0.0, 1.0),
                 cond_inputs: dict | None = None, uncond_inputs: dict | None = None) -> None:
        self.predict, self.dtype, self.self_conditioning = predict, dtype, self_conditioning
        self.prompt, self.prompt_mask, self.guidance_scale, self.interval = prompt, prompt_mask, guidance_scale, interval
        self.cond_inputs, self.uncond_inputs = cond_inputs or {}, uncond_inputs or {}
        self.guided = (prompt is not None or bool(self.uncond_inputs)) and guidance_scale > 1.0  # diffusers' rule
        self.nfe, self.prev = 0, None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sc = self.prev if self.self_conditioning else None
        xin = x.to(self.dtype)
        x0 = self.predict(xin, t, self.prompt, self.prompt_mask, sc, **self.cond_inputs)
        self.nfe += 1
        inside = (t >= self.interval[0]) & (t <= self.interval[1])  # (b,) or one per block (b, blocks)
        if self.guided and bool(inside.any()):
            uncond = self.predict(xin, t, None, None, sc, **self.uncond_inputs)
            self.nfe += 1
            inside = inside[:, None] if t.dim() == 1 else inside.repeat_interleave(x.shape[1] // t.shape[1], 1)
            x0 = torch.where(inside[..., None], uncond + self.guidance_scale * (x0 - uncond), x0)
        self.prev = x0.to(self.dtype)
        return x0.to(x.dtype)


@dataclass
class SamplerOutput:
    """latents: the sampled clean latents (b, n, d) in float32; tokens: their committed token ids
    (b, n k) when the sampler decoded them as it went (the block samplers), else None."""

    latents: torch.Tensor
    tokens: torch.Tensor | None = None


def _never() -> bool:
    return False


@torch.no_grad()
def sample_parallel(estimate: Estimate, plan: StepPlan, noise: Callable[[int], torch.Tensor], n_latents: int, *,
                    generator: torch.Generator | None = None, callback: StepCallback | None = None,
                    interrupt: Callable[[], bool] = _never, corrector_steps: int = 0, corrector_snr: float = 0.1,
                    schedule: NoiseSchedule | None = None, project: Callable | None = None,
                    project_below: float = 0.0) -> SamplerOutput:
    """Every latent of the continuation denoised at once by the scheduler's steps (DDPM, Ho et al. 2020,
    arXiv:2006.11239; DDIM, Song et al. 2021, arXiv:2010.02502; DPM-Solver++, Lu et al. 2022,
    arXiv:2211.01095; or flow matching's Euler steps), each step from the clean estimate.

    ``corrector_steps``: Langevin corrector steps after each step but the last (predictor-corrector,
    Song et al. 2021, arXiv:2011.13456; needs ``schedule``); ``project``: maps a clean estimate onto the
    codes of real token groups (decode, re-encode; Diffusion-LM's clamping, arXiv:2205.14217), applied at
    the steps whose time is below ``project_below``. Stopped early (``plan.run``), the sample is the last
    step's clean estimate."""
    sched, timesteps = plan.scheduler, plan.timesteps
    x = noise(n_latents)
    x0 = x
    for i, ts in enumerate(timesteps[: plan.run]):
        if interrupt():
            break
        z_t, t = plan.to_denoiser(x, i, ts)
        x0 = estimate(z_t, t)
        if project_below and float(t[0]) < project_below:
            x0 = project(x0)
        x = sched.step(plan.to_scheduler(x0, x, i), ts, x, generator=generator).prev_sample
        if corrector_steps and i + 1 < len(timesteps):
            t_next = plan.to_denoiser(x, i + 1, timesteps[i + 1])[1]
            x, _ = langevin_correct(estimate, x, t_next, schedule, steps=corrector_steps, snr=corrector_snr,
                                    generator=generator)
        if callback is not None:
            x = (callback(i, ts, {"latents": x, "x0": x0}) or {}).get("latents", x)
    return SamplerOutput((x if plan.complete else x0).float())


@dataclass
class BlockState:
    """One block in flight: its sample ``x`` (b, block, d), the steps it has taken ``i``, its previous
    clean estimate ``prev`` (self-conditioning) and its own copy of the scheduler."""

    x: torch.Tensor
    sched: object
    prev: torch.Tensor
    i: int = 0


@dataclass
class BlockContext:
    """What the block samplers need of the block-causal denoiser and the autoencoder.

    ``commit(x) -> ids``: a finished block's latents (b, block, d) to its token ids (b, block k);
    ``extend(ids)``: re-encode committed tokens and append them to the denoiser's KV caches as clean
    context; ``block_size``: latents per block; ``eot_id``: the end-of-text token (a row that wrote it
    has ended); ``latent_dtype``: the denoiser's dtype (self-conditioning inputs); ``stop_at_eot``: stop
    when every row has ended (False: go on to the asked length, e.g. to time a fixed length)."""

    commit: Callable[[torch.Tensor], torch.Tensor]
    extend: Callable[[torch.Tensor], None]
    block_size: int
    eot_id: int
    latent_dtype: torch.dtype = torch.float32
    stop_at_eot: bool = True


@torch.no_grad()
def sample_staggered(estimate: Estimate, plan: StepPlan, noise: Callable[[int], torch.Tensor], n_latents: int, *,
                     generator: torch.Generator | None = None, callback: StepCallback | None = None,
                     interrupt: Callable[[], bool] = _never, blocks: BlockContext, window_blocks: int = 4,
                     ) -> SamplerOutput:
    """Block-causal sampling against a KV cache of committed clean blocks, up to ``window_blocks`` blocks in
    flight at increasing noise levels (diffusion forcing's pyramid schedule, Chen et al. 2024,
    arXiv:2407.01392; one network call advances every block in flight). Block j enters as pure noise at call
    j * d, d = ceil(steps / window_blocks); the front block, once through its steps, is committed
    (``blocks.commit``), re-encoded and appended to the cache (``blocks.extend``), so the length is
    unbounded. Stops when every row has written end-of-text (unless ``blocks.stop_at_eot`` is False), at
    ``n_latents`` or on ``interrupt()``.
    ``callback`` sees the blocks in flight, concatenated."""
    block, self_cond = blocks.block_size, estimate.self_conditioning
    timesteps, steps = plan.timesteps, plan.run  # a block commits after ``steps`` of its steps
    delay = -(-steps // window_blocks)
    n_blocks = n_latents // block
    flight: list[BlockState] = []  # oldest (least noisy) first
    done, tokens, started, g = [], [], 0, 0
    ended = None
    while len(done) < n_blocks:
        if started < n_blocks and started * delay <= g:  # a new block of pure noise enters the window
            x = noise(block)
            if ended is None:
                ended = torch.zeros(len(x), dtype=torch.bool)
                zeros = torch.zeros(len(x), block, x.shape[-1], device=x.device, dtype=blocks.latent_dtype)
            flight.append(BlockState(x, copy.deepcopy(plan.scheduler), zeros))
            started += 1
        inputs = [plan.to_denoiser(f.x, f.i, timesteps[f.i]) for f in flight]
        z_t = torch.cat([z for z, _ in inputs], 1)
        t = torch.stack([tt for _, tt in inputs], 1)  # (b, blocks in flight)
        estimate.prev = torch.cat([f.prev for f in flight], 1) if self_cond else None
        x0 = estimate(z_t, t)
        for f, x0_f in zip(flight, x0.split(block, 1)):
            f.x = f.sched.step(plan.to_scheduler(x0_f, f.x, f.i), timesteps[f.i], f.x, generator=generator).prev_sample
            f.prev, f.i = x0_f.to(blocks.latent_dtype), f.i + 1
        if callback is not None:
            returned = callback(g, timesteps[flight[-1].i - 1], {"latents": torch.cat([f.x for f in flight], 1),
                                                                 "x0": x0}) or {}
            if "latents" in returned:
                for f, x in zip(flight, returned["latents"].split(block, 1)):
                    f.x = x
        g += 1
        if flight[0].i < steps:
            continue
        front = flight.pop(0)
        x = front.x if plan.complete else front.prev  # stopped early: its clean estimate
        ids = blocks.commit(x)  # (b, block k) the committed tokens
        done.append(x.float())
        tokens.append(ids.cpu())
        ended |= (ids == blocks.eot_id).any(1).cpu()
        if (blocks.stop_at_eot and ended.all()) or interrupt() or len(done) == n_blocks:
            break
        blocks.extend(ids)
    return SamplerOutput(torch.cat(done, 1), torch.cat(tokens, 1))


def sample_block_ar(estimate: Estimate, plan: StepPlan, noise: Callable[[int], torch.Tensor], n_latents: int, *,
                    generator: torch.Generator | None = None, callback: StepCallback | None = None,
                    interrupt: Callable[[], bool] = _never, blocks: BlockContext) -> SamplerOutput:
    """Block-autoregressive sampling (one block at a time, each through every step against the KV cache of
    the blocks before it: BD3-LM's semi-autoregressive order, Arriola et al. 2025, arXiv:2503.09573, in a
    continuous latent space): :func:`sample_staggered` with one block in flight."""
    return sample_staggered(estimate, plan, noise, n_latents, generator=generator, callback=callback,
                            interrupt=interrupt, blocks=blocks, window_blocks=1)


SAMPLERS = {"parallel": sample_parallel, "block-ar": sample_block_ar, "staggered": sample_staggered}
