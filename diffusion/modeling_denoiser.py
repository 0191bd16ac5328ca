"""LatentDenoiser: a transformer over latent positions that predicts clean latents.

Input sequence (left-padded prompt so that the prompt always ends right before
the target, whatever its length)::

    [null] [pad ... pad] [prompt latents (clean)] [target latents z_t (noisy)]

* time conditioning: adaLN-Zero on an embedding of t (shared layers);
* prompt conditioning: the encoded prompt's clean latents as extra context
  tokens with a type embedding; any prompt length works; a learned null token
  is always present, and is all the context when the prompt is dropped
  (classifier-free guidance, trained by prompt dropout);
* self-conditioning: the previous clean estimate is concatenated to z_t;
* parameterisation: the network output F is read as the clean latent
  (``"x0"``), the noise (``"eps"``) or the velocity (``"v"``); ``predict_x0``
  always returns the clean-latent estimate.

Block-causal mode (``block_size`` = B latents per block; None: every position sees every other).
The prompt is left-padded to whole blocks and its blocks are the first clean ones; attention is
bidirectional inside a block and causal across blocks; every target block has its own time
(``t`` (b, n / B)), clean context is conditioned on t = 0 (Diffusion Forcing, arXiv:2407.01392).
Two layouts::

    [null] [prompt blocks] [noisy blocks]                 each noisy block sees the noisy blocks
                                                          before it (independent times per block)
    [null] [prompt blocks] [clean blocks] [noisy blocks]  ``clean=``: noisy block k sees clean blocks
                                                          < k and itself (BD3-LM, arXiv:2503.09573)

Clean context never attends to noisy blocks, so its keys and values can be computed once and
cached (:meth:`start_cache`, :meth:`extend_cache`); ``forward(..., kv_cache=cache)`` then denoises
the next blocks against the cache without adding them to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from latentlm.choices import current_value
from latentlm.diffusion.schedules import SCHEDULES, NoiseSchedule
from latentlm.diffusion.time_density import TimeWarp
from latentlm.errors import ConfigError, InputError, check_choice
from latentlm.layers import KVCache, TimestepEmbedder, Transformer

PARAMETERISATIONS = ("x0", "eps", "v")
NULL_BLOCK = -1  # block id of the null token: every position may attend to it


@dataclass
class BlockCache:
    """Keys and values of the clean context of a block-causal denoiser (null, prompt, committed
    blocks), one :class:`~latentlm.layers.KVCache` per layer, with what the mask needs to know of
    each cached key: ``valid`` (b, k) False at prompt padding, ``blocks`` (k,) block ids."""

    layers: list[KVCache]
    valid: torch.Tensor
    blocks: torch.Tensor
    next_position: int  # rotary position of the next block's first latent
    next_block: int  # block id of the next block

    @property
    def length(self) -> int:
        return self.layers[0].length

    def trim(self, keep: int) -> BlockCache:
        """Keep the null token and the last ``keep`` cached latents (a rolling window of clean context
        for generation past the trained window); in place."""
        if self.length <= keep + 1:
            return self
        idx = torch.cat([torch.zeros(1, dtype=torch.long, device=self.blocks.device),
                         torch.arange(self.length - keep, self.length, device=self.blocks.device)])
        for layer in self.layers:
            layer.k, layer.v = layer.k[:, :, idx], layer.v[:, :, idx]
        self.valid, self.blocks = self.valid[:, idx], self.blocks[idx]
        return self


def block_mask(q_blocks: torch.Tensor, q_clean: torch.Tensor, k_blocks: torch.Tensor, k_clean: torch.Tensor,
               k_valid: torch.Tensor, noisy_sees_noisy_past: bool) -> torch.Tensor:
    """Boolean attention mask (b, 1, q, k), True = may attend, of block-causal denoising.

    q_blocks (q,), q_clean (q,), k_blocks (k,), k_clean (k,): block ids and whether a position is
    clean context; k_valid (b, k) False at padding. Clean queries see clean keys of their block and
    earlier ones; noisy queries see clean keys of earlier blocks, noisy keys of their own block and,
    with ``noisy_sees_noisy_past``, noisy keys of earlier blocks. Every query sees itself (no fully
    masked row when the query is padding)."""
    qb, kb = q_blocks[:, None], k_blocks[None, :]
    qc, kc = q_clean[:, None], k_clean[None, :]
    noisy_keys = (kb == qb) | (kb < qb) if noisy_sees_noisy_past else kb == qb
    allowed = torch.where(qc, kc & (kb <= qb), (kc & (kb < qb)) | (~kc & noisy_keys))  # (q, k)
    mask = allowed[None] & k_valid[:, None, :]
    return (mask | _diagonal(len(q_blocks), len(k_blocks), mask.device)[None])[:, None]


def _diagonal(q_len: int, k_len: int, device) -> torch.Tensor:
    """(q, k) True where query i is key k_len - q_len + i (the queries are the last keys)."""
    return torch.arange(k_len, device=device)[None, :] == torch.arange(k_len - q_len, k_len, device=device)[:, None]


class LatentDenoiser(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        latent_dim: int = 64,
        dim: int = 256,
        depth: int = 6,
        n_heads: int = 4,
        mlp_ratio: float = 4.0,
        max_latents: int = 256,
        parameterisation: str = "x0",
        self_conditioning: bool = True,
        schedule: str = "shifted-cosine",
        schedule_shift: float = 4.0,
        block_size: int | None = None,
        time_warp_bins: int = 0,
    ) -> None:
        super().__init__()
        schedule = current_value(schedule)
        self.register_to_config(schedule=schedule)  # a config.json saved as shifted_cosine reads as shifted-cosine
        self.validate_config(dict(parameterisation=parameterisation, schedule=schedule, block_size=block_size,
                                  max_latents=max_latents, time_warp_bins=time_warp_bins))
        self.in_proj = nn.Linear(2 * latent_dim, dim)  # [z_t, self-conditioning estimate]
        self.ctx_proj = nn.Linear(latent_dim, dim)
        self.type_embed = nn.Embedding(3, dim)  # 0 null, 1 prompt, 2 target
        self.time = TimestepEmbedder(dim)
        self.backbone = Transformer(dim, depth, n_heads, mlp_ratio, cond_dim=dim)
        self.out = nn.Linear(dim, latent_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # the learned density of its training times (loss.time_sampling = "learned"); 0: none
        self.time_warp = TimeWarp(time_warp_bins) if time_warp_bins else None

    @staticmethod
    def validate_config(values: dict, where: str = "") -> None:
        """Check the enum settings in ``values`` (constructor arguments); raise ConfigError."""
        for key, choices in (("parameterisation", PARAMETERISATIONS), ("schedule", SCHEDULES)):
            if key in values:
                check_choice(where + key, current_value(values[key]), choices)
        bins = values.get("time_warp_bins", 0)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 0:
            raise ConfigError(f"{where}time_warp_bins must be a number of bins >= 0, got {bins!r}")
        block = values.get("block_size")
        if block is not None:
            if isinstance(block, bool) or not isinstance(block, int) or block < 1:
                raise ConfigError(f"{where}block_size must be a positive number of latents per block or None "
                                  f"(every position sees every other), got {block!r}")
            if "max_latents" in values and values["max_latents"] % block:
                raise ConfigError(f"{where}block_size ({block}) must divide the window of {values['max_latents']} "
                                  "latents (the autoencoder's max_seq_len / tokens_per_latent)")

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.config.schedule, self.config.schedule_shift)

    def forward(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        prompt: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        self_cond: torch.Tensor | None = None,
        *,
        clean: torch.Tensor | None = None,
        kv_cache: BlockCache | None = None,
    ) -> torch.Tensor:
        """Raw network output F (b, n, d) for noisy target latents z_t (b, n, d) at times t (b,)
        (block-causal: or one time per block, (b, n / B)).

        prompt (b, p, d) clean prompt latents, left-padded; prompt_mask (b, p) 1 = real.
        Block-causal only: ``clean`` (b, n, d) the clean targets for the [clean ; noisy] layout;
        ``kv_cache`` the cached clean context (then no prompt).
        """
        b, n, d = z_t.shape
        if d != self.config.latent_dim:
            raise InputError(f"latents have width {d}, the denoiser expects {self.config.latent_dim}")
        if n > self.config.max_latents:
            raise InputError(f"{n} target latents exceed the denoiser's maximum of {self.config.max_latents}")
        if self.config.block_size is not None:
            return self._forward_blocks(z_t, t, prompt, prompt_mask, self_cond, clean, kv_cache)
        if clean is not None or kv_cache is not None:
            raise InputError("clean= and kv_cache= are for a block-causal denoiser (block_size set); this one "
                             "has block_size=None")
        if self_cond is None:
            self_cond = torch.zeros_like(z_t)
        dtype = self.in_proj.weight.dtype
        x = self.in_proj(torch.cat([z_t, self_cond], -1).to(dtype)) + self.type_embed.weight[2]
        null = self.type_embed.weight[0].expand(b, 1, -1)
        parts, masks = [null], [torch.ones(b, 1, dtype=torch.long, device=z_t.device)]
        if prompt is not None and prompt.shape[1] > 0:
            if prompt_mask is None:
                prompt_mask = torch.ones(prompt.shape[:2], dtype=torch.long, device=z_t.device)
            parts.append(self.ctx_proj(prompt.to(dtype)) + self.type_embed.weight[1])
            masks.append(prompt_mask.long())
        ctx_len = sum(p.shape[1] for p in parts)
        parts.append(x)
        masks.append(torch.ones(b, n, dtype=torch.long, device=z_t.device))
        h = torch.cat(parts, 1)
        mask = torch.cat(masks, 1)
        h, _ = self.backbone(h, attention_mask=mask, cond=self.time(t))
        return self.out(h[:, ctx_len:])

    # ------------------------------------------------------------------ block-causal
    def _block_times(self, t: torch.Tensor, b: int, n_blocks: int) -> torch.Tensor:
        """Times (b,) or (b, n_blocks) -> (b, n_blocks)."""
        if t.shape == (b,):
            return t[:, None].expand(b, n_blocks)
        if t.shape != (b, n_blocks):
            raise InputError(f"t must be (batch,) or one time per block (batch, {n_blocks}), got {tuple(t.shape)}")
        return t

    def _check_latents(self, x: torch.Tensor, what: str) -> None:
        if x.dim() != 3 or x.shape[-1] != self.config.latent_dim:
            raise InputError(f"{what} must be (batch, latents, {self.config.latent_dim}), got {tuple(x.shape)}")

    def _context(self, prompt: torch.Tensor | None, prompt_mask: torch.Tensor | None, b: int, device):
        """Null token + the prompt left-padded to whole blocks: states (b, c, dim), valid (b, c), block ids (c,)."""
        B, dtype = self.config.block_size, self.in_proj.weight.dtype
        if prompt is not None:
            self._check_latents(prompt, "prompt")
            if prompt_mask is not None and prompt_mask.shape != prompt.shape[:2]:
                raise InputError(f"prompt_mask must be {tuple(prompt.shape[:2])}, got {tuple(prompt_mask.shape)}")
        parts = [self.type_embed.weight[0].expand(b, 1, -1)]
        valid = [torch.ones(b, 1, dtype=torch.bool, device=device)]
        p = 0 if prompt is None else prompt.shape[1]
        if p:
            if prompt_mask is None:
                prompt_mask = torch.ones(prompt.shape[:2], dtype=torch.long, device=device)
            pad = (-p) % B
            prompt = torch.nn.functional.pad(prompt, (0, 0, pad, 0))
            prompt_mask = torch.nn.functional.pad(prompt_mask, (pad, 0))
            parts.append(self.ctx_proj(prompt.to(dtype)) + self.type_embed.weight[1])
            valid.append(prompt_mask.bool())
        blocks = torch.cat([torch.full((1,), NULL_BLOCK, device=device),
                            torch.arange(p + (-p) % B, device=device) // B])
        return torch.cat(parts, 1), torch.cat(valid, 1), blocks

    def _run(self, h, cond, positions, mask, caches=None, update_cache=True, cond_index=None):
        out, _ = self.backbone(h, cond=cond, positions=positions, mask=mask, kv_caches=caches,
                               update_cache=update_cache, cond_index=cond_index)
        return out

    def _forward_blocks(self, z_t, t, prompt, prompt_mask, self_cond, clean, kv_cache) -> torch.Tensor:
        b, n, _ = z_t.shape
        B, device, dtype = self.config.block_size, z_t.device, self.in_proj.weight.dtype
        if n % B:
            raise InputError(f"{n} target latents are not whole blocks of {B}; pad the target to a multiple of {B}")
        n_blocks = n // B
        t = self._block_times(t, b, n_blocks)
        if self_cond is None:
            self_cond = torch.zeros_like(z_t)
        noisy = self.in_proj(torch.cat([z_t, self_cond], -1).to(dtype)) + self.type_embed.weight[2]
        # the distinct time conditionings (b, 1 + n_blocks, dim): clean context at t = 0, then one per target
        # block; positions index them (the adaLN projections run once per block, not once per position)
        conds = torch.cat([self.time(torch.zeros(1, device=device)).expand(b, 1, -1),
                           self.time(t.reshape(-1)).reshape(b, n_blocks, -1)], 1).to(dtype)
        noisy_index = 1 + torch.arange(n, device=device) // B
        if kv_cache is not None:
            if prompt is not None or clean is not None:
                raise InputError("with kv_cache the prompt and the clean blocks are in the cache: "
                                 "pass neither prompt nor clean")
            q_blocks = kv_cache.next_block + torch.arange(n, device=device) // B
            positions = kv_cache.next_position + torch.arange(n, device=device)
            k_blocks = torch.cat([kv_cache.blocks, q_blocks])
            k_clean = torch.cat([torch.ones_like(kv_cache.blocks, dtype=torch.bool),
                                 torch.zeros(n, dtype=torch.bool, device=device)])
            k_valid = torch.cat([kv_cache.valid, torch.ones(b, n, dtype=torch.bool, device=device)], 1)
            mask = block_mask(q_blocks, torch.zeros(n, dtype=torch.bool, device=device), k_blocks, k_clean, k_valid,
                              noisy_sees_noisy_past=True)
            return self.out(self._run(noisy, conds, positions, mask, kv_cache.layers, update_cache=False,
                                      cond_index=noisy_index))
        ctx, ctx_valid, ctx_blocks = self._context(prompt, prompt_mask, b, device)
        c = ctx.shape[1]
        first = int(ctx_blocks[-1]) + 1 if c > 1 else 0  # block id of the first target block
        tgt_blocks = first + torch.arange(n, device=device) // B
        tgt_positions = c + torch.arange(n, device=device)
        # segments of the sequence: (states, block ids, clean?, valid (b, len), positions, index into conds)
        zeros = torch.zeros(c, dtype=torch.long, device=device)
        segments = [(ctx, ctx_blocks, True, ctx_valid, torch.arange(c, device=device), zeros)]
        all_valid = torch.ones(b, n, dtype=torch.bool, device=device)
        if clean is not None:
            if clean.shape != z_t.shape:
                raise InputError(f"clean must have the shape of z_t {tuple(z_t.shape)}, got {tuple(clean.shape)}")
            segments.append((self.ctx_proj(clean.to(dtype)) + self.type_embed.weight[1], tgt_blocks, True,
                             all_valid, tgt_positions, torch.zeros(n, dtype=torch.long, device=device)))
        segments.append((noisy, tgt_blocks, False, all_valid, tgt_positions, noisy_index))
        parts, blocks, is_clean, valid, positions, index = zip(*segments)
        is_clean = [torch.full((len(bl),), flag, dtype=torch.bool, device=device) for bl, flag in zip(blocks, is_clean)]
        blocks_all, clean_all = torch.cat(blocks), torch.cat(is_clean)
        mask = block_mask(blocks_all, clean_all, blocks_all, clean_all, torch.cat(valid, 1),
                          noisy_sees_noisy_past=clean is None)
        h = self._run(torch.cat(parts, 1), conds, torch.cat(positions), mask, cond_index=torch.cat(index))
        return self.out(h[:, -n:])

    def new_cache(self, batch: int, device=None) -> BlockCache:
        """An empty :class:`BlockCache` (no context yet; :meth:`start_cache` fills in the null token)."""
        device = self.device if device is None else device
        return BlockCache([KVCache() for _ in self.backbone.blocks], torch.ones(batch, 0, dtype=torch.bool,
                          device=device), torch.zeros(0, dtype=torch.long, device=device), 0, 0)

    @torch.no_grad()
    def start_cache(self, prompt: torch.Tensor | None = None, prompt_mask: torch.Tensor | None = None,
                    batch: int | None = None) -> BlockCache:
        """The cache of the null token and the prompt's clean blocks (b, p, d), for block-by-block sampling."""
        if self.config.block_size is None:
            raise InputError("a KV cache of clean blocks needs a block-causal denoiser (block_size set)")
        b = prompt.shape[0] if prompt is not None else (batch or 1)
        device = self.device
        ctx, valid, blocks = self._context(prompt, prompt_mask, b, device)
        cache = self.new_cache(b, device)
        clean = torch.ones(len(blocks), dtype=torch.bool, device=device)
        mask = block_mask(blocks, clean, blocks, clean, valid, noisy_sees_noisy_past=False)
        zero = self.time(torch.zeros(1, device=device)).expand(b, 1, -1)  # one modulation for every position
        self._run(ctx, zero.to(ctx.dtype), torch.arange(len(blocks), device=device), mask, cache.layers)
        cache.valid, cache.blocks, cache.next_position = valid, blocks, len(blocks)
        cache.next_block = int(blocks[-1]) + 1 if len(blocks) > 1 else 0
        return cache

    @torch.no_grad()
    def extend_cache(self, cache: BlockCache, clean: torch.Tensor) -> BlockCache:
        """Append committed clean blocks (b, m, d), m a multiple of block_size, to ``cache`` (in place)."""
        self._check_latents(clean, "clean")
        b, m, _ = clean.shape
        B, device = self.config.block_size, clean.device
        if b != cache.valid.shape[0]:
            raise InputError(f"the cache holds {cache.valid.shape[0]} rows, the clean blocks {b}")
        if m % B:
            raise InputError(f"{m} clean latents are not whole blocks of {B}")
        q_blocks = cache.next_block + torch.arange(m, device=device) // B
        k_blocks = torch.cat([cache.blocks, q_blocks])
        k_clean = torch.ones(len(k_blocks), dtype=torch.bool, device=device)
        k_valid = torch.cat([cache.valid, torch.ones(b, m, dtype=torch.bool, device=device)], 1)
        mask = block_mask(q_blocks, torch.ones(m, dtype=torch.bool, device=device), k_blocks, k_clean, k_valid,
                          noisy_sees_noisy_past=False)
        h = self.ctx_proj(clean.to(self.in_proj.weight.dtype)) + self.type_embed.weight[1]
        zero = self.time(torch.zeros(1, device=device)).expand(b, 1, -1)
        self._run(h, zero.to(h.dtype), cache.next_position + torch.arange(m, device=device), mask, cache.layers)
        cache.valid, cache.blocks = k_valid, k_blocks
        cache.next_position += m
        cache.next_block += m // B
        return cache

    def predict_x0(self, z_t, t, prompt=None, prompt_mask=None, self_cond=None, **block_inputs) -> torch.Tensor:
        """Clean-latent estimate x0_hat (b, n, d), whatever the parameterisation (``block_inputs``:
        ``clean=`` or ``kv_cache=`` of a block-causal denoiser)."""
        f = self(z_t, t, prompt, prompt_mask, self_cond, **block_inputs).float()
        return self.x0_from_output(f, z_t.float(), t)

    def x0_from_output(self, f: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = self.config.parameterisation
        if p == "x0":
            return f
        if t.dim() == 2:  # one time per block -> per position
            t = t.repeat_interleave(self.config.block_size, dim=1)
            alpha, sigma = (s.float()[..., None] for s in self.schedule.alpha_sigma(t))
        else:
            alpha, sigma = (s.float()[:, None, None] for s in self.schedule.alpha_sigma(t))
        if p == "eps":
            return (z_t - sigma * f) / alpha.clamp_min(1e-4)
        return alpha * z_t - sigma * f  # v-prediction: v = alpha eps - sigma x0
