"""Autoencoder training loss: reconstruction from clean and noised latents.

For a batch of documents (padding and end-of-text included as targets), each row first moved to
where a latent model reads text (a share ``p_offset`` starting at a random token, as the denoiser's
continuations do; a share ``p_cut`` ending after a random token without its end-of-text, as the
pipeline's prompts do, so that their last latent holds a partial group):

    z     = encode(corrupt(x))                   # (b, n, d), normalised (a variational encoder: a draw of
                                                 # its posterior, + kl_weight * clipped KL to N(0, I))
    sigma ~ U(0, sigma_max) per example (a share ``clean_fraction`` gets 0)
    loss  = CE(decode(z + sigma * eps), x)       # every position, pads included

Decoding from noised latents makes the decoder read the denoiser's imperfect
outputs correctly: TEncDM (arXiv:2402.19097) reports MAUVE 0.526 -> 0.874 with a
decoder trained on noisy latents; BLD's decoder adaptation, generation perplexity 127 -> 26.6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from latentlm.errors import ConfigError
from latentlm.outputs import LossOutput


@dataclass
class AutoencoderLossConfig:
    """Loss section of an autoencoder preset (``[autoencoder.loss]``)."""

    sigma_max: float = 0.6  # latent noise, in units of the latent std (1 after normalisation)
    clean_fraction: float = 0.25  # share of examples decoded from clean latents
    token_corruption: float = 0.0  # share of encoder input tokens replaced by random ones
    pad_weight: float = 0.1  # weight of padding positions in the cross-entropy
    p_offset: float = 0.0  # rows that start at a random token of their document (the denoiser's continuations)
    p_cut: float = 0.0  # rows ending after a random token, end-of-text dropped (the pipeline's prompts)
    # dropout on the latents' dimensions before the decoder reads them (CALM, arXiv:2510.27688: 0.15): the
    # decoder cannot rely on any one dimension, so a latent a denoiser gets slightly wrong still decodes
    latent_dropout: float = 0.0
    # a variational encoder's (model.variational) KL to N(0, I), per latent dimension, clipped below at
    # kl_clip nats (free bits: dimensions under it cost nothing) and weighted (CALM: 1e-3)
    kl_weight: float = 1e-3
    kl_clip: float = 0.5

    def validate(self) -> None:
        if self.sigma_max < 0:
            raise ConfigError(f"loss.sigma_max must be >= 0, got {self.sigma_max}")
        for name in ("clean_fraction", "token_corruption", "pad_weight", "p_offset", "p_cut"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"loss.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.kl_weight < 0 or self.kl_clip < 0:
            raise ConfigError(f"loss.kl_weight and loss.kl_clip must be >= 0, got {self.kl_weight}, {self.kl_clip}")
        if not 0 <= self.latent_dropout < 1:
            raise ConfigError(f"loss.latent_dropout must be in [0, 1), got {self.latent_dropout}")


def offset_and_cut(ids: torch.Tensor, mask: torch.Tensor, p_offset: float, p_cut: float,
                   pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (b, s) moved to where a latent model reads text: with probability ``p_offset`` a row starts at
    a uniform token of its text (shifted left, padded at the end); with probability ``p_cut`` it keeps a
    uniform number of its tokens, at least one and not the last (its end-of-text, when it has one)."""
    b, s = ids.shape
    device = ids.device
    lengths = mask.sum(1)
    offset = (torch.rand(b, device=device) * (lengths - 1).clamp_min(0)).long()
    offset = torch.where(torch.rand(b, device=device) < p_offset, offset, 0)
    pos = offset[:, None] + torch.arange(s, device=device)[None, :]
    rest = lengths - offset  # (b,) tokens left in each row
    keep = 1 + (torch.rand(b, device=device) * (rest - 1).clamp_min(0)).long()  # 1 .. rest - 1
    keep = torch.where((torch.rand(b, device=device) < p_cut) & (rest > 1), keep, rest)
    new_mask = torch.arange(s, device=device)[None, :] < keep[:, None]
    new_ids = torch.where(new_mask, ids.gather(1, pos.clamp(max=s - 1)), pad_id)
    return new_ids, new_mask.long()


def autoencoder_loss(model, batch: dict[str, torch.Tensor], cfg: AutoencoderLossConfig) -> LossOutput:
    ids, mask = batch["input_ids"], batch["attention_mask"]  # (b, s)
    if cfg.p_offset > 0 or cfg.p_cut > 0:
        ids, mask = offset_and_cut(ids, mask, cfg.p_offset, cfg.p_cut, model.config.pad_token_id)
    enc_ids = ids
    if cfg.token_corruption > 0:
        flip = (torch.rand(ids.shape, device=ids.device) < cfg.token_corruption) & mask.bool()
        random_ids = torch.randint(3, model.config.vocab_size, ids.shape, device=ids.device)
        enc_ids = torch.where(flip, random_ids, ids)
    z, kl = model.encode_posterior(enc_ids, mask)  # (b, n, d); kl: None unless the encoder is variational
    sigma = torch.rand(z.shape[0], 1, 1, device=z.device) * cfg.sigma_max
    sigma = sigma * (torch.rand_like(sigma) >= cfg.clean_fraction)
    read = z + sigma * torch.randn_like(z)
    if cfg.latent_dropout > 0:
        read = F.dropout(read, cfg.latent_dropout)  # kept dimensions scaled by 1 / (1 - p)
    logits = model.decode(read, ids)[:, : ids.shape[1]]  # (b, s, vocab)
    ce = F.cross_entropy(logits.float().transpose(1, 2), ids, reduction="none")  # (b, s)
    weight = mask.float() + cfg.pad_weight * (1 - mask.float())
    loss = (ce * weight).sum() / weight.sum()
    metrics = {}
    if kl is not None:  # nats per latent, each dimension's KL counted from kl_clip up (free bits)
        loss = loss + cfg.kl_weight * kl.clamp_min(cfg.kl_clip).sum(-1).mean()
        metrics["kl"] = float(kl.detach().sum(-1).mean())
    with torch.no_grad():
        correct = (logits.argmax(-1) == ids).float()
        acc = (correct * mask).sum() / mask.sum()
    return LossOutput(loss, {"token_acc": float(acc), **metrics})
