"""Uniform-state token diffusion (UDLM / Duo) on the shared layers: the model, its loss, generation and
likelihood bound. The process itself (forward marginals, posteriors, the Psi-sampler's step, the T-step
NELBO) is :mod:`latentlm.baselines.uniform_process`; the samplers are
:mod:`latentlm.baselines.uniform_decoders`.

The network is a bidirectional transformer conditioned on the time t by adaLN (as Duo's DiT): any token
of z_t may be noise, so unlike MDLM the input does not say how noisy it is. It gives the clean-token
log-probabilities log p_theta(x0 | z_t, t) (b, s, K).

Training minimises the NELBO of the ``loss_steps``-step reverse process (one step index per row, T
times its KL; the continuous-time NELBO is its limit), which is also the bound ``compare`` reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from latentlm.baselines.bounds import prompt_positions
from latentlm.baselines.uniform_decoders import UNIFORM_DECODERS, prior_state
from latentlm.baselines.uniform_process import nelbo_draw
from latentlm.errors import ConfigError, InputError
from latentlm.layers import TimestepEmbedder, Transformer
from latentlm.outputs import LossOutput

MAX_STEPS = 10_000  # documented limit on sampling steps (bounds the time of one call)


class UniformDiffusionLM(ModelMixin, ConfigMixin):
    """Bidirectional, time-conditioned transformer giving log p_theta(x0 | z_t, t)."""

    @register_to_config
    def __init__(
        self,
        vocab_size: int,
        dim: int = 256,
        depth: int = 6,
        n_heads: int = 4,
        mlp_ratio: float = 4.0,
        max_seq_len: int = 1024,
        cond_dim: int = 128,
        loss_steps: int = 1000,
        pad_token_id: int = 0,
        eot_token_id: int = 1,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.time = TimestepEmbedder(cond_dim)
        self.backbone = Transformer(dim, depth, n_heads, mlp_ratio, cond_dim=cond_dim)
        self.head = nn.Linear(dim, vocab_size)
        # training-mode loss calls so far: Duo's curriculum runs over the first ones (saved and resumed)
        self.register_buffer("training_calls", torch.zeros((), dtype=torch.long))

    def head_output(self, z_t: torch.Tensor, t: torch.Tensor, attention_mask: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Noisy ids z_t (b, s), or token weights (b, s, K) (the curriculum's relaxed input), at times t (b,)
        -> the output head's values (b, s, K) in float32."""
        if z_t.shape[1] > self.config.max_seq_len:
            raise InputError(f"sequence of {z_t.shape[1]} tokens exceeds the model's context of "
                             f"{self.config.max_seq_len}")
        h = self.embed(z_t) if not z_t.is_floating_point() else z_t.to(self.embed.weight.dtype) @ self.embed.weight
        h, _ = self.backbone(h, attention_mask=attention_mask, cond=self.time(t))
        return self.head(h).float()

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Clean-token log-probabilities (b, s, K) in float32 (see :meth:`head_output`)."""
        return self.head_output(z_t, t, attention_mask).log_softmax(-1)


@dataclass
class UniformLossConfig:
    """Loss section of a uniform-state run (``[duo.loss]``)."""

    # rows whose first tokens (a uniform share of up to half the row) stay clean and unscored: generation
    # continues a clean prompt, which unconditional training never shows a uniform-state model
    p_prefix: float = 0.5
    # Duo's curriculum: the first curriculum_steps training-mode loss calls (micro-batches) feed the network
    # softmax(w_t / tau) of the Gaussian diffusion whose argmax is z_t, tau annealed log-linearly from
    # curriculum_tau_start to curriculum_tau_end; 0 turns it off
    curriculum_steps: int = 0
    curriculum_tau_start: float = 0.1
    curriculum_tau_end: float = 0.01

    def validate(self) -> None:
        if not 0 <= self.p_prefix <= 1:
            raise ConfigError(f"loss.p_prefix must be in [0, 1], got {self.p_prefix}")
        if self.curriculum_steps < 0:
            raise ConfigError(f"loss.curriculum_steps must be >= 0, got {self.curriculum_steps}")
        if not 0 < self.curriculum_tau_end <= self.curriculum_tau_start:
            raise ConfigError(f"loss.curriculum_tau_start ({self.curriculum_tau_start}) and curriculum_tau_end "
                              f"({self.curriculum_tau_end}) must satisfy 0 < end <= start")

    def tau(self, call: int) -> float | None:
        """The curriculum's temperature at training call ``call``, or None once it is over."""
        if call >= self.curriculum_steps:
            return None
        frac = call / max(1, self.curriculum_steps - 1)
        return self.curriculum_tau_start * (self.curriculum_tau_end / self.curriculum_tau_start) ** frac


def clean_prefixes(ids: torch.Tensor, p_prefix: float, mask: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, weight), both (b, s): a ``p_prefix`` share of rows keeps its first tokens (a uniform share of
    up to half the row) clean, and the loss weighs every other real token 1 (float64)."""
    b, s = ids.shape
    lengths = torch.randint(0, s // 2 + 1, (b, 1), device=ids.device)
    lengths = torch.where(torch.rand(b, 1, device=ids.device) < p_prefix, lengths, torch.zeros_like(lengths))
    keep = torch.arange(s, device=ids.device)[None] < lengths
    weight = (~keep).to(torch.float64)
    return keep, weight if mask is None else weight * mask


def uniform_loss(model: UniformDiffusionLM, batch: dict[str, torch.Tensor],
                 cfg: UniformLossConfig | None = None) -> LossOutput:
    """The NELBO per scored token of the model's ``loss_steps``-step reverse process: one step per row,
    stratified across the batch (low-discrepancy, as MDLM's times); a ``cfg.p_prefix`` share of rows keeps
    a clean, unscored prefix; during Duo's curriculum (training mode) the network sees the relaxed input."""
    cfg = cfg or UniformLossConfig()
    ids = batch["input_ids"]
    b, steps = ids.shape[0], model.config.loss_steps
    u = (torch.rand((), device=ids.device) + torch.arange(b, device=ids.device) / b) % 1
    step = (u * steps).long().clamp(0, steps - 1) + 1
    mask = batch.get("attention_mask")
    keep, weight = clean_prefixes(ids, cfg.p_prefix, mask)
    tau = None
    if model.training:
        tau = cfg.tau(int(model.training_calls))
        model.training_calls += 1
    vocab = model.config.vocab_size

    def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        clean = ids if not z.is_floating_point() else torch.nn.functional.one_hot(ids, vocab).to(z.dtype)
        return model(torch.where(keep if clean.dim() == 2 else keep[..., None], clean, z), t, mask).exp()

    per_row = nelbo_draw(denoise, ids, vocab, steps, weight=weight, step=step, relax_tau=tau)
    metrics = {} if tau is None else {"curriculum_tau": tau}
    return LossOutput((per_row.sum() / weight.sum().clamp_min(1)).float(), metrics)


@torch.no_grad()
def nll_bound(model: UniformDiffusionLM, ids: torch.Tensor, *, prefix_len: int = 0, n_samples: int = 64,
              generator_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo NELBO of each row of ids (b, s) given its first ``prefix_len`` tokens (kept clean: the
    bound of the continuation given the prompt), from ``n_samples`` stratified step indices of the model's
    ``loss_steps``. Returns (mean, standard error) in nats, each (b,)."""
    keep = prompt_positions(ids, prefix_len, n_samples)
    steps, vocab = model.config.loss_steps, model.config.vocab_size
    weight = (~keep).to(torch.float64)

    def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(torch.where(keep, ids, z), t).exp()  # the prompt stays clean

    g = torch.Generator().manual_seed(generator_seed)
    offset = float(torch.rand((), generator=g))
    draws = []
    for k in range(n_samples):
        step = torch.full((ids.shape[0],), int(((k + offset) / n_samples % 1) * steps) + 1, device=ids.device)
        draws.append(nelbo_draw(denoise, ids, vocab, steps, weight=weight, step=step, generator=g))
    d = torch.stack(draws).double()
    return d.mean(0), d.std(0) / math.sqrt(n_samples)


def prior_canvas(model: UniformDiffusionLM, prompt_ids: torch.Tensor, max_new_tokens: int,
                 prompt_mask: torch.Tensor | None, generator: torch.Generator | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(x, fill, attention mask) of a uniform-state generation: the prompt (b, p) followed by
    ``max_new_tokens`` uniform draws (the prior), ``fill`` marking those, the mask extending ``prompt_mask``
    (None: no padding). InputError when they do not fit the model's context."""
    if max_new_tokens <= 0:
        raise InputError(f"max_new_tokens must be positive, got {max_new_tokens}")
    b, p = prompt_ids.shape
    if p + max_new_tokens > model.config.max_seq_len:
        raise InputError(f"prompt ({p}) + max_new_tokens ({max_new_tokens}) exceeds the context of "
                         f"{model.config.max_seq_len} tokens")
    x = torch.cat([prompt_ids, torch.zeros(b, max_new_tokens, dtype=prompt_ids.dtype, device=prompt_ids.device)], 1)
    fill = torch.zeros_like(x, dtype=torch.bool)
    fill[:, p:] = True
    attn = None if prompt_mask is None else torch.cat(
        [prompt_mask.to(x.device), torch.ones(b, max_new_tokens, dtype=prompt_mask.dtype, device=x.device)], 1)
    return prior_state(x, fill, model.config.vocab_size, generator), fill, attn


@torch.no_grad()
def generate(model: UniformDiffusionLM, prompt_ids: torch.Tensor, max_new_tokens: int, *,
             decoder: str = "ancestral", steps: int = 64, temperature: float = 1.0, corrector: float = 0.5,
             corrector_interval: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None,
             prompt_mask: torch.Tensor | None = None, callback=None) -> tuple[torch.Tensor, int]:
    """Sample ``max_new_tokens`` tokens after a clamped prompt (b, p), left-padded with ``prompt_mask``
    (b, p) 0 on the padding, by ``decoder`` ("ancestral" or "psi", :data:`UNIFORM_DECODERS`; ``corrector``
    and ``corrector_interval`` are the Psi-sampler's). Returns the new tokens (b, max_new_tokens) and the NFE."""
    if decoder not in UNIFORM_DECODERS:
        raise InputError(f"unknown decoder {decoder!r} for uniform-state diffusion; choose one of "
                         f"{', '.join(UNIFORM_DECODERS)}")
    if not 0 < steps <= MAX_STEPS:
        raise InputError(f"steps must be in [1, {MAX_STEPS}], got {steps}")
    x, fill, attn = prior_canvas(model, prompt_ids, max_new_tokens, prompt_mask, generator)
    p = prompt_ids.shape[1]

    def model_fn(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(z, t, attn)

    options = {"corrector": corrector, "corrector_interval": corrector_interval} if decoder == "psi" else {}
    x, nfe = UNIFORM_DECODERS[decoder](model_fn, x, fill, steps=steps, temperature=temperature,
                                       generator=generator, callback=callback, **options)
    return x[:, p:], nfe
