"""Autoregressive baseline: a causal transformer LM on the shared layers, with a KV cache.

Exact likelihood (``nll``) and inverse-CDF sampling with temperature / top-p in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from latentlm.errors import InputError
from latentlm.layers import KVCache, Transformer
from latentlm.outputs import LossOutput

MAX_NEW_TOKENS = 16_384  # documented limit on one generate call (the cache slides past the context: bounds time)


class CausalLM(ModelMixin, ConfigMixin):
    """Decoder-only transformer LM; ``forward`` gives next-token logits."""

    @register_to_config
    def __init__(
        self,
        vocab_size: int,
        dim: int = 256,
        depth: int = 6,
        n_heads: int = 4,
        mlp_ratio: float = 4.0,
        max_seq_len: int = 1024,
        pad_token_id: int = 0,
        eot_token_id: int = 1,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.backbone = Transformer(dim, depth, n_heads, mlp_ratio)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        kv_caches: list[KVCache] | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (b, s) -> logits (b, s, vocab) of the next token at each position. ``positions`` (s,):
        the rotary positions of ``input_ids`` (default: after the cached ones)."""
        past = kv_caches[0].length if kv_caches else 0
        if past + input_ids.shape[1] > self.config.max_seq_len:
            raise InputError(
                f"sequence of {past + input_ids.shape[1]} tokens exceeds the model's context of "
                f"{self.config.max_seq_len}"
            )
        h, _ = self.backbone(self.embed(input_ids), attention_mask=attention_mask, causal=True,
                             kv_caches=kv_caches, positions=positions)
        return F.linear(h, self.embed.weight)  # tied input/output embeddings

    def new_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.backbone.blocks]


def ar_loss(model: CausalLM, batch: dict[str, torch.Tensor]) -> LossOutput:
    """Mean next-token cross-entropy over real (non-padding) target tokens."""
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    logits = model(ids[:, :-1], None if mask is None else mask[:, :-1])
    targets = ids[:, 1:]
    if mask is not None:
        targets = targets.masked_fill(mask[:, 1:] == 0, -100)
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
    return LossOutput(loss)


@torch.no_grad()
def sequence_nll(model: CausalLM, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 prefix_len: int = 0) -> torch.Tensor:
    """Exact -log p of each row's tokens after the first ``prefix_len`` + 1 (b,), in nats.

    ``ids`` (b, s) starts with the context token (end-of-text) at position 0; the
    scored targets are positions ``prefix_len + 1 ..`` where the mask is 1.
    """
    logits = model(ids[:, :-1], None if attention_mask is None else attention_mask[:, :-1]).float()
    nll = -logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (b, s-1)
    weight = torch.ones_like(nll) if attention_mask is None else attention_mask[:, 1:].float()
    weight[:, :prefix_len] = 0
    return (nll * weight).sum(-1)


def next_token_probs(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """The sampling distribution (..., vocab) of logits at ``temperature`` and nucleus ``top_p``, in float64
    and in vocabulary order (float32 sampling lowers the effective temperature: Zheng et al. 2024).
    Top-p keeps the most probable tokens until their mass reaches ``top_p`` and renormalises."""
    logits = logits.double()
    probs = torch.softmax((logits - logits.amax(-1, keepdim=True)) / temperature, dim=-1)  # no overflow
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p * keep)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def pick(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling, Pick(u, P) of PTP (Draxler et al. 2026, eq. 2): the token whose interval
    [F(t-1), F(t)) of the cumulative distribution in vocabulary order holds ``u``. probs (..., vocab),
    u (...) in [0, 1) -> ids (...). With u ~ U[0, 1) this is a sample of ``probs``; tokens of
    probability 0 are never picked."""
    cdf = probs.cumsum(-1)
    ids = torch.searchsorted(cdf, u.to(cdf.dtype)[..., None].contiguous(), right=True).squeeze(-1)
    last = (probs > 0).cumsum(-1).argmax(-1)  # the last token of positive mass (u past a rounded total of 1)
    return torch.minimum(ids, last)


def token_interval(probs: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The interval [low, high) of u that picks ``ids`` (...) from ``probs`` (..., vocab)."""
    cdf = torch.nn.functional.pad(probs.cumsum(-1), (1, 0))  # F(-1) = 0, then the cdf :func:`pick` uses
    return cdf.gather(-1, ids[..., None]).squeeze(-1), cdf.gather(-1, ids[..., None] + 1).squeeze(-1)


def draw_uniforms(batch: int, n: int, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The sampler's randomness: u (batch, n) ~ U[0, 1) in float64, one per row and new token, drawn at
    once from ``generator`` (on its own device) so that a seed fixes every sample, whichever decoder
    (token by token, or PTP's drafts and verification) consumes them."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(batch, n, generator=generator, dtype=torch.float64, device=gen_device).to(device)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0,
                u: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Ids (b,) from logits (b, vocab) by inverse-CDF sampling with ``u`` (b,) (drawn from ``generator``
    when not given). temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    if u is None:
        u = draw_uniforms(logits.shape[0], 1, generator, logits.device)[:, 0]
    return pick(next_token_probs(logits, temperature, top_p), u.to(logits.device))


def check_sampling(temperature: float, top_p: float) -> None:
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InputError(f"temperature must be a finite number >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")


def check_prompt(model: CausalLM, input_ids: torch.Tensor, max_new_tokens: int,
                 attention_mask: torch.Tensor | None, *, sliding: bool = False) -> None:
    """InputError unless the prompt (and, unless ``sliding``, the new tokens) fit the model's context."""
    if max_new_tokens <= 0:
        raise InputError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if input_ids.shape[1] == 0:
        raise InputError("generation needs at least one prompt token (use the end-of-text id)")
    if sliding and input_ids.shape[1] > model.config.max_seq_len:
        raise InputError(f"prompt of {input_ids.shape[1]} tokens exceeds the context of "
                         f"{model.config.max_seq_len} tokens; shorten the prompt")
    if sliding and max_new_tokens > MAX_NEW_TOKENS:
        raise InputError(f"max_new_tokens {max_new_tokens} exceeds the limit of {MAX_NEW_TOKENS} per call; "
                         "generate in several calls, each continuing the last")
    if not sliding and input_ids.shape[1] + max_new_tokens > model.config.max_seq_len:
        raise InputError(
            f"prompt ({input_ids.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"context of {model.config.max_seq_len} tokens"
        )
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise InputError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")


@torch.no_grad()
def generate(
    model: CausalLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
    stop_at_eot: bool = True,
) -> tuple[torch.Tensor, int]:
    """Continue ``input_ids`` (b, s) by ``max_new_tokens`` with the KV cache.

    Prompts of different lengths are left-padded, with ``attention_mask`` (b, s)
    0 on the padding: rotary attention depends only on relative positions, so
    each row continues exactly as it would alone. Token i of row r is picked
    by inverse CDF with u[r, i] of :func:`draw_uniforms` (the generator's first
    draw). Returns the new tokens (b, max_new_tokens) and the number of network
    evaluations (NFE). Rows stop changing after their end-of-text (padded with it),
    and generation stops when every row has ended; with ``stop_at_eot=False`` rows
    go on past it, as in the stream of documents the model was trained on (speed
    measurements of a fixed number of tokens).

    Any length: once prompt and new tokens fill the context (``max_seq_len``), the
    cache slides, each new token attending to the last ``max_seq_len`` positions at
    every layer (sliding-window attention, as Mistral's rolling cache); within the
    context nothing changes.
    """
    check_sampling(temperature, top_p)
    check_prompt(model, input_ids, max_new_tokens, attention_mask, sliding=True)
    u = draw_uniforms(input_ids.shape[0], max_new_tokens, generator, input_ids.device)
    cache, window = model.new_cache(), model.config.max_seq_len
    eot = model.config.eot_token_id
    mask = attention_mask  # grows by one real position per generated token
    logits = model(input_ids, attention_mask=mask, kv_caches=cache)[:, -1]
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    out = torch.full((input_ids.shape[0], max_new_tokens), eot, dtype=torch.long, device=input_ids.device)
    for i in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_p, u[:, i])
        if stop_at_eot:
            nxt = torch.where(done, torch.full_like(nxt, eot), nxt)
            done |= nxt == eot
        out[:, i] = nxt
        if i + 1 == max_new_tokens or bool(done.all()):  # every row has ended: the rest is end-of-text
            return out, i + 1
        if cache[0].length == window:  # the context is full: the oldest position leaves the cache
            for c in cache:
                c.k, c.v = c.k[:, :, 1:], c.v[:, :, 1:]
            mask = None if mask is None else mask[:, 1:]
        if mask is not None:  # (b, cached + 1): the new token is real in every row
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        position = torch.tensor([input_ids.shape[1] + i], device=input_ids.device)  # rotary: relative offsets kept
        logits = model(nxt[:, None], attention_mask=mask, kv_caches=cache, positions=position)[:, -1]
    raise AssertionError("unreachable")
