"""Score-entropy discrete diffusion with uniform transitions (SEDD, Lou, Meng & Ermon 2024,
arXiv:2310.16834) on the shared layers: the model, its loss, its bound and its Tweedie tau-leaping sampler.
The math (the loss over one vocabulary sum, the Tweedie step, the prior term) is
:mod:`latentlm.baselines.score_entropy`; the forward process is Duo's (:mod:`.uniform_process`).

The network is Duo's time-conditioned transformer (:class:`.uniform_diffusion.UniformDiffusionLM`), read
differently: its head gives unnormalised log scores log s_theta(z_t, t)_y ~ log p_t(y) / p_t(z_t) of every
one-token change of each position, not a distribution over the clean token. Training minimises the
denoising score entropy at t ~ U(0, T_MAX) (stratified over the batch), which is also the bound ``compare``
reports (plus the prior term). The absorbing case of SEDD is MDLM (see :mod:`.score_entropy`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from latentlm.baselines.bounds import prompt_positions
from latentlm.baselines.score_entropy import T_MAX, dse_draw, tweedie_probs, uniform_prior_kl
from latentlm.baselines.uniform_decoders import Callback
from latentlm.baselines.uniform_diffusion import (
    MAX_STEPS,
    UniformDiffusionLM,
    clean_prefixes,
    prior_canvas,
)
from latentlm.errors import ConfigError, InputError
from latentlm.outputs import LossOutput


class ScoreEntropyLM(UniformDiffusionLM):
    """Duo's network giving unnormalised log scores (b, s, K) of the one-token changes of z_t at time t."""

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Noisy ids z_t (b, s) at times t (b,) -> log scores (b, s, K) in float32."""
        return self.head_output(z_t, t, attention_mask)


@dataclass
class ScoreEntropyLossConfig:
    """Loss section of a score-entropy run (``[sedd.loss]``)."""

    # rows whose first tokens (a uniform share of up to half the row) stay clean and unscored: generation
    # continues a clean prompt
    p_prefix: float = 0.5

    def validate(self) -> None:
        if not 0 <= self.p_prefix <= 1:
            raise ConfigError(f"loss.p_prefix must be in [0, 1], got {self.p_prefix}")


def score_entropy_loss(model: ScoreEntropyLM, batch: dict[str, torch.Tensor],
                       cfg: ScoreEntropyLossConfig | None = None) -> LossOutput:
    """Denoising score entropy per scored token at t ~ U(0, T_MAX), stratified across the batch (the
    continuous-time bound's integrand, up to the constant prior term)."""
    cfg = cfg or ScoreEntropyLossConfig()
    ids = batch["input_ids"]
    b = ids.shape[0]
    u = (torch.rand((), device=ids.device) + torch.arange(b, device=ids.device) / b) % 1
    mask = batch.get("attention_mask")
    keep, weight = clean_prefixes(ids, cfg.p_prefix, mask)

    def score(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(torch.where(keep, ids, z), t, mask)

    per_row = dse_draw(score, ids, model.config.vocab_size, u * T_MAX, weight=weight)
    return LossOutput((T_MAX * per_row.sum() / weight.sum().clamp_min(1)).float(), {})


@torch.no_grad()
def nll_bound(model: ScoreEntropyLM, ids: torch.Tensor, *, prefix_len: int = 0, n_samples: int = 64,
              generator_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo bound on -log p of each row of ids (b, s) given its first ``prefix_len`` tokens (kept
    clean), from ``n_samples`` stratified times: T_MAX x the mean score entropy + the prior term per scored
    token. Returns (mean, standard error) in nats, each (b,)."""
    keep = prompt_positions(ids, prefix_len, n_samples)
    weight = (~keep).to(torch.float64)

    def score(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(torch.where(keep, ids, z), t)  # the prompt stays clean

    g = torch.Generator().manual_seed(generator_seed)
    offset = float(torch.rand((), generator=g))
    draws = []
    for k in range(n_samples):
        t = torch.full((ids.shape[0],), ((k + offset) / n_samples % 1) * T_MAX, device=ids.device)
        draws.append(T_MAX * dse_draw(score, ids, model.config.vocab_size, t, weight=weight, generator=g))
    d = torch.stack(draws).double() + uniform_prior_kl(1 - T_MAX, model.config.vocab_size) * weight.sum(-1)
    return d.mean(0), d.std(0) / math.sqrt(n_samples)


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat.cpu(), 1, generator=generator).squeeze(-1).to(probs.device).reshape(probs.shape[:-1])


@torch.no_grad()
def decode_tweedie(score_fn, x: torch.Tensor, fill: torch.Tensor, *, steps: int,
                   generator: torch.Generator | None = None, callback: Callback | None = None
                   ) -> tuple[torch.Tensor, int]:
    """Tweedie tau-leaping (SEDD, section 4.2) from t = T_MAX down to 0 in ``steps`` equal steps, the last
    one to the clean tokens; the MDLM decoders' shape with ``score_fn(z, t) -> log scores`` (b, s, K)."""
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    x = x.clone()
    for i in range(steps, 0, -1):
        t, s = T_MAX * i / steps, T_MAX * (i - 1) / steps
        log_score = score_fn(x, torch.full((x.shape[0],), t, device=x.device))
        a_t, a_s = (torch.tensor(1 - v, dtype=torch.float64) for v in (t, s))
        probs = tweedie_probs(log_score, x, a_s, a_t)
        x = torch.where(fill, _draw(probs, generator), x)
        if callback is not None:
            callback({"i": steps - i, "t": s, "x": x, "x0": probs.argmax(-1)})
    return x, steps


@torch.no_grad()
def generate(model: ScoreEntropyLM, prompt_ids: torch.Tensor, max_new_tokens: int, *, steps: int = 64,
             generator: torch.Generator | None = None, prompt_mask: torch.Tensor | None = None,
             callback=None) -> tuple[torch.Tensor, int]:
    """Sample ``max_new_tokens`` tokens after a clamped prompt (b, p), left-padded with ``prompt_mask``
    (b, p) 0 on the padding, by Tweedie tau-leaping. Returns the new tokens (b, max_new_tokens) and the NFE."""
    if not 0 < steps <= MAX_STEPS:
        raise InputError(f"steps must be in [1, {MAX_STEPS}], got {steps}")
    x, fill, attn = prior_canvas(model, prompt_ids, max_new_tokens, prompt_mask, generator)
    p = prompt_ids.shape[1]
    x, nfe = decode_tweedie(lambda z, t: model(z, t, attn), x, fill, steps=steps, generator=generator,
                            callback=callback)
    return x[:, p:], nfe
