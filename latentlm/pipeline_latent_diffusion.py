"""LatentDiffusionPipeline: ``pipe(prompt)`` -> text sampled in the autoencoder's latent space.

Components: ``tokenizer`` (our byte-level BPE), ``autoencoder``
(:class:`~latentlm.autoencoder.TextAutoencoder`), ``denoiser``
(:class:`~latentlm.diffusion.LatentDenoiser`) and ``scheduler`` (any of DDPM,
DDIM, DPM-Solver++ configured by :func:`make_scheduler`, swappable with
``pipe.scheduler = X.from_config(pipe.scheduler.config)``, or
``FlowMatchEulerDiscreteScheduler``, whose flow sample and velocity are converted to the
denoiser's variance-preserving latents and clean estimate once, before the loop).

``__call__`` runs diffusers' stages: :meth:`check_inputs`, :meth:`encode_prompt`, the
timesteps, :meth:`prepare_latents`, the denoising loop (``callback_on_step_end`` as diffusers
defines it), :meth:`decode`.

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

import contextlib
import copy
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor

from latentlm.autoencoder.modeling_autoencoder import encode_prompts
from latentlm.choices import SAMPLING_MODES, SCHEDULER_NAMES, current_value
from latentlm.diffusion.ddim import stepwise_ddim
from latentlm.diffusion.samplers import SAMPLERS, BlockContext, Estimate, plan_steps
from latentlm.diffusion.time_density import warn_untrained
from latentlm.errors import CheckpointError, ConfigError, InputError, check_choice, check_text
from latentlm.outputs import GenerationOutput

SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "flow-euler": FlowMatchEulerDiscreteScheduler,
}
assert tuple(SCHEDULERS) == SCHEDULER_NAMES  # the CLI's choices (latentlm/choices.py)
OUTPUT_TYPES = ("text", "latent", "ids")
# parallel: every latent of the continuation at once; block-ar: one block at a time against a KV cache of
# the committed, re-encoded blocks (a block-causal denoiser), any length; staggered: a sliding window of
# blocks at increasing noise levels, one network call advancing them all, any length
MODES = SAMPLING_MODES
assert tuple(SAMPLERS) == MODES  # each mode's sampler (diffusion/samplers.py)
BLOCK_MODES = ("block-ar", "staggered")
STEP_SPACINGS = ("auto", "scheduler", "training")
MAX_BATCH = 4096  # documented limit on prompts x samples per call (memory stays bounded)
MAX_NEW_TOKENS_BLOCK_AR = 16_384  # documented limit on one block-ar call (bounds its time)
DECODE_CHUNK = 64  # samples decoded to token logits at once


def window_error(window_blocks: int, block_size: int, max_latents: int) -> str | None:
    """Why ``window_blocks`` blocks of ``block_size`` latents cannot be in flight at once in a denoiser
    that takes ``max_latents`` target latents per call; None when they can."""
    if window_blocks * block_size <= max_latents:
        return None
    return (f"window_blocks={window_blocks} puts {window_blocks * block_size} latents in flight (blocks of "
            f"{block_size}); this denoiser takes at most {max_latents} per call: use window_blocks <= "
            f"{max_latents // block_size}")


def check_sampling_mode(mode: str, window_blocks: int, block_size: int | None,
                        max_latents: int | None = None) -> None:
    """Raise ConfigError unless ``mode`` is one of MODES that a denoiser with ``block_size`` can sample
    (the block modes need a block-causal one) and ``window_blocks`` a positive integer whose blocks fit
    the denoiser's ``max_latents`` (when given) in staggered mode."""
    check_choice("sampling_mode", mode, MODES)
    if mode in BLOCK_MODES and block_size is None:
        raise ConfigError(f"sampling_mode {mode!r} needs a block-causal denoiser (model.block_size set); this one "
                          "sees every position at once: use 'parallel'")
    if isinstance(window_blocks, bool) or not isinstance(window_blocks, int) or window_blocks < 1:
        raise ConfigError(f"window_blocks must be a positive integer (blocks in flight in staggered mode), "
                          f"got {window_blocks!r}")
    if mode == "staggered" and max_latents is not None and (msg := window_error(window_blocks, block_size,
                                                                                 max_latents)):
        raise ConfigError(msg)


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
class LatentDiffusionPipelineOutput(GenerationOutput):
    """:class:`~latentlm.outputs.GenerationOutput` (texts, continuations, nfe, prompts, sequences; all but
    nfe and latents None with ``output_type="latent"``, texts and continuations None with ``"ids"``) and
    ``latents``: the final clean latents (b, n, d)."""

    latents: torch.Tensor | None = None


class LatentDiffusionPipeline(DiffusionPipeline):
    """Text generation by diffusion in a text autoencoder's latent space."""

    model_cpu_offload_seq = "autoencoder->denoiser->denoiser_2"
    _optional_components = ["denoiser_2"]
    _callback_tensor_inputs = ["latents", "x0"]  # x0: the step's clean-latent estimate

    def __init__(self, tokenizer, autoencoder, denoiser, scheduler, denoiser_2=None,
                 boundary: float | None = None, sampling_mode: str = "parallel", window_blocks: int = 4,
                 training_times: dict | None = None) -> None:
        """``sampling_mode`` and ``window_blocks``: the defaults of ``__call__``'s ``mode`` and
        ``window_blocks``, saved with the pipeline (the preset's ``model.sampling_mode``).
        ``training_times``: the density the denoiser's training times were drawn from
        (:func:`~latentlm.diffusion.time_density.time_density_spec`; the training recipe saves it), so that
        sampling warns (``UntrainedTimesWarning``) when its steps fall where the denoiser hardly trained."""
        super().__init__()
        check_sampling_mode(sampling_mode, window_blocks, denoiser.config.block_size, denoiser.config.max_latents)
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
        if training_times:  # saved as logit_normal: read as logit-normal
            training_times = {**training_times, "sampling": current_value(training_times["sampling"])}
        self.register_to_config(boundary=boundary, sampling_mode=sampling_mode, window_blocks=window_blocks,
                                training_times=training_times)
        self._coverage_checked: set = set()

    @torch.no_grad()
    def predict_x0(self, z_t: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor | None = None,
                   prompt_mask: torch.Tensor | None = None, self_cond: torch.Tensor | None = None,
                   **block_inputs) -> torch.Tensor:
        """Clean-latent estimate (b, n, d) of each row by the denoiser in charge of its time t (b,):
        ``denoiser_2`` below ``boundary``, ``denoiser`` elsewhere (``block_inputs``: ``kv_cache=`` of a
        block-causal denoiser, which has no second expert)."""
        if self.denoiser_2 is None:
            return self.denoiser.predict_x0(z_t, t, prompt, prompt_mask, self_cond, **block_inputs)
        low = t < self.config.boundary
        if not low.any() or low.all():  # a sampling step: one time for the whole batch
            den = self.denoiser_2 if low.all() else self.denoiser
            return den.predict_x0(z_t, t, prompt, prompt_mask, self_cond)
        out = torch.empty(z_t.shape, dtype=torch.float32, device=z_t.device)
        for den, rows in ((self.denoiser, ~low), (self.denoiser_2, low)):
            out[rows] = den.predict_x0(*(None if x is None else x[rows]
                                         for x in (z_t, t, prompt, prompt_mask, self_cond)))
        return out

    # ------------------------------------------------------------------ stages
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Guidance runs when ``guidance_scale > 1`` (diffusers' rule); at or below 1 sampling is plainly
        conditional, one network call a step."""
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe.interrupt = True`` in a callback to stop denoising after that step (diffusers)."""
        return self._interrupt

    @interrupt.setter
    def interrupt(self, value: bool) -> None:
        self._interrupt = bool(value)

    def check_inputs(self, prompt, max_new_tokens, num_inference_steps, guidance_scale, guidance_interval,
                     num_samples_per_prompt, corrector_steps, output_type, latents,
                     callback_on_step_end_tensor_inputs, mode: str = "parallel", window_blocks: int = 4,
                     decoder_temperature: float = 0.0, denoising_end: float = 1.0,
                     project_below: float = 0.0) -> list[str]:
        """Validate the arguments of ``__call__`` (InputError naming the bad one); returns the prompts."""
        prompts = self._normalise_prompts(prompt)
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if mode in BLOCK_MODES:
            if self.denoiser.config.block_size is None:
                raise InputError(f"mode={mode!r} needs a block-causal denoiser (trained with model.block_size); "
                                 "this one sees every position at once: use mode='parallel'")
            unsupported = {"corrector_steps": corrector_steps, "latents": latents, "denoiser_2": self.denoiser_2}
            bad = [k for k, v in unsupported.items() if v]
            if bad:
                raise InputError(f"mode={mode!r} does not take {', '.join(bad)} (parallel mode does)")
            if isinstance(max_new_tokens, int) and max_new_tokens > MAX_NEW_TOKENS_BLOCK_AR:
                raise InputError(f"max_new_tokens {max_new_tokens} exceeds the {mode} limit of "
                                 f"{MAX_NEW_TOKENS_BLOCK_AR} tokens per call; continue from the output in a new call")
            if isinstance(window_blocks, bool) or not isinstance(window_blocks, int) or window_blocks < 1:
                raise InputError(f"window_blocks must be a positive integer (blocks denoised at once in staggered "
                                 f"mode), got {window_blocks!r}")
            cfg = self.denoiser.config
            if mode == "staggered" and (msg := window_error(window_blocks, cfg.block_size, cfg.max_latents)):
                raise InputError(msg)
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
        if corrector_steps and isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler):
            raise InputError("corrector_steps needs a variance-preserving scheduler (ddpm, ddim, dpm++), "
                             "not FlowMatchEulerDiscreteScheduler")
        if output_type not in OUTPUT_TYPES:
            raise InputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if (isinstance(decoder_temperature, bool) or not isinstance(decoder_temperature, (int, float))
                or not math.isfinite(decoder_temperature) or decoder_temperature < 0):
            raise InputError(f"decoder_temperature must be a finite number >= 0 (0: the decoder's most likely "
                             f"token), got {decoder_temperature!r}")
        if (isinstance(denoising_end, bool) or not isinstance(denoising_end, (int, float))
                or not 0 < denoising_end <= 1):
            raise InputError(f"denoising_end must be a fraction of the steps in (0, 1], got {denoising_end!r}")
        if (isinstance(project_below, bool) or not isinstance(project_below, (int, float))
                or not 0 <= project_below <= 1):
            raise InputError(f"project_below must be a time in [0, 1] (0: no projection), got {project_below!r}")
        if project_below > 0 and mode != "parallel":
            raise InputError(f"project_below applies to parallel sampling; mode {mode!r} re-encodes each block's "
                             "tokens as it commits them")
        limit = self.autoencoder.config.max_seq_len
        if max_new_tokens > limit and mode == "parallel":
            raise InputError(f"max_new_tokens {max_new_tokens} exceeds the autoencoder's maximum of {limit} tokens "
                             "in parallel mode (a block-causal denoiser generates any length with mode='block-ar' "
                             "or 'staggered')")
        batch = len(prompts) * num_samples_per_prompt
        if batch > MAX_BATCH:
            raise InputError(f"{batch} samples in one call exceed the limit of {MAX_BATCH}; split the call")
        shape = (batch, self._n_latents(max_new_tokens), self.autoencoder.config.latent_dim)
        if latents is not None and (not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape):
            raise InputError(f"latents must be a tensor of shape {shape} (prompts x samples, latents for "
                             f"max_new_tokens, latent width), got "
                             f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}")
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise InputError(f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}, "
                             f"got {bad}")
        return prompts

    def encode_prompt(self, prompts: list[str], num_samples_per_prompt: int = 1, device=None
                      ) -> tuple[list[str], torch.Tensor | None, torch.Tensor | None]:
        """Prompts -> (one prompt string per sample, clean prompt latents (b, p, d) left-padded in the
        denoiser's dtype, their mask (b, p)); latents and mask are None when every prompt is empty.
        A prompt longer than the autoencoder's ``max_seq_len`` tokens keeps its last ``max_seq_len``."""
        device = self._execution_device if device is None else device
        rows = [p for p in prompts for _ in range(num_samples_per_prompt)]
        limit = self.autoencoder.config.max_seq_len
        ids = [x[-limit:] for x in self.tokenizer(rows, add_special_tokens=False)["input_ids"]]
        ctx, ctx_mask = encode_prompts(self.autoencoder, ids, self.tokenizer.pad_token_id, device)
        return rows, (None if ctx is None else ctx.to(self.denoiser.dtype)), ctx_mask

    def prepare_latents(self, batch: int, n_latents: int, device, generator: torch.Generator | None = None,
                        latents: torch.Tensor | None = None) -> torch.Tensor:
        """Initial noise (batch, n_latents, latent_dim) in float32, scaled by the scheduler's
        ``init_noise_sigma`` (flow matching has none: 1); drawn with ``generator`` (on its device) unless ``latents`` is given."""
        if latents is None:
            shape = (batch, n_latents, self.autoencoder.config.latent_dim)
            latents = randn_tensor(shape, generator=generator, device=torch.device(device), dtype=torch.float32)
        return latents.to(device, torch.float32) * getattr(self.scheduler, "init_noise_sigma", 1.0)

    def decode(self, latents: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Clean latents (b, n, d) -> token ids (b, max_new_tokens) on the CPU, each row cut at its first
        end-of-text and padded after it; decoded ``DECODE_CHUNK`` rows at a time (the logits
        (chunk, n k, vocab) are the largest tensor of a call). ``temperature``: as in ``tokens_of``."""
        seq = torch.cat([self.tokens_of(latents[i : i + DECODE_CHUNK], temperature, generator)
                         for i in range(0, len(latents), DECODE_CHUNK)]).cpu()
        return self._cut(seq, max_new_tokens)

    def tokens_of(self, latents: torch.Tensor, temperature: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents (b, n, d) -> token ids (b, n k): the decoder's most likely token at ``temperature`` 0,
        else a draw from its distribution p(x | z) sharpened by 1 / ``temperature`` (1: the distribution
        whose likelihood the bound's reconstruction term scores), with ``generator``."""
        ae = self.autoencoder
        return ae.decode_tokens(latents.to(ae.dtype), temperature, generator)

    # ------------------------------------------------------------------ helpers
    def project(self, x0: torch.Tensor) -> torch.Tensor:
        """Clean latents (b, n, d) -> the latents of their decoded most likely tokens (encode(decode(x0))):
        the nearest codes of real token groups, as the autoencoder maps them."""
        tokens = self.tokens_of(x0)
        z = self.autoencoder.encode(tokens, torch.ones_like(tokens))
        return z.to(x0.dtype)

    def _n_latents(self, max_new_tokens: int) -> int:
        """Latents sampled for ``max_new_tokens``: whole latents, and whole blocks for a block-causal
        denoiser (the decoded tokens are cut to ``max_new_tokens``)."""
        n = -(-max_new_tokens // self.autoencoder.config.tokens_per_latent)
        block = self.denoiser.config.block_size
        return n if block is None else -(-n // block) * block

    def _normalise_prompts(self, prompt) -> list[str]:
        if prompt is None:
            return [""]
        if isinstance(prompt, str):
            return [check_text(prompt)]
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
            return [check_text(p) for p in prompt]
        raise InputError("prompt must be None, a string or a non-empty list of strings")

    def check_time_coverage(self, num_inference_steps: int, device=None, spacing: str = "scheduler") -> list[float]:
        """The denoiser times of the scheduler's ``num_inference_steps`` steps that fall where the saved
        training density has almost no mass (``UntrainedTimesWarning``, once per scheduler and step count)."""
        spec = getattr(self.config, "training_times", None)
        key = (type(self.scheduler).__name__, num_inference_steps, spacing)
        if not spec or key in self._coverage_checked:
            return []
        self._coverage_checked.add(key)
        device = device or torch.device("cpu")
        sched = copy.deepcopy(self.scheduler)  # set_timesteps changes the scheduler's state
        plan = plan_steps(sched, self.denoiser.schedule, num_inference_steps, device, spacing=spacing,
                          training_times=spec)
        probe = torch.zeros(1, 1, self.denoiser.config.latent_dim, device=device)
        times = [float(plan.to_denoiser(probe, i, ts)[1][0]) for i, ts in enumerate(plan.timesteps)]
        return warn_untrained(spec, times, f"{key[0]} at {num_inference_steps} steps")

    def step_spacing(self, spacing: str = "auto") -> str:
        """How the sampler's steps are spaced: "scheduler" (its own spacing) or "training" (at the quantiles
        of the saved training-time density, :func:`~latentlm.diffusion.time_density.step_times`); "auto" is
        "training" for a learned density with a scheduler that takes custom timesteps, else "scheduler"."""
        if spacing not in STEP_SPACINGS:
            raise InputError(f"step_spacing must be one of {STEP_SPACINGS}, got {spacing!r}")
        spec = getattr(self.config, "training_times", None)
        custom = ("timesteps" in inspect.signature(stepwise_ddim(self.scheduler).set_timesteps).parameters
                  and not isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler))
        if spacing == "auto":
            return "training" if custom and spec and spec["sampling"] == "learned" else "scheduler"
        if spacing == "training" and not spec:
            raise InputError("step_spacing='training' needs the training-time density, which this pipeline was "
                             "saved without; use step_spacing='scheduler'")
        if spacing == "training" and not custom:
            raise InputError(f"step_spacing='training' needs a scheduler that takes custom timesteps (DDPM, DDIM, "
                             f"DPM-Solver); {type(self.scheduler).__name__} does not")
        return spacing

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
        latents: torch.Tensor | None = None,
        output_type: str = "text",
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        progress: bool = False,
        mode: str | None = None,
        window_blocks: int | None = None,
        decoder_temperature: float = 0.0,
        denoising_end: float = 1.0,
        project_below: float = 0.0,
        step_spacing: str = "auto",
        stop_at_eot: bool = True,
        return_dict: bool = True,
    ) -> LatentDiffusionPipelineOutput | tuple:
        """Sample continuations of ``prompt``.

        Args:
            prompt: None or "" for unconditional samples, a string, or a list of strings.
            max_new_tokens: tokens of continuation (rounded up to whole latents; at most the
                autoencoder's ``max_seq_len``).
            num_inference_steps: scheduler steps (NFE without guidance or corrector).
            guidance_scale: classifier-free guidance weight w: guided x0 = uncond + w (cond - uncond)
                when w > 1; w <= 1 is no guidance (plain conditional, one call a step), as in diffusers.
            guidance_interval: (t_lo, t_hi): guidance only at times t in this interval, plain
                conditional elsewhere (Kynkaanniemi et al. 2024, arXiv:2404.07724); the default guides
                every step.
            num_samples_per_prompt: samples drawn for each prompt.
            corrector_steps: Langevin corrector steps after each predictor step (VP schedulers).
            corrector_snr: the corrector's signal-to-noise step rule.
            generator: torch.Generator for the initial noise and stochastic steps.
            latents: initial noise (prompts x samples, latents, latent width) instead of drawing it.
            output_type: "text" (texts + ids + latents), "ids" (ids + latents) or "latent".
            callback_on_step_end: called as ``f(pipe, i, timestep, tensors) -> dict`` after each step,
                with ``tensors`` the ``callback_on_step_end_tensor_inputs`` by name; a returned
                ``"latents"`` replaces the pipeline's own (as in diffusers).
                A diffusers ``PipelineCallback`` works too.
            callback_on_step_end_tensor_inputs: names among ``_callback_tensor_inputs`` (default
                ``["latents"]``).
            progress: show a progress bar over the steps.
            mode: None (the pipeline's ``sampling_mode``, saved with it), "parallel" (every latent at
                once), or for a block-causal denoiser "block-ar" (each
                block denoised in ``num_inference_steps`` against a KV cache of the blocks before it,
                decoded, re-encoded and appended to the cache; stops when every row has ended; any
                length, the cache rolling over the trained window) or "staggered" (as block-ar with
                ``window_blocks`` blocks in flight at increasing noise levels, a new one entering every
                ceil(num_inference_steps / window_blocks) steps; one network call advances them all).
                ``callback_on_step_end`` then sees the blocks in flight.
            window_blocks: blocks in flight at once in staggered mode (1 is block-ar; None: the
                pipeline's ``window_blocks``).
            decoder_temperature: 0 decodes each latent to the decoder's most likely tokens; T > 0 draws
                them from the decoder's distribution at temperature T (1: the model whose likelihood
                the bound scores), with ``generator``. Block modes re-encode the drawn tokens.
            denoising_end: the fraction of the ``num_inference_steps`` steps to run (diffusers' name, as in
                its SDXL pipeline); below 1 the sampler stops after ceil(denoising_end x steps) steps and
                each latent (each block, in the block modes) is the clean estimate of its last step, at the
                noise level of that step: the low-noise steps are skipped. 1 runs every step.
            project_below: at the steps whose time t is below this, the clean estimate is replaced by
                the latents of its decoded most likely tokens (decode, re-encode: a projection onto the
                codes of real token groups, Diffusion-LM's clamping, arXiv:2205.14217) before the
                scheduler's step; 0 (the default) never. Parallel mode only.
            step_spacing: "scheduler" (the scheduler's own spacing), "training" (steps at the quantiles of
                the saved training-time density: as dense as the denoiser's training) or "auto" (the
                default: "training" for a learned density, CDCD-style, with DDPM or DPM-Solver, else
                "scheduler").
            stop_at_eot: the block modes stop once every row has written end-of-text (the text is cut
                there in every mode); False samples every block up to ``max_new_tokens`` (timing a fixed
                length).
        """
        mode = self.config.sampling_mode if mode is None else mode
        window_blocks = self.config.window_blocks if window_blocks is None else window_blocks
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        tensor_inputs = list(callback_on_step_end_tensor_inputs or ["latents"])
        # 1. check inputs
        prompts = self.check_inputs(prompt, max_new_tokens, num_inference_steps, guidance_scale, guidance_interval,
                                    num_samples_per_prompt, corrector_steps, output_type, latents, tensor_inputs,
                                    mode, window_blocks, decoder_temperature, denoising_end, project_below)
        spacing = self.step_spacing(step_spacing)
        self.check_time_coverage(num_inference_steps, spacing=spacing)
        self._guidance_scale, self._interrupt = float(guidance_scale), False
        interval = tuple(map(float, guidance_interval))
        device = self._execution_device
        # 2. encode the prompt into clean context latents
        rows, prompt_latents, prompt_mask = self.encode_prompt(prompts, num_samples_per_prompt, device)
        # 3. timesteps and how each one meets the denoiser
        plan = plan_steps(self.scheduler, self.denoiser.schedule, num_inference_steps, device, spacing=spacing,
                          training_times=getattr(self.config, "training_times", None), denoising_end=denoising_end)
        self._num_timesteps = len(plan.timesteps)
        # 4. initial noise (b, n, d): the given latents, or drawn block by block as the sampler asks

        def noise(n: int) -> torch.Tensor:
            return self.prepare_latents(len(rows), n, device, generator, latents)

        # 5. denoising loop (diffusion/samplers.py)
        if mode == "parallel":
            estimate = Estimate(self.predict_x0, self.denoiser.dtype, self.denoiser.config.self_conditioning,
                                prompt_latents, prompt_mask, self._guidance_scale, interval)
            options = dict(corrector_steps=corrector_steps, corrector_snr=corrector_snr,
                           schedule=self.denoiser.schedule, project=self.project, project_below=project_below)
        else:
            estimate, blocks = self._block_inputs(len(rows), prompt_latents, prompt_mask, interval,
                                                  float(decoder_temperature), generator, bool(stop_at_eot))
            options = dict(blocks=blocks) if mode == "block-ar" else dict(blocks=blocks, window_blocks=window_blocks)
        n_latents = self._n_latents(max_new_tokens)
        with self._progress(progress, mode, plan.run, n_latents, window_blocks) as bar:
            sample = SAMPLERS[mode](estimate, plan, noise, n_latents, generator=generator,
                                    callback=self._step_callback(callback_on_step_end, tensor_inputs, bar),
                                    interrupt=lambda: self.interrupt, **options)
        # 6. decode
        seq = None if sample.tokens is None else self._cut(sample.tokens, max_new_tokens)
        out = self._output(rows, sample.latents, seq, estimate.nfe, output_type, max_new_tokens,
                           float(decoder_temperature), generator)
        return out if return_dict else out.to_tuple()

    def _progress(self, show: bool, mode: str, steps: int, n_latents: int, window_blocks: int):
        """A progress bar over the sampler's network calls (``steps`` per block, blocks entering every
        ceil(steps / window) calls in the block modes), or a context that gives None."""
        if not show:
            return contextlib.nullcontext()
        if mode == "parallel":
            return self.progress_bar(total=steps)
        window = 1 if mode == "block-ar" else window_blocks
        n_blocks = n_latents // self.denoiser.config.block_size
        return self.progress_bar(total=(n_blocks - 1) * -(-steps // window) + steps)

    def _step_callback(self, callback_on_step_end, tensor_inputs: list[str], bar=None):
        """The samplers' ``callback(i, timestep, tensors)``: diffusers' ``callback_on_step_end(pipe, i,
        timestep, tensors)`` with the requested ``tensor_inputs``, and the progress ``bar``'s update;
        None without either."""
        if callback_on_step_end is None and bar is None:
            return None

        def callback(i: int, timestep: torch.Tensor, tensors: dict) -> dict | None:
            if bar is not None:
                bar.update()
            if callback_on_step_end is None:
                return None
            return callback_on_step_end(self, i, timestep, {k: tensors[k] for k in tensor_inputs})

        return callback

    def _block_inputs(self, batch: int, prompt_latents, prompt_mask, interval: tuple[float, float],
                      decoder_temperature: float, generator, stop_at_eot: bool = True
                      ) -> tuple[Estimate, BlockContext]:
        """The estimate and :class:`BlockContext` of the block samplers: the denoiser's KV caches of the
        clean prompt (and, with guidance, of no prompt), decoding each committed block to tokens at
        ``decoder_temperature`` and re-encoding them into the caches (exact for a chunk-local encoder)."""
        den, ae = self.denoiser, self.autoencoder
        window = den.config.max_latents
        caches = {"cond": den.start_cache(prompt_latents, prompt_mask, batch=batch).trim(window)}
        if prompt_latents is not None and self.do_classifier_free_guidance:
            caches["uncond"] = den.start_cache(batch=batch)
        estimate = Estimate(self.predict_x0, den.dtype, den.config.self_conditioning, None, None,
                            self._guidance_scale, interval, {"kv_cache": caches["cond"]},
                            {"kv_cache": caches["uncond"]} if "uncond" in caches else None)
        pad = self.tokenizer.pad_token_id

        def commit(x: torch.Tensor) -> torch.Tensor:
            return self.tokens_of(x, decoder_temperature, generator)

        def extend(ids: torch.Tensor) -> None:
            clean = ae.encode(ids, (ids != pad).long()).to(den.dtype)
            for cache in caches.values():
                den.extend_cache(cache, clean).trim(window)

        return estimate, BlockContext(commit, extend, den.config.block_size, self.tokenizer.eos_token_id, den.dtype,
                                      stop_at_eot)

    def _cut(self, tokens: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Token ids (b, m) -> (b, max_new_tokens): cut or padded, and padded from the first end-of-text on."""
        eot, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        seq = tokens[:, :max_new_tokens]
        seq = torch.nn.functional.pad(seq, (0, max_new_tokens - seq.shape[1]), value=pad)
        return seq.masked_fill((seq == eot).int().cumsum(1) > 0, pad)

    def _output(self, rows: list[str], latents: torch.Tensor, seq: torch.Tensor | None, nfe: int, output_type: str,
                max_new_tokens: int | None = None, decoder_temperature: float = 0.0,
                generator: torch.Generator | None = None) -> LatentDiffusionPipelineOutput:
        """6. decode (unless ``seq``, the tokens, is known) and assemble the output."""
        if output_type == "latent":
            return LatentDiffusionPipelineOutput(None, None, nfe, rows, None, latents)
        if seq is None:
            seq = self.decode(latents, max_new_tokens, decoder_temperature, generator)
        texts = conts = None
        if output_type == "text":
            pad = self.tokenizer.pad_token_id
            conts = [self.tokenizer.decode([t for t in row if t != pad]) for row in seq.tolist()]
            texts = [p + c for p, c in zip(rows, conts)]
        return LatentDiffusionPipelineOutput(texts, conts, nfe, rows, seq, latents)
