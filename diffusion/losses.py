"""Denoiser training loss: continuous-time diffusion on autoencoder latents of split documents.

Every document of the batch (tokens + end-of-text + padding, rows of
``row_lengths`` autoencoder lengths) is split at a random token: the prefix is
the prompt, the rest the continuation (a share ``p_unconditional`` of rows gets
an empty prompt; a share ``p_sentence_split`` of the others is split right
after a random sentence end instead, since prompts are often whole sentences
and a uniform token rarely lands there). Both are encoded separately by the
frozen autoencoder, exactly as the pipeline will encode them:

    z0     = encode(continuation)                    # (b, n, d), n random in [n_min, n_max] per batch
    prompt = encode(prefix[-max_seq_len:])           # (b, p, d), left-padded, dropped w.p. p_drop (CFG)
    t ~ U(0, 1) stratified, or logit-normal: t = sigmoid(m + s n), n ~ N(0, 1) stratified
        (Esser et al. 2024; more of the training at mid noise, where the prompt decides the content),
        with a share of the rows uniform instead (time_uniform_share: mass at every t the sampler visits);
        validation (model in eval mode) always draws uniform t, so its loss compares across densities
    z_t = alpha_t z0 + sigma_t eps
    self-conditioning: with prob. 1/2, x0_sc = stopgrad(x0_hat(z_t, t, prompt, 0)) is fed as input
    loss = || F - target ||^2,  target = z0 | eps | alpha eps - sigma z0  for  x0 | eps | v
        (over the latents of known text: past the row's cut of a longer document, none)
         + w_ce * CE(decode(x0_hat), continuation)   # frozen decoder (Diffusion-LM's rounding term)

A block-causal denoiser (``block_size``) takes whole blocks and ``loss.block_regime`` noises them: one
time per row, one per block with each block seeing the noisy blocks before it (Diffusion Forcing,
arXiv:2407.01392), one per block in the [clean ; noisy] layout with each block seeing the clean blocks
before it (BD3-LM, arXiv:2503.09573), or the last two on alternate batches at random ("mix").

Two steps, each readable alone: :func:`prepare_denoiser_batch` (split, encode, drop the prompt:
what the pipeline would see) and :func:`diffusion_loss` over its (z0, prompt, mask) (times, noise,
self-conditioning, the weighted error); :func:`denoiser_loss` runs both.

The cross-entropy term sends the decoder's token loss through the frozen
decoder into the clean-latent estimate: the MSE alone treats every latent
direction alike, the decoder knows which ones change tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from latentlm.autoencoder.modeling_autoencoder import encode_prompts
from latentlm.choices import current_value
from latentlm.diffusion.time_density import TimeWarp, time_density_spec
from latentlm.errors import ConfigError, check_choice
from latentlm.outputs import LossOutput

TIME_SAMPLING = ("uniform", "logit-normal", "learned")
TIME_WARP_BINS = 100  # bins of a learned time density (time_sampling = "learned")
# how a block-causal denoiser's rows are noised: one time per row; one per block, each block seeing the
# noisy blocks before it (Diffusion Forcing); one per block in the [clean ; noisy] layout, each block seeing
# the clean blocks before it (BD3-LM); or either of the last two, half of the batches each
BLOCK_REGIMES = ("row", "independent", "clean-prefix", "mix")
TIME_WEIGHTINGS = ("none", "min-snr")


@dataclass
class DenoiserLossConfig:
    """Loss section of a denoiser preset (``[denoiser.loss]``)."""

    p_unconditional: float = 0.1  # rows with an empty prompt
    p_prompt_drop: float = 0.1  # prompt replaced by the null token (classifier-free guidance)
    p_self_cond: float = 0.5
    p_sentence_split: float = 0.0  # conditional rows split right after a sentence end (needs sentence_ends)
    min_latents_fraction: float = 0.25  # shortest continuation, as a share of the autoencoder's latents
    decoder_ce: float = 0.0  # weight of the decoder cross-entropy of x0_hat (0 = MSE only)
    pad_weight: float = 0.1  # weight of padding positions in that cross-entropy
    # density of the training times t: "uniform", "logit-normal" (time_mean, time_std) or "learned" (CDCD's
    # time warping, diffusion/time_density.py: mass where the x0 error changes fastest; needs a uniform share)
    time_sampling: str = "uniform"
    time_mean: float = 0.0  # logit-normal location m (0 = centred on t = 0.5)
    time_std: float = 1.0  # logit-normal scale s
    time_uniform_share: float = 0.0  # rows whose time is drawn uniform instead: mass at every t (a mixture)
    # training rows in autoencoder lengths: 2 also shows a long prompt followed by a long continuation
    # (better-formed text after long prompts, but the prompt's names are copied less; docs/latent_diffusion.md)
    row_lengths: int = 1
    # a chunk-local autoencoder (encoder_context = "chunk") maps each group of k tokens to one latent
    # forever: encode each distinct group once and look it up after (autoencoder/latent_cache.py)
    cache_latents: bool = True
    # rows sorted by prompt length and run in this many groups, each padded to its own longest prompt:
    # a third of a batch's positions are prompt padding in one group, a tenth in four (CPU time)
    prompt_groups: int = 1
    block_regime: str = "mix"  # a block-causal denoiser only: one of BLOCK_REGIMES
    # weight of latents that are all padding after the end-of-text in the MSE (1: like text; TinyStories
    # rows at cpu-small settings: 41% of the loss-bearing latents)
    latent_pad_weight: float = 1.0
    # weighting of the error over times: "none", or "min-snr" (Hang et al. 2023, arXiv:2303.09556): the
    # x0 error weighted by min(SNR, gamma) (eps: min(SNR, gamma) / SNR, v: min(SNR, gamma) / (SNR + 1))
    time_weighting: str = "none"
    min_snr_gamma: float = 5.0

    def __post_init__(self) -> None:  # the underscore spellings (logit_normal, ...) read as the current ones
        for name in ("time_sampling", "block_regime", "time_weighting"):
            setattr(self, name, current_value(getattr(self, name)))

    def validate(self) -> None:
        for name in ("p_unconditional", "p_prompt_drop", "p_self_cond", "p_sentence_split"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"loss.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.decoder_ce < 0:
            raise ConfigError(f"loss.decoder_ce must be >= 0, got {self.decoder_ce}")
        if not 0 <= self.pad_weight <= 1:
            raise ConfigError(f"loss.pad_weight must be in [0, 1], got {self.pad_weight}")
        check_choice("loss.block_regime", self.block_regime, BLOCK_REGIMES)
        check_choice("loss.time_weighting", self.time_weighting, TIME_WEIGHTINGS)
        if not 0 <= self.latent_pad_weight <= 1:
            raise ConfigError(f"loss.latent_pad_weight must be in [0, 1], got {self.latent_pad_weight}")
        if not (math.isfinite(self.min_snr_gamma) and self.min_snr_gamma > 0):
            raise ConfigError(f"loss.min_snr_gamma must be a finite number > 0, got {self.min_snr_gamma}")
        if self.time_sampling not in TIME_SAMPLING:
            raise ConfigError(f"loss.time_sampling must be one of {', '.join(TIME_SAMPLING)}, got {self.time_sampling!r}")
        if not math.isfinite(self.time_mean):
            raise ConfigError(f"loss.time_mean must be a finite number, got {self.time_mean}")
        if not (math.isfinite(self.time_std) and self.time_std > 0):
            raise ConfigError(f"loss.time_std must be a finite number > 0, got {self.time_std}")
        if not 0 <= self.time_uniform_share <= 1:
            raise ConfigError(f"loss.time_uniform_share must be in [0, 1], got {self.time_uniform_share}")
        if self.time_sampling == "learned" and not self.time_uniform_share > 0:
            raise ConfigError("loss.time_sampling='learned' needs loss.time_uniform_share > 0 (e.g. 0.1): a learned "
                              "density can vanish where the error is flat, and the sampler still visits those times")
        if self.row_lengths not in (1, 2):
            raise ConfigError(f"loss.row_lengths must be 1 or 2 (autoencoder lengths per row), got {self.row_lengths}")
        if self.prompt_groups < 1:
            raise ConfigError(f"loss.prompt_groups must be >= 1, got {self.prompt_groups}")
        if not 0 < self.min_latents_fraction <= 1:
            raise ConfigError(f"loss.min_latents_fraction must be in (0, 1], got {self.min_latents_fraction}")


def sample_times(b: int, cfg: DenoiserLossConfig, device, warp: TimeWarp | None = None) -> torch.Tensor:
    """Training times (b,) in (0, 1), stratified over the batch (one uniform offset per batch); ``warp``:
    the denoiser's learned density (``cfg.time_sampling == "learned"``)."""
    u = (torch.rand((), device=device) + torch.arange(b, device=device) / b) % 1
    if cfg.time_sampling == "uniform":
        return u.float()
    if cfg.time_sampling == "learned":
        if warp is None:
            raise ConfigError("loss.time_sampling='learned' needs a denoiser with a time warp (model.time_warp_bins)")
        t = warp.sample(u).clamp(1e-4, 1 - 1e-4)
    else:
        n = torch.special.ndtri(u.double().clamp(1e-6, 1 - 1e-6))  # stratified standard normal
        t = torch.sigmoid(cfg.time_mean + cfg.time_std * n).float()
    if cfg.time_uniform_share > 0:  # a share of the rows, at random, uniform times instead
        t = torch.where(torch.rand(b, device=device) < cfg.time_uniform_share, torch.rand(b, device=device), t)
    return t


def time_density_of(cfg: DenoiserLossConfig) -> dict:
    """The training-time density of ``cfg`` as saved with a pipeline (diffusion/time_density.py); a learned
    one gets the bins of the trained denoiser at export."""
    return time_density_spec(cfg.time_sampling, cfg.time_mean, cfg.time_std, cfg.time_uniform_share)


def by_prompt_length(call, groups: int, z_t, t, prompt, prompt_mask, self_cond=None, **rows) -> torch.Tensor:
    """``call(z_t, t, prompt, prompt_mask, self_cond, **rows)`` (the denoiser or its ``predict_x0``; ``rows``:
    more per-row tensors, such as ``clean=``) on ``groups`` groups of rows of similar prompt length, each
    group's left-padded prompts cut to its longest one: fewer padding positions than one call, the rows
    back in their order."""
    if groups <= 1 or prompt is None or len(z_t) < 2 * groups:
        return call(z_t, t, prompt, prompt_mask, self_cond, **rows)
    lengths = prompt_mask.sum(1)
    order = lengths.argsort()
    outs = []
    for idx in order.chunk(groups):
        keep = int(lengths[idx].max())  # left padding: the real slots are the last ones
        p, m = (prompt[idx, prompt.shape[1] - keep :], prompt_mask[idx, prompt.shape[1] - keep :]) if keep else (None, None)
        outs.append(call(z_t[idx], t[idx], p, m, None if self_cond is None else self_cond[idx],
                         **{k: v[idx] for k, v in rows.items()}))
    return torch.cat(outs)[order.argsort()]


def block_times(b: int, n_blocks: int, cfg: DenoiserLossConfig, time_cfg: DenoiserLossConfig, z0: torch.Tensor,
                device, warp: TimeWarp | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Training times of a block-causal denoiser under ``cfg.block_regime``: (b,) for "row", else one per
    block (b, n_blocks), stratified over all the batch's blocks and shuffled; and the extra denoiser inputs
    (``clean=z0`` for the [clean ; noisy] layout). ``time_cfg`` says how times are drawn."""
    regime = cfg.block_regime
    if regime == "mix":
        regime = "clean-prefix" if torch.rand(()) < 0.5 else "independent"
    if regime == "row":
        return sample_times(b, time_cfg, device, warp), {}
    t = sample_times(b * n_blocks, time_cfg, device, warp)
    t = t[torch.randperm(b * n_blocks, device=device)].reshape(b, n_blocks)
    return t, ({"clean": z0} if regime == "clean-prefix" else {})


def split_points(ids: torch.Tensor, lengths: torch.Tensor, cfg: DenoiserLossConfig,
                 sentence_ends: torch.Tensor | None = None) -> torch.Tensor:
    """Prompt lengths (b,) for documents ``ids`` (b, s) of ``lengths`` tokens (end-of-text included):
    0 (unconditional) w.p. ``p_unconditional``; else right after a random sentence end (a token of
    ``sentence_ends``) w.p. ``p_sentence_split`` where the row has one; else a uniform token inside the text."""
    b, s = ids.shape
    device = ids.device
    u = torch.rand(b, device=device)
    split = (u * (lengths - 1).clamp_min(1)).long().clamp_min(1)
    if sentence_ends is not None and cfg.p_sentence_split > 0:
        inside = torch.arange(s, device=device)[None, :] < (lengths - 1)[:, None]  # keeps a non-empty continuation
        ends = torch.isin(ids, sentence_ends.to(device)) & inside
        pick = (torch.rand(b, s, device=device) * ends).argmax(1) + 1  # a uniform sentence end per row
        use = ends.any(1) & (torch.rand(b, device=device) < cfg.p_sentence_split)
        split = torch.where(use, pick, split)
    return split * (torch.rand(b, device=device) >= cfg.p_unconditional)


@dataclass
class DenoiserBatch:
    """A batch as the pipeline would see it: the clean continuation latents and the encoded prompts."""

    z0: torch.Tensor  # (b, n, d) continuation latents
    prompt: torch.Tensor | None  # (b, p, d) left-padded prompt latents (None: every prompt empty)
    prompt_mask: torch.Tensor | None  # (b, p) 1 = a real prompt latent (0 for a dropped prompt)
    tokens: torch.Tensor  # (b, n k) the continuation's tokens, padding past the text
    token_mask: torch.Tensor  # (b, n k) 1 = a token of the text (its end-of-text included)
    known: torch.Tensor  # (b, n) latents of known text: all but those past the cut of a longer document
    ended: torch.Tensor  # (b,) the document ends inside the row (it has an end-of-text)

    @property
    def padding(self) -> torch.Tensor:
        """(b, n) latents that are all padding after the end-of-text."""
        k = self.tokens.shape[1] // self.z0.shape[1]
        return ~self.token_mask.reshape(len(self.z0), -1, k).bool().any(-1) & self.ended[:, None]


def prepare_denoiser_batch(batch: dict[str, torch.Tensor], *, autoencoder, cfg: DenoiserLossConfig,
                           block_size: int | None = None, sentence_ends: torch.Tensor | None = None,
                           latent_cache=None) -> DenoiserBatch:
    """Split each document into prompt and continuation (:func:`split_points`), encode both with the frozen
    ``autoencoder`` (or ``latent_cache``, a ``ChunkLatentCache`` of it) as the pipeline will, and drop
    prompts for classifier-free guidance. A block-causal denoiser (``block_size``) gets whole blocks."""
    ids, mask = batch["input_ids"], batch["attention_mask"]  # (b, s) documents + eot + pads
    device = ids.device
    autoencoder = autoencoder.to(device).eval()
    b, s = ids.shape
    k = autoencoder.config.tokens_per_latent
    lengths = mask.sum(1)
    split = split_points(ids, lengths, cfg, sentence_ends)
    limit = autoencoder.config.max_seq_len
    n_max = min(s, limit) // k  # the continuation: at most what the autoencoder encodes in one row
    n = int(torch.randint(max(1, int(n_max * cfg.min_latents_fraction)), n_max + 1, ()).item())
    if block_size is not None:  # a block-causal denoiser takes whole blocks (the window is a multiple of them)
        n = max(block_size, n // block_size * block_size)
    pad = autoencoder.config.pad_token_id
    # the continuation: tokens split .. split + n k - 1 of each row, pads past the text; one gather,
    # since per-row slices with device indices cost a GPU sync each (input-bound at large batches)
    pos = split[:, None] + torch.arange(n * k, device=device)[None, :]  # (b, n k)
    cont_mask = (pos < lengths[:, None]).long()
    cont = torch.where(cont_mask.bool(), ids.gather(1, pos.clamp(max=s - 1)), pad).long()
    ids_cpu = ids.cpu()
    prompts = [ids_cpu[r, max(0, p - limit) : p].tolist()  # the pipeline's truncation
               for r, p in enumerate(split.tolist())]
    encoder = autoencoder if latent_cache is None else latent_cache
    with torch.no_grad():
        z0 = encoder.encode(cont, cont_mask).float()  # (b, n, d)
        prompt, prompt_mask = encode_prompts(encoder, prompts, pad, device)
        if prompt is not None:
            keep = (torch.rand(b, device=device) >= cfg.p_prompt_drop).long()[:, None]
            prompt_mask = prompt_mask * keep
    # a document cut by the row length (no end-of-text) continues past the row: its latents there are
    # unknown text, not padding, and get no loss (else the model learns to stop mid-sentence)
    ended = (ids == autoencoder.config.eot_token_id).any(1)  # (b,)
    known = cont_mask.reshape(b, n, k).all(-1) | ended[:, None]  # (b, n)
    return DenoiserBatch(z0, prompt, prompt_mask, cont, cont_mask, known, ended)


def diffusion_loss(model, x: DenoiserBatch, cfg: DenoiserLossConfig, autoencoder=None) -> LossOutput:
    """The denoiser's loss on a prepared batch: draw times and noise, self-condition, weigh the error over
    the known latents; with ``cfg.decoder_ce`` the frozen ``autoencoder``'s decoder scores the estimate."""
    z0, prompt, prompt_mask = x.z0, x.prompt, x.prompt_mask
    b, n, _ = z0.shape
    device = z0.device
    block = model.config.block_size
    schedule = model.schedule
    # validation (model.eval()) always at uniform times: its loss stays comparable across time densities
    time_cfg = cfg if model.training else DenoiserLossConfig()
    block_inputs = {}
    warp = getattr(model, "time_warp", None)
    if block is None:
        t = sample_times(b, time_cfg, device, warp)
        alpha, sigma = (v.float()[:, None, None] for v in schedule.alpha_sigma(t))
    else:
        t, block_inputs = block_times(b, n // block, cfg, time_cfg, z0, device, warp)
        t_pos = t if t.dim() == 1 else t.repeat_interleave(block, dim=1)  # (b,) or (b, n)
        alpha, sigma = (v.float()[:, None, None] if t.dim() == 1 else v.float()[..., None]
                        for v in schedule.alpha_sigma(t_pos))
    eps = torch.randn_like(z0)
    z_t = alpha * z0 + sigma * eps
    self_cond = None
    if model.config.self_conditioning and torch.rand(()) < cfg.p_self_cond:
        with torch.no_grad():
            self_cond = by_prompt_length(model.predict_x0, cfg.prompt_groups, z_t, t, prompt, prompt_mask,
                                         **block_inputs).detach()
    f = by_prompt_length(model, cfg.prompt_groups, z_t, t, prompt, prompt_mask, self_cond, **block_inputs).float()
    p = model.config.parameterisation
    target = {"x0": z0, "eps": eps, "v": alpha * eps - sigma * z0}[p]
    known = x.known.float()
    w = known / known.sum().clamp_min(1)
    err = ((f - target) ** 2).mean(-1)  # (b, n)
    if cfg.latent_pad_weight != 1 or cfg.time_weighting != "none":
        pos = known * torch.where(x.padding, cfg.latent_pad_weight, 1.0)
        w = pos / pos.sum().clamp_min(1e-8)
        if cfg.time_weighting == "min-snr":
            snr = (alpha / sigma).pow(2)[..., 0].expand(b, n)  # (b, n)
            clipped = snr.clamp(max=cfg.min_snr_gamma)
            err = err * {"x0": clipped, "eps": clipped / snr, "v": clipped / (snr + 1)}[p]
    mse = (err * w).sum()
    x0_hat = model.x0_from_output(f, z_t, t)
    x0_err = ((x0_hat.detach() - z0) ** 2).mean(-1)  # (b, n)
    metrics = {"x0_mse": float((x0_err * w).sum())}
    loss = mse
    if warp is not None and model.training and cfg.time_sampling == "learned":
        # the time warp's fit of the x0 error at each position's time (target detached: only the fit learns)
        t_pos = (t[:, None] if t.dim() == 1 else t.repeat_interleave(block, dim=1)).expand(b, n)
        fit = (((warp(t_pos) - x0_err) ** 2) * known).sum() / known.sum().clamp_min(1)
        loss = loss + fit
        metrics["time_warp_fit"] = float(fit.detach())
    if cfg.decoder_ce > 0:
        logits = autoencoder.decode(x0_hat, x.tokens).float()  # (b, n k, vocab); decoder frozen, grads reach x0_hat
        ce = F.cross_entropy(logits.transpose(1, 2), x.tokens, reduction="none")  # (b, n k)
        real = x.token_mask.bool()
        weight = torch.where(real, 1.0, cfg.pad_weight) * (real | x.ended[:, None])  # a cut document: no padding
        ce = (ce * weight).sum() / weight.sum()
        loss = loss + cfg.decoder_ce * ce
        metrics.update(mse=float(mse.detach()), decoder_ce=float(ce.detach()))
    return LossOutput(loss, metrics)


def denoiser_loss(model, batch: dict[str, torch.Tensor], *, autoencoder, cfg: DenoiserLossConfig,
                  sentence_ends: torch.Tensor | None = None, latent_cache=None) -> LossOutput:
    """The loss of one batch of documents: :func:`prepare_denoiser_batch`, then :func:`diffusion_loss`;
    ``latent_cache`` (a ``ChunkLatentCache`` of ``autoencoder``), when given, encodes in its place."""
    x = prepare_denoiser_batch(batch, autoencoder=autoencoder, cfg=cfg, block_size=model.config.block_size,
                               sentence_ends=sentence_ends, latent_cache=latent_cache)
    return diffusion_loss(model, x, cfg, autoencoder)
