"""Autoregressive baseline: a causal transformer LM on the shared layers, with a KV cache.

Exact likelihood (``nll``) and sampling with temperature / top-p in float64.
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
    ) -> torch.Tensor:
        """input_ids (b, s) -> logits (b, s, vocab) of the next token at each position."""
        past = kv_caches[0].length if kv_caches else 0
        if past + input_ids.shape[1] > self.config.max_seq_len:
            raise InputError(
                f"sequence of {past + input_ids.shape[1]} tokens exceeds the model's context of "
                f"{self.config.max_seq_len}"
            )
        h, _ = self.backbone(self.embed(input_ids), attention_mask=attention_mask, causal=True,
                             kv_caches=kv_caches)
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


def sample_next(
    logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0, generator=None
) -> torch.Tensor:
    """Sample ids from logits (b, vocab) in float64 (float32 sampling lowers the
    effective temperature: Zheng et al. 2024). temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.double()
    probs = torch.softmax((logits - logits.amax(-1, keepdim=True)) / temperature, dim=-1)  # no overflow
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    if generator is not None and generator.device != probs.device:  # a CPU generator for a GPU model
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


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
) -> tuple[torch.Tensor, int]:
    """Continue ``input_ids`` (b, s) by ``max_new_tokens`` with the KV cache.

    Prompts of different lengths are left-padded, with ``attention_mask`` (b, s)
    0 on the padding: rotary attention depends only on relative positions, so
    each row continues exactly as it would alone. Returns the new tokens
    (b, max_new_tokens) and the number of network evaluations (NFE). Rows stop
    changing after their end-of-text (padded with it).
    """
    if max_new_tokens <= 0:
        raise InputError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InputError(f"temperature must be a finite number >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")
    if input_ids.shape[1] == 0:
        raise InputError("generation needs at least one prompt token (use the end-of-text id)")
    if input_ids.shape[1] + max_new_tokens > model.config.max_seq_len:
        raise InputError(
            f"prompt ({input_ids.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"context of {model.config.max_seq_len} tokens"
        )
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise InputError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    cache = model.new_cache()
    eot = model.config.eot_token_id
    mask = attention_mask  # grows by one real position per generated token
    logits = model(input_ids, attention_mask=mask, kv_caches=cache)[:, -1]
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    out = []
    for i in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_p, generator).to(input_ids.device)
        nxt = torch.where(done, torch.full_like(nxt, eot), nxt)
        done |= nxt == eot
        out.append(nxt)
        if i + 1 < max_new_tokens:
            if mask is not None:  # (b, cached + 1): the new token is real in every row
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits = model(nxt[:, None], attention_mask=mask, kv_caches=cache)[:, -1]
    return torch.stack(out, dim=1), max_new_tokens
