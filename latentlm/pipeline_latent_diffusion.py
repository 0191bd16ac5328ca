"""LatentDiffusionPipeline: ``pipe(prompt)`` -> text sampled in the autoencoder's latent space.

Components: ``tokenizer`` (our byte-level BPE), ``autoencoder``
(:class:`~latentlm.autoencoder.TextAutoencoder`), ``denoiser``
(:class:`~latentlm.diffusion.LatentDenoiser`) and ``scheduler`` (any of DDPM,
DDIM, DPM-Solver++ configured by :func:`make_scheduler`, swappable with
``pipe.scheduler = X.from_config(pipe.scheduler.config)``, or
``FlowMatchEulerDiscreteScheduler``, which gets its own loop branch).

An optional ``denoiser_2`` with a ``boundary`` time makes two time experts, as
diffusers' ``WanPipeline`` does with ``transformer_2`` and ``boundary_ratio``:
``denoiser`` estimates at times t >= boundary (layout, high noise), ``denoiser_2``
below it (details copied from the prompt, low noise).

The prompt is encoded into clean latents (context); every continuation latent
is updated in parallel at each step; the final latents are decoded in one
parallel pass and cut at the first end-of-text; the prompt text is returned
unchanged in front of the continuation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.utils import BaseOutput

from latentlm.autoencoder.modeling_autoencoder import encode_prompts
from latentlm.diffusion.sampling import langevin_correct
from latentlm.errors import CheckpointError, InputError, check_choice, check_text

SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "flow-euler": FlowMatchEulerDiscreteScheduler,
}
OUTPUT_TYPES = ("text", "latent", "ids")
MAX_BATCH = 4096  # documented limit on prompts x samples per call (memory stays bounded)
DECODE_CHUNK = 64  # samples decoded to token logits at once


def make_scheduler(name: str, denoiser) -> object:
    """A diffusers scheduler whose noise levels match the denoiser's continuous schedule.

    Discrete schedulers get ``trained_betas`` from the schedule, x0 prediction,
    no clipping (``clip_sample=False``: the default True silently clamps latents)
    and trailing timesteps (the first step starts at pure noise).
    """
    check_choice("sampler", name, tuple(SCHEDULERS))
    if name == "flow-euler":
        return FlowMatchEulerDiscreteScheduler()
    betas = denoiser.schedule.discrete_betas(1000).tolist()
    kwargs = dict(num_train_timesteps=1000, trained_betas=betas, prediction_type="sample",
                  timestep_spacing="trailing")
    if name == "dpm++":
        return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **kwargs)
    return SCHEDULERS[name](clip_sample=False, **kwargs)


def _check_experts(denoiser, denoiser_2, boundary: float | None) -> None:
    """Two time experts need a boundary in (0, 1) and the same noise schedule and inputs."""
    if denoiser_2 is None and boundary is None:
        return
    if denoiser_2 is None or boundary is None:
        raise CheckpointError("two time experts need both denoiser_2 and boundary (the time below which "
                              "denoiser_2 estimates); pass both or neither")
    if not (isinstance(boundary, (int, float)) and 0 < boundary < 1):
        raise CheckpointError(f"boundary must be a time in (0, 1), got {boundary!r}")
    for key in ("schedule", "schedule_shift", "self_conditioning"):
        if denoiser.config[key] != denoiser_2.config[key]:
            raise CheckpointError(f"denoiser and denoiser_2 differ in {key} ({denoiser.config[key]!r} against "
                                  f"{denoiser_2.config[key]!r}): time experts share one sampler and its inputs")


class _NoEmptyFp32ModulesWarning(logging.Filter):
    """diffusers (0.42) warns on every ``ModelMixin.to(dtype)`` that modules "should be kept in
    float32: []", an empty list: our models keep none in float32. Drops that message alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_NoEmptyFp32ModulesWarning())


@dataclass
class LatentDiffusionPipelineOutput(BaseOutput):
    """texts: prompt + continuation; sequences: continuation token ids (b, n*k), cut
    at end-of-text and padded; latents: final clean latents (b, n, d); nfe: network
    evaluations per sample batch."""

    texts: list[str] | None
    sequences: torch.Tensor | None
    latents: torch.Tensor
    nfe: int


class LatentDiffusionPipeline(DiffusionPipeline):
    """Text generation by diffusion in a text autoencoder's latent space."""

    model_cpu_offload_seq = "autoencoder->denoiser->denoiser_2"
    _optional_components = ["denoiser_2"]

    def __init__(self, tokenizer, autoencoder, denoiser, scheduler, denoiser_2=None,
                 boundary: float | None = None) -> None:
        super().__init__()
        for den in (denoiser, denoiser_2):
            if den is not None and autoencoder.config.latent_dim != den.config.latent_dim:
                raise CheckpointError(
                    f"the autoencoder's latents have width {autoencoder.config.latent_dim} but the denoiser "
                    f"expects {den.config.latent_dim}: they were not trained together")
        _check_experts(denoiser, denoiser_2, boundary)
        if len(tokenizer) != autoencoder.config.vocab_size:
            raise CheckpointError(
                f"the tokenizer has {len(tokenizer)} tokens but the autoencoder was trained with "
                f"{autoencoder.config.vocab_size}: the tokenizer folder belongs to another model")
        self.register_modules(tokenizer=tokenizer, autoencoder=autoencoder, denoiser=denoiser,
                              scheduler=scheduler, denoiser_2=denoiser_2)
        self.register_to_config(boundary=boundary)

    @torch.no_grad()
    def predict_x0(self, z_t: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor | None = None,
                   prompt_mask: torch.Tensor | None = None, self_cond: torch.Tensor | None = None) -> torch.Tensor:
        """Clean-latent estimate (b, n, d) of each row by the denoiser in charge of its time t (b,):
        ``denoiser_2`` below ``boundary``, ``denoiser`` elsewhere."""
        if self.denoiser_2 is None:
            return self.denoiser.predict_x0(z_t, t, prompt, prompt_mask, self_cond)
        low = t < self.config.boundary
        if not low.any() or low.all():  # a sampling step: one time for the whole batch
            den = self.denoiser_2 if low.all() else self.denoiser
            return den.predict_x0(z_t, t, prompt, prompt_mask, self_cond)
        out = torch.empty(z_t.shape, dtype=torch.float32, device=z_t.device)
        for den, rows in ((self.denoiser, ~low), (self.denoiser_2, low)):
            out[rows] = den.predict_x0(*(None if x is None else x[rows]
                                         for x in (z_t, t, prompt, prompt_mask, self_cond)))
        return out

    # ------------------------------------------------------------------ helpers
    def _normalise_prompts(self, prompt) -> list[str]:
        if prompt is None:
            return [""]
        if isinstance(prompt, str):
            return [check_text(prompt)]
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
            return [check_text(p) for p in prompt]
        raise InputError("prompt must be None, a string or a non-empty list of strings")

    def _prompt_ids(self, prompts: list[str]) -> list[list[int]]:
        """Prompt token ids; a prompt longer than the autoencoder's maximum keeps its
        last ``max_seq_len`` tokens (documented truncation)."""
        limit = self.autoencoder.config.max_seq_len
        ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        return [x[-limit:] if len(x) > limit else x for x in ids]

    def _x0_fn(self, prompt, prompt_mask, guidance_scale: float, interval: tuple[float, float] = (0.0, 1.0)):
        """x0_hat(x, t) with classifier-free guidance (at times t in ``interval``) and
        self-conditioning; counts NFE."""
        state = {"nfe": 0, "prev": None}
        den = self.denoiser
        use_cfg = prompt is not None and guidance_scale != 1.0

        def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            sc = state["prev"] if den.config.self_conditioning else None
            xin = x.to(den.dtype)
            x0 = self.predict_x0(xin, t, prompt, prompt_mask, sc)
            state["nfe"] += 1
            if use_cfg and interval[0] <= float(t[0]) <= interval[1]:  # one time per step for the batch
                uncond = self.predict_x0(xin, t, None, None, sc)
                state["nfe"] += 1
                x0 = uncond + guidance_scale * (x0 - uncond)
            state["prev"] = x0.to(den.dtype)
            return x0.to(x.dtype)

        return fn, state

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        max_new_tokens: int = 64,
        num_inference_steps: int = 32,
        guidance_scale: float = 1.0,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        num_samples_per_prompt: int = 1,
        corrector_steps: int = 0,
        corrector_snr: float = 0.1,
        generator: torch.Generator | None = None,
        output_type: str = "text",
        callback_on_step_end=None,
        progress: bool = False,
    ) -> LatentDiffusionPipelineOutput:
        """Sample continuations of ``prompt``.

        Args:
            prompt: None or "" for unconditional samples, a string, or a list of strings.
            max_new_tokens: tokens of continuation (rounded up to whole latents; at most the
                autoencoder's ``max_seq_len``).
            num_inference_steps: scheduler steps (NFE without guidance or corrector).
            guidance_scale: classifier-free guidance weight w >= 0 (1 = plain conditional;
                guided x0 = uncond + w (cond - uncond)).
            guidance_interval: (t_lo, t_hi): guidance only at times t in this interval, plain
                conditional elsewhere (Kynkaanniemi et al. 2024); the default guides every step.
            num_samples_per_prompt: samples drawn for each prompt.
            corrector_steps: Langevin corrector steps after each predictor step.
            generator: torch.Generator for the initial noise and stochastic steps.
            output_type: "text" (texts + ids + latents), "ids" (ids + latents) or "latent".
            callback_on_step_end: called as f(pipe, step, timestep, {"latents": x}) after each step.
        """
        prompts = self._normalise_prompts(prompt)
        max_steps = int(getattr(self.scheduler.config, "num_train_timesteps", 1000))
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= max_steps:
            raise InputError(f"num_inference_steps must be an integer in [1, {max_steps}] (the scheduler's "
                             f"training timesteps), got {num_inference_steps!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale)) or guidance_scale < 0:
            raise InputError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        if not (isinstance(guidance_interval, (tuple, list)) and len(guidance_interval) == 2
                and all(isinstance(v, (int, float)) for v in guidance_interval)
                and 0 <= guidance_interval[0] <= guidance_interval[1] <= 1):
            raise InputError(f"guidance_interval must be (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1, "
                             f"got {guidance_interval!r}")
        if not isinstance(num_samples_per_prompt, int) or num_samples_per_prompt < 1:
            raise InputError(f"num_samples_per_prompt must be a positive integer, got {num_samples_per_prompt!r}")
        if not isinstance(corrector_steps, int) or corrector_steps < 0:
            raise InputError(f"corrector_steps must be an integer >= 0, got {corrector_steps!r}")
        if output_type not in OUTPUT_TYPES:
            raise InputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        ae, den = self.autoencoder, self.denoiser
        if max_new_tokens > ae.config.max_seq_len:
            raise InputError(f"max_new_tokens {max_new_tokens} exceeds the autoencoder's maximum of "
                             f"{ae.config.max_seq_len} tokens")
        batch = len(prompts) * num_samples_per_prompt
        if batch > MAX_BATCH:
            raise InputError(f"{batch} samples in one call exceed the limit of {MAX_BATCH}; split the call")
        device = self._execution_device
        k, d = ae.config.tokens_per_latent, ae.config.latent_dim
        n = -(-max_new_tokens // k)

        rows = [p for p in prompts for _ in range(num_samples_per_prompt)]
        ids = self._prompt_ids(rows)
        ctx, ctx_mask = encode_prompts(ae, ids, self.tokenizer.pad_token_id, device)
        if ctx is not None:
            ctx = ctx.to(den.dtype)
        x0_fn, state = self._x0_fn(ctx, ctx_mask, float(guidance_scale), tuple(map(float, guidance_interval)))

        x = torch.randn((batch, n, d), generator=generator, dtype=torch.float32,
                        device=generator.device if generator is not None else "cpu").to(device)
        sched = self.scheduler
        sched.set_timesteps(num_inference_steps, device=device)
        schedule = den.schedule
        flow = isinstance(sched, FlowMatchEulerDiscreteScheduler)
        timesteps = sched.timesteps
        x0 = x
        for i, ts in enumerate(self.progress_bar(timesteps) if progress else timesteps):
            if flow:
                # x_flow = (1 - s) x0 + s eps  <->  VP z_t = (sigma_t / s) x_flow, alpha_t/sigma_t = (1-s)/s
                s = float(sched.sigmas[i])
                t = schedule.t_of_log_snr(torch.tensor(2 * math.log(max(1 - s, 1e-12) / s)))
                _, sig_t = schedule.alpha_sigma(t)
                tt = t.float().expand(batch).to(device)
                x0 = x0_fn(x * float(sig_t) / s, tt)
                eps = (x - (1 - s) * x0) / s
                x = sched.step(eps - x0, ts, x, generator=generator).prev_sample
            else:
                x = x * sched.init_noise_sigma if i == 0 else x
                tt = ((ts.float() + 1) / sched.config.num_train_timesteps).expand(batch).to(device)
                x0 = x0_fn(sched.scale_model_input(x, ts), tt)
                x = sched.step(x0, ts, x, generator=generator).prev_sample
                if corrector_steps and i + 1 < len(timesteps):
                    t_next = ((timesteps[i + 1].float() + 1) / sched.config.num_train_timesteps).expand(batch)
                    x, nfe = langevin_correct(x0_fn, x, t_next.to(device), schedule, steps=corrector_steps,
                                              snr=corrector_snr, generator=generator)
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, ts, {"latents": x, "x0": x0})
        latents = x.float()
        nfe = state["nfe"]
        if output_type == "latent":
            return LatentDiffusionPipelineOutput(None, None, latents, nfe)
        # decoded in chunks: the logits (chunk, n k, vocab) are the largest tensor of a call
        seq = torch.cat([ae.decode(latents[i : i + DECODE_CHUNK].to(ae.dtype)).argmax(-1)
                         for i in range(0, batch, DECODE_CHUNK)])[:, :max_new_tokens].cpu()
        eot, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        texts = []
        for r, row in enumerate(seq.tolist()):
            cut = row.index(eot) if eot in row else len(row)
            seq[r, cut:] = pad
            if output_type == "text":
                texts.append(rows[r] + self.tokenizer.decode([t for t in row[:cut] if t != pad]))
        return LatentDiffusionPipelineOutput(texts if output_type == "text" else None, seq, latents, nfe)

