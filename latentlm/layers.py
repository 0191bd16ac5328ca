"""Shared transformer layers: one set of blocks for every model in latentlm.

RMSNorm, rotary position embeddings, multi-head attention through
``scaled_dot_product_attention`` (causal and padding masks, optional KV cache,
optional attention weights), a SwiGLU MLP, a pre-norm transformer block with
optional adaLN-Zero modulation (DiT) for time conditioning, and a timestep
embedding built on diffusers' helpers.

Shapes: ``b`` batch, ``s`` query length, ``k`` key length, ``d`` width,
``h`` heads, ``hd`` head width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, get_timestep_embedding
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from latentlm.errors import InputError


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``scaled_dot_product_attention``; in bf16 on the CPU through the math kernel, which is 2-4x
    faster there than the flash kernel for forward + backward at 40-96 positions, at the same error."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def RMSNorm(dim: int, eps: float = 1e-6) -> nn.RMSNorm:  # noqa: N802 - reads as a layer
    """Root-mean-square norm (torch's own implementation)."""
    return nn.RMSNorm(dim, eps=eps)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021), rotate-half convention."""

    def __init__(self, head_dim: int, base: float = 10_000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise InputError(f"rotary head_dim must be even, got {head_dim}")
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (s,) -> cos, sin of shape (s, hd), float32; positions per row (b, s) ->
        (b, 1, s, hd), broadcast over the heads."""
        freqs = positions.float()[..., None] * self.inv_freq  # (..., s, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)
        if positions.dim() == 2:
            emb = emb[:, None]
        return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (b, h, s, hd) by the angles of cos/sin (s, hd) or (b, 1, s, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


@dataclass
class KVCache:
    """Keys and values of the positions seen so far, one per attention layer."""

    k: torch.Tensor | None = None  # (b, h, k, hd)
    v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]


def build_attention_mask(
    attention_mask: torch.Tensor | None, q_len: int, k_len: int, causal: bool, device
) -> torch.Tensor | None:
    """Boolean (b or 1, 1, q, k) mask, True = may attend.

    Queries are the last ``q_len`` of ``k_len`` positions (KV cache). Every
    query may attend to itself so that no row is fully masked (a fully masked
    row makes softmax NaN, e.g. a padded query under a causal mask).
    """
    if attention_mask is None and not causal:
        return None
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    mask = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    if causal:
        mask = k_pos <= q_pos
    mask = mask[None, None]  # (1, 1, q, k)
    if attention_mask is not None:
        if attention_mask.shape[-1] != k_len:
            raise InputError(
                f"attention_mask covers {attention_mask.shape[-1]} positions, expected {k_len}"
            )
        mask = mask & attention_mask.bool()[:, None, None, :]
    return mask | (k_pos == q_pos)[None, None]


class Attention(nn.Module):
    """Multi-head self-attention with rotary positions."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        if dim % n_heads:
            raise InputError(f"width {dim} is not divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        return_weights: bool = False,
        update_cache: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (b, s, d) -> (b, s, d) and, if asked, attention weights (b, h, s, k). With ``kv_cache``
        the queries also attend to the cached keys; ``update_cache=False`` leaves the cache as it was
        (a denoising step that reads the clean context without adding its noisy queries to it)."""
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            cos, sin = rotary  # (s, hd) for the query positions
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            if kv_cache.k is not None:
                k = torch.cat([kv_cache.k, k], dim=2)
                v = torch.cat([kv_cache.v, v], dim=2)
            if update_cache:
                kv_cache.k, kv_cache.v = k, v
        weights = None
        if return_weights:
            scores = (q @ k.transpose(-1, -2)) / self.head_dim**0.5  # (b, h, s, k)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.float().softmax(dim=-1).to(q.dtype)
            y = weights @ v
        else:
            y = _attention(q, k, v, mask)
        return self.out(y.transpose(1, 2).reshape(b, s, d)), weights


class SwiGLU(nn.Module):
    """Gated MLP: W2(silu(W1 x) * W3 x) (Shazeer 2020)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w13 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), x + mlp(norm(x)).

    With ``cond_dim`` set, adaLN-Zero (Peebles & Xie 2023): a conditioning
    vector (b, cond_dim) or per position (b, s, cond_dim) gives shift, scale
    and gate for both branches; the projection starts at zero so the block
    starts as the identity. With ``cond_index`` (s,), ``cond`` (b, u, cond_dim) holds u
    distinct conditionings and position i takes ``cond[:, cond_index[i]]``: the projection
    runs on the u rows alone.
    """

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float = 4.0, cond_dim: int | None = None) -> None:
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.attn = Attention(dim, n_heads)
        self.mlp = SwiGLU(dim, int(mlp_ratio * dim * 2 / 3 + 7) // 8 * 8)
        self.ada = None
        if cond_dim is not None:
            self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))
            nn.init.zeros_(self.ada[1].weight)
            nn.init.zeros_(self.ada[1].bias)

    def forward(self, x, rotary=None, mask=None, cond=None, kv_cache=None, return_weights=False,
                update_cache=True, cond_index=None):
        if self.ada is None:
            h, w = self.attn(self.norm1(x), rotary, mask, kv_cache, return_weights, update_cache)
            x = x + h
            return x + self.mlp(self.norm2(x)), w
        if cond is None:
            raise InputError("this block is conditioned (adaLN): pass cond")
        mod = self.ada(cond)
        if cond_index is not None:
            mod = mod[:, cond_index]  # (b, s, 6d) from the (b, u, 6d) distinct ones
        elif mod.dim() == 2:
            mod = mod[:, None, :]  # (b, 1, 6d): same modulation at every position
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        h, w = self.attn(self.norm1(x) * (1 + scale1) + shift1, rotary, mask, kv_cache, return_weights,
                         update_cache)
        x = x + gate1 * h
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2), w


class Transformer(nn.Module):
    """A stack of :class:`TransformerBlock` with rotary positions and a final norm."""

    def __init__(
        self, dim: int, depth: int, n_heads: int, mlp_ratio: float = 4.0, cond_dim: int | None = None
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, n_heads, mlp_ratio, cond_dim) for _ in range(depth)
        )
        self.rotary = RotaryEmbedding(dim // n_heads)
        self.norm = RMSNorm(dim)

    def forward(
        self,
        x: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        causal: bool = False,
        cond: torch.Tensor | None = None,
        kv_caches: list[KVCache] | None = None,
        return_attention_layers: int = 0,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        update_cache: bool = True,
        cond_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (b, s, d) -> hidden (b, s, d), attention weights of the last
        ``return_attention_layers`` blocks (each (b, h, s, k)).

        ``attention_mask`` (b, k): 1 for real tokens, 0 for padding, over all
        key positions (cached ones included). ``positions`` (s,) or per row (b, s): rotary positions of
        the queries (default: they follow the cached ones). ``mask`` (b or 1, 1, s, k), True = may attend: a
        complete mask in place of ``attention_mask`` and ``causal`` (block-causal attention).
        ``update_cache=False``: attend to ``kv_caches`` without adding these positions to them.
        ``cond_index`` (s,): ``cond`` (b, u, cond_dim) holds u distinct conditionings, position i takes
        ``cond[:, cond_index[i]]`` (see :class:`TransformerBlock`).
        """
        past = kv_caches[0].length if kv_caches else 0
        s = x.shape[1]
        if positions is None:
            positions = torch.arange(past, past + s, device=x.device)
        rotary = self.rotary(positions)
        if mask is None:
            mask = build_attention_mask(attention_mask, s, past + s, causal, x.device)
        elif attention_mask is not None or causal:
            raise InputError("pass either mask or attention_mask / causal, not both")
        weights = []
        first_returned = len(self.blocks) - return_attention_layers
        for i, block in enumerate(self.blocks):
            cache = kv_caches[i] if kv_caches else None
            x, w = block(x, rotary, mask, cond, cache, return_weights=i >= first_returned, update_cache=update_cache,
                         cond_index=cond_index)
            if w is not None:
                weights.append(w)
        return self.norm(x), weights


class TimestepEmbedder(nn.Module):
    """Continuous time t in [0, 1] (b,) -> (b, dim): sinusoidal features of
    1000 t (diffusers' ``get_timestep_embedding``) through an MLP."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = TimestepEmbedding(freq_dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = get_timestep_embedding(t.float() * 1000.0, self.freq_dim, flip_sin_to_cos=True,
                                       downscale_freq_shift=0)
        return self.mlp(feats.to(self.mlp.linear_1.weight.dtype))
