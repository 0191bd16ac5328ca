"""Decoders of the masked diffusion baseline: four samplers with one signature.

Each decoder is a plain function (k-diffusion style)::

    decode_x(model_fn, x, mask_id, *, steps, temperature=1.0, generator=None, callback=None, ...)
        -> (x, nfe)

* ``model_fn(x, rows=None, attention=False)``: SUBS log-probabilities (b', s, vocab) of the rows
  ``rows`` of the batch (all when None) for the states ``x`` (b', s); with ``attention`` also
  the last layer's attention weights (b', heads, s, s). :func:`generate` builds it from a model.
* ``x`` (b, s): the starting state, ``mask_id`` at the positions to fill; every other position
  (prompt, padding) is kept.
* ``callback(info)`` after each step, with the dict every latentlm sampler passes:
  ``{"i": step, "t": time after the step in [0, 1], "x": current state, "x0": the most likely
  token at every position under the step's prediction}``.
* returns the filled state and the network evaluations (NFE) of the costliest row.

Categoricals are sampled in float64: float32 Gumbel-max lowers the effective temperature
(Zheng et al. 2024, "Masked diffusion models are secretly time-agnostic masked models and
exploit inaccurate categorical sampling", arXiv:2409.02908).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from latentlm.baselines.masked_diffusion import MaskedDiffusionLM
from latentlm.choices import MDLM_DECODERS
from latentlm.errors import InputError

MAX_STEPS = 10_000  # documented limit on decoding steps (bounds the time of one call)
Callback = Callable[[dict[str, Any]], None]


def _sample(logp: torch.Tensor, generator: torch.Generator | None, temperature: float = 1.0):
    """Sample from log-probs (..., V) in float64; returns ids and their probabilities."""
    logits = logp.double()
    probs = ((logits - logits.amax(-1, keepdim=True)) / max(temperature, 1e-6)).softmax(-1)  # no overflow
    flat = probs.reshape(-1, probs.shape[-1])
    if temperature == 0:
        ids = flat.argmax(-1)
    else:
        ids = torch.multinomial(flat.cpu(), 1, generator=generator).squeeze(-1).to(flat.device)
    conf = flat.gather(-1, ids[:, None]).squeeze(-1)
    return ids.reshape(probs.shape[:-1]), conf.reshape(probs.shape[:-1])


def _reveal_counts(n: int, steps: int) -> list[int]:
    """How many tokens to reveal at each of ``steps`` steps (as even as possible, sum n)."""
    base, extra = divmod(n, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _report(callback: Callback | None, i: int, steps: int, x: torch.Tensor, logp: torch.Tensor | None) -> None:
    if callback is not None:
        callback({"i": i, "t": 1 - (i + 1) / steps, "x": x, "x0": None if logp is None else logp.argmax(-1)})


@torch.no_grad()
def decode_ancestral(model_fn, x: torch.Tensor, mask_id: int, *, steps: int, temperature: float = 1.0,
                     generator: torch.Generator | None = None, callback: Callback | None = None
                     ) -> tuple[torch.Tensor, int]:
    """The MDLM reverse process (Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language
    Models", arXiv:2406.07524, eq. 7 with SUBS) on ``steps`` uniform time steps: each masked position
    is revealed with probability (t - s) / t. No-change cache: a row in which nothing was revealed
    reuses its previous network output, so batching prompts costs no more evaluations than running
    each alone (the NFE returned is the largest of any row)."""
    x = x.clone()
    b = x.shape[0]
    cached = None
    stale = torch.ones(b, dtype=torch.bool, device=x.device)
    evals = torch.zeros(b, dtype=torch.long, device=x.device)  # network evaluations of each row
    for k in range(steps):
        t, s = 1 - k / steps, 1 - (k + 1) / steps
        masked = x == mask_id
        if not masked.any():
            break
        if stale.any():
            rows = stale.nonzero().squeeze(1)
            out = model_fn(x[rows], rows)
            cached = out if cached is None else cached.index_copy_(0, rows, out)
            evals += stale
        reveal = masked & (torch.rand(x.shape, generator=generator).to(x.device) < (t - s) / t)
        if reveal.any():
            x[reveal] = _sample(cached[reveal], generator, temperature)[0]  # only where revealed
        stale = reveal.any(1) & (x == mask_id).any(1)  # changed, and something left to fill
        _report(callback, k, steps, x, cached)
    return x, int(evals.max())


def _decode_by_score(model_fn, x: torch.Tensor, mask_id: int, *, steps: int, temperature: float,
                     generator: torch.Generator | None, callback: Callback | None, threshold: float | None,
                     anchor_weight: float | None) -> tuple[torch.Tensor, int]:
    """Shared loop of the confidence decoders: each step samples every masked position, scores the
    samples, reveals the best-scored ones (an even share per step; with ``threshold`` also every one
    above it) and remasks the rest."""
    b = x.shape[0]
    counts = _reveal_counts(int((x == mask_id).sum(1).max()), steps)
    nfe = 0
    for k in range(steps):
        masked = x == mask_id
        if not masked.any():
            break
        if anchor_weight is not None:
            logp, weights = model_fn(x, None, attention=True)
        else:
            logp = model_fn(x, None)
        nfe += 1
        ids, conf = x.clone(), torch.full(x.shape, -1.0, dtype=torch.float64, device=x.device)
        ids[masked], conf[masked] = _sample(logp[masked], generator, temperature)  # masked positions only
        score = conf.clone()
        if anchor_weight is not None:
            a = weights[-1].float().mean(1)  # (b, q, k) averaged over heads
            uncertain = masked & (conf < threshold)
            received = (a * uncertain[:, :, None]).sum(1)  # (b, k): attention from uncertain queries
            received = received / received.amax(-1, keepdim=True).clamp_min(1e-12)
            score = torch.where(masked, conf + anchor_weight * received.double(), score)
        reveal = torch.zeros_like(masked)
        for r in range(b):
            n_masked = int(masked[r].sum())
            if n_masked == 0:
                continue
            n = min(counts[k] if k < len(counts) else n_masked, n_masked)
            if threshold is not None and anchor_weight is None:
                n = max(n, int(((conf[r] > threshold) & masked[r]).sum()))
            if k == steps - 1:
                n = n_masked
            reveal[r, score[r].topk(n).indices] = True
        x = torch.where(reveal & masked, ids, x)
        _report(callback, k, steps, x, logp)
    return x, nfe


@torch.no_grad()
def decode_llada(model_fn, x: torch.Tensor, mask_id: int, *, steps: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None, callback: Callback | None = None
                 ) -> tuple[torch.Tensor, int]:
    """Low-confidence remasking (Nie et al. 2025, "Large Language Diffusion Models", arXiv:2502.09992,
    Algorithm 5): each step samples every masked position and keeps the most confident ones, an even
    share per step, remasking the rest."""
    return _decode_by_score(model_fn, x, mask_id, steps=steps, temperature=temperature, generator=generator,
                            callback=callback, threshold=None, anchor_weight=None)


@torch.no_grad()
def decode_threshold(model_fn, x: torch.Tensor, mask_id: int, *, steps: int, temperature: float = 1.0,
                     generator: torch.Generator | None = None, callback: Callback | None = None,
                     threshold: float = 0.9) -> tuple[torch.Tensor, int]:
    """Confidence-threshold parallel decoding (Wu et al. 2025, "Fast-dLLM", arXiv:2505.22618): each
    step reveals every masked position whose sampled token has probability above ``threshold``, and at
    least the even share, so NFE <= steps."""
    return _decode_by_score(model_fn, x, mask_id, steps=steps, temperature=temperature, generator=generator,
                            callback=callback, threshold=threshold, anchor_weight=None)


@torch.no_grad()
def decode_anchor(model_fn, x: torch.Tensor, mask_id: int, *, steps: int, temperature: float = 1.0,
                  generator: torch.Generator | None = None, callback: Callback | None = None,
                  threshold: float = 0.9, anchor_weight: float = 1.0) -> tuple[torch.Tensor, int]:
    """Anchor revealing (AXON): among masked positions prefer confident ones that the uncertain
    masked positions (confidence below ``threshold``) attend to most in the last layer:
    score = confidence + anchor_weight * attention received (normalised to [0, 1]); reveals the
    even share per step."""
    return _decode_by_score(model_fn, x, mask_id, steps=steps, temperature=temperature, generator=generator,
                            callback=callback, threshold=threshold, anchor_weight=anchor_weight)


DECODERS: dict[str, Callable[..., tuple[torch.Tensor, int]]] = {
    "ancestral": decode_ancestral, "llada": decode_llada, "threshold": decode_threshold, "anchor": decode_anchor,
}
assert tuple(DECODERS) == MDLM_DECODERS  # the CLI's choices (latentlm/choices.py)


@torch.no_grad()
def generate(
    model: MaskedDiffusionLM,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    decoder: str = "ancestral",
    steps: int = 64,
    threshold: float = 0.9,
    anchor_weight: float = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    prompt_mask: torch.Tensor | None = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, int]:
    """Fill ``max_new_tokens`` masked positions after a clamped prompt (b, p) with ``decoder``
    (one of :data:`DECODERS`).

    Prompts of different lengths are left-padded, with ``prompt_mask`` (b, p) 0 on the padding: no
    position attends to it, and rotary attention depends only on relative positions, so each row is
    filled as it would be alone. The confidence decoders take at most ``max_new_tokens`` steps.

    Returns the new tokens (b, max_new_tokens) and the NFE.
    """
    if decoder not in DECODERS:
        raise InputError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    if max_new_tokens <= 0:
        raise InputError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if not 0 < steps <= MAX_STEPS:
        raise InputError(f"steps must be in [1, {MAX_STEPS}], got {steps}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InputError(f"temperature must be a finite number >= 0, got {temperature}")
    if not 0 < threshold <= 1:
        raise InputError(f"threshold must be in (0, 1], got {threshold}")
    b, p = prompt_ids.shape
    if p + max_new_tokens > model.config.max_seq_len:
        raise InputError(f"prompt ({p}) + max_new_tokens ({max_new_tokens}) exceeds the context of "
                         f"{model.config.max_seq_len} tokens")
    if prompt_mask is not None and prompt_mask.shape != prompt_ids.shape:
        raise InputError(f"prompt_mask {tuple(prompt_mask.shape)} must match prompt_ids {tuple(prompt_ids.shape)}")
    mask_id = model.config.mask_token_id
    x = torch.cat([prompt_ids, torch.full((b, max_new_tokens), mask_id, dtype=prompt_ids.dtype,
                                          device=prompt_ids.device)], dim=1)
    attn = None if prompt_mask is None else torch.cat(
        [prompt_mask.to(x.device), torch.ones(b, max_new_tokens, dtype=prompt_mask.dtype, device=x.device)], dim=1)
    if attn is not None:
        x = torch.where(attn.bool(), x, torch.full_like(x, model.config.pad_token_id))  # padding is never masked

    def model_fn(xs: torch.Tensor, rows: torch.Tensor | None = None, attention: bool = False):
        mask = None if attn is None else (attn if rows is None else attn[rows])
        return model(xs, mask, return_attention_layers=1) if attention else model(xs, mask)

    options = {"threshold": {"threshold": threshold},
               "anchor": {"threshold": threshold, "anchor_weight": anchor_weight}}.get(decoder, {})
    steps = min(steps, max_new_tokens) if decoder != "ancestral" else steps
    x, nfe = DECODERS[decoder](model_fn, x, mask_id, steps=steps, temperature=temperature, generator=generator,
                               callback=callback, **options)
    return x[:, p:], nfe
