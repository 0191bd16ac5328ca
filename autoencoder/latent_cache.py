"""Memoised latents of a frozen chunk-local autoencoder (``encoder_context="chunk"``).

With a chunk-local encoder the latent of a group of k tokens depends on those k
tokens (and which of them are padding) alone, so a frozen autoencoder maps each
distinct group to one latent forever. Denoiser training encodes the same
documents again and again at random split points; every split only regroups the
same tokens, and a small corpus has few distinct groups (4,000 synthetic stories:
about 60,000 at all four alignments). :class:`ChunkLatentCache` encodes each
group once and afterwards looks it up: the same latents, without the encoder's
share of the training step.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from latentlm.errors import InputError


class ChunkLatentCache:
    """``encode(input_ids, attention_mask)`` of a frozen chunk-local ``TextAutoencoder``, memoised per group.

    Args:
        autoencoder: a ``TextAutoencoder`` with ``encoder_context="chunk"``; it must not change while
            the cache is used (denoiser training freezes it).
        max_entries: groups kept at most; past it, new groups are encoded every time they occur.
    """

    def __init__(self, autoencoder, max_entries: int = 2_000_000) -> None:
        if autoencoder.config.encoder_context != "chunk":
            raise InputError("ChunkLatentCache needs an autoencoder with encoder_context='chunk': a sequence "
                             "encoder's latents depend on the whole text, not on each group alone")
        if max_entries < 0:
            raise InputError(f"max_entries must be >= 0, got {max_entries}")
        self.autoencoder, self.max_entries = autoencoder, max_entries
        self.rows: dict[bytes, int] = {}  # group (its ids and mask, as bytes) -> row of self.table
        self.table: torch.Tensor | None = None  # (entries, latent_dim) float32
        self.hits = self.misses = 0

    @property
    def config(self):
        return self.autoencoder.config

    def __len__(self) -> int:
        return len(self.rows)

    @torch.no_grad()
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (b, s) -> latents (b, ceil(s / k), latent_dim), float32, as the autoencoder's own."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise InputError(f"input_ids must be (batch, seq_len) with seq_len >= 1, got {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        b, s = input_ids.shape
        if s > self.config.max_seq_len:  # the autoencoder's own limit, though groups would allow more
            raise InputError(f"sequence of {s} tokens exceeds the autoencoder's maximum of {self.config.max_seq_len}")
        k = self.config.tokens_per_latent
        pad = (-s) % k
        ids = F.pad(input_ids, (0, pad), value=self.config.pad_token_id).reshape(-1, k)  # (g, k) groups
        mask = F.pad(attention_mask, (0, pad), value=0).reshape(-1, k)
        keys = torch.cat([ids, mask], 1).to(torch.int64).cpu().numpy()
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        rows = np.array([self.rows.get(u.tobytes(), -1) for u in unique])
        missing = np.flatnonzero(rows < 0)
        self.hits += len(unique) - len(missing)
        self.misses += len(missing)
        d, device = self.config.latent_dim, input_ids.device
        on_device = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        latents = torch.empty(len(unique), d, device=device)  # one per distinct group
        hit = np.flatnonzero(rows >= 0)
        if len(hit):
            latents[on_device(hit)] = self.table[on_device(rows[hit])]
        if len(missing):
            new = self.autoencoder.encode(on_device(unique[missing, :k]), on_device(unique[missing, k:]))
            latents[on_device(missing)] = new[:, 0].float()
            self._store(unique[missing], latents[on_device(missing)])
        return latents[on_device(inverse.reshape(-1))].reshape(b, -1, d)

    def _store(self, keys: np.ndarray, latents: torch.Tensor) -> None:
        """Keep as many new groups as there is room for (the buffer grows by doubling)."""
        size = len(self.rows)
        kept = min(len(keys), self.max_entries - size)
        if kept <= 0:
            return
        if self.table is None or size + kept > len(self.table):
            capacity = min(self.max_entries, max(2 * size, size + kept, 1024))
            grown = torch.empty(capacity, latents.shape[1], device=latents.device)
            if self.table is not None:
                grown[:size] = self.table[:size]
            self.table = grown
        self.table[size : size + kept] = latents[:kept]
        self.rows.update((key.tobytes(), size + j) for j, key in enumerate(keys[:kept]))
