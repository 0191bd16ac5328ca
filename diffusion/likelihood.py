"""An upper bound on -log p(text) under the whole latent model (autoencoder + denoiser).

Treat the encoder's latent z0 = E(x) (deterministic) as the data of a
variational diffusion model (Kingma et al. 2021, VDM) whose first step is a
slightly noisy latent z_{t0} ~ q(z_{t0} | x) = N(alpha_{t0} z0, sigma_{t0}^2 I)
read by the decoder. Then

    -log p(x) <= E_q[-log p_dec(x | z_{t0})]                                (reconstruction)
               + 1/2 int_{t0}^{1} -SNR'(t) E_eps ||z0 - x0_hat(z_t, t)||^2 dt   (diffusion)
               + KL(q(z_1 | x) || N(0, I))                                    (prior)

with SNR(t) = alpha_t^2 / sigma_t^2 = exp(lambda(t)), so -SNR'(t) = -lambda'(t) exp(lambda(t)).
The decoder reads z_{t0} / alpha_{t0} = z0 + (sigma/alpha) eps, the noise it was
trained on. The latents encode the padded token sequence (text, end-of-text,
padding): one choice of q(z | x), so the bound holds. The decoder's positions
are independent given the latents and the sampler keeps the tokens up to the
first end-of-text, so the reconstruction term counts the text and its
end-of-text alone: what follows is marginalised out, and a text pays nothing for
the padding that fills its last latent.

The integral is estimated by Monte Carlo in log-SNR (dlambda = lambda'(t) dt):

    1/2 int_{lambda(1)}^{lambda(t0)} exp(lambda) E||z0 - x0_hat||^2 dlambda,

with stratified lambda ~ U(lambda(1), lambda(t0)) and fresh noise; the integrand
is nearly flat in lambda (a good denoiser's error falls like exp(-lambda)), so
the estimate has a far lower variance than sampling t uniformly. It returns the
mean and its standard error.

A block-causal denoiser (blocks of B latents) is scored by the chain rule over blocks,

    -log p(x) = sum_j -log p(x_j | x_<j)  <=  sum_j bound(block j | clean blocks z0_<j),

each block's three terms as above with its own noise level, the clean predecessors as context
(the [clean ; noisy] layout computes every block's term in one call) and its own decoder pass,
as the sampler commits it. Conditional on a
prefix, the prompt latents are the denoiser's context and the continuation is
encoded alone, exactly as in training and sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from latentlm.autoencoder.modeling_autoencoder import encode_prompts
from latentlm.diffusion.schedules import NoiseSchedule
from latentlm.errors import InputError


@dataclass
class BoundTerms:
    """Per-row terms in nats (b,) and the Monte Carlo standard error of their sum."""

    reconstruction: torch.Tensor
    diffusion: torch.Tensor
    prior: torch.Tensor
    stderr: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.reconstruction + self.diffusion + self.prior


@torch.no_grad()
def latent_bound(
    z0: torch.Tensor,
    decoder_nll: Callable[[torch.Tensor], torch.Tensor],
    x0_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    *,
    t0: float,
    n_samples: int = 32,
    generator: torch.Generator | None = None,
    block_size: int | None = None,
    samples_per_call: int = 1,
) -> BoundTerms:
    """The bound for clean latents z0 (b, n, d).

    Args:
        decoder_nll: z (b, n, d) at noise level t0, *divided by alpha_{t0}* ->
            -log p_dec(x | z) per row (b,).
        x0_fn: (z_t, t) -> x0_hat, the denoiser's clean-latent estimate; t (b,), or one time per
            block (b, n / block_size) with ``block_size``.
        t0: the smallest noise level (the decoder's step).
        n_samples: Monte Carlo draws, for the reconstruction and the diffusion terms each.
        block_size: the chain rule over blocks of this many latents: each block's diffusion term at its
            own stratified noise level (``x0_fn`` must condition block j on the clean blocks before it).
        samples_per_call: draws evaluated in one call of ``decoder_nll`` and ``x0_fn``, stacked along
            the batch (k x b rows: draw 1's b rows, then draw 2's, ...). The draws are the same whatever
            its value (one noise tensor per draw, in order), so it trades memory for speed only.
    """
    if n_samples < 2:
        raise InputError(f"n_samples must be at least 2 for a standard error, got {n_samples}")
    if not 0 < t0 < 1:
        raise InputError(f"t0 must be in (0, 1), got {t0}")
    if not isinstance(samples_per_call, int) or samples_per_call < 1:
        raise InputError(f"samples_per_call must be a positive integer, got {samples_per_call!r}")
    b, n = z0.shape[:2]
    if block_size is not None and n % block_size:
        raise InputError(f"{n} latents are not whole blocks of {block_size}")
    n_blocks = 1 if block_size is None else n // block_size
    z0 = z0.double()
    chunks = [range(a, min(a + samples_per_call, n_samples)) for a in range(0, n_samples, samples_per_call)]

    def noise(k: int) -> torch.Tensor:  # k draws of z0's shape, stacked: (k * b, n, d)
        draws = [torch.randn(z0.shape, generator=generator, dtype=torch.float64) for _ in range(k)]
        return (draws[0] if k == 1 else torch.cat(draws)).to(z0.device)

    def tiled(k: int) -> torch.Tensor:  # z0 once per draw: (k * b, n, d)
        return z0 if k == 1 else z0.repeat(k, 1, 1)

    def per_draw(x: torch.Tensor, k: int) -> list[torch.Tensor]:  # (k * b, ...) -> k tensors (b, ...)
        return list(x.reshape(k, b, *x.shape[1:]))

    a0, s0 = schedule.alpha_sigma(torch.tensor(t0))
    rec = []
    for ks in chunks:
        z0k = tiled(len(ks))
        rec += per_draw(decoder_nll((a0 * z0k + s0 * noise(len(ks))) / a0).double(), len(ks))
    rec = torch.stack(rec)
    # one stratification offset per block (one for the row without blocks)
    offset = (torch.rand((), generator=generator) if block_size is None
              else torch.rand(n_blocks, generator=generator)).double()
    lam_hi = float(schedule.log_snr(torch.tensor(t0)))
    lam_lo = float(schedule.log_snr(torch.tensor(1.0)))
    diff = []
    for ks in chunks:
        u = ((torch.tensor(list(ks), dtype=torch.float64)[:, None] + offset) / n_samples) % 1  # (k, blocks)
        lam = (lam_lo + (lam_hi - lam_lo) * u).repeat_interleave(b, 0).to(z0.device)  # (k * b, blocks)
        t = schedule.t_of_log_snr(lam)
        a, s = (v.repeat_interleave(n // n_blocks, 1)[..., None] for v in schedule.alpha_sigma(t))
        z0k = tiled(len(ks))
        z_t = a * z0k + s * noise(len(ks))
        t_in = t[:, 0] if block_size is None else t
        err = ((z0k - x0_fn(z_t.float(), t_in.float()).double()) ** 2).sum(-1)  # (k * b, n)
        err = err.reshape(len(err), n_blocks, -1).sum(-1)
        diff += per_draw((0.5 * (lam_hi - lam_lo) * lam.exp() * err).sum(1), len(ks))
    diff_t = torch.stack(diff)
    a1, s1 = schedule.alpha_sigma(torch.tensor(1.0))
    d = z0[0].numel()
    prior = 0.5 * ((a1**2) * (z0**2).flatten(1).sum(1) + d * (s1**2 - 1 - torch.log(s1**2)))
    stderr = torch.sqrt(rec.var(0) / n_samples + diff_t.var(0) / n_samples)
    return BoundTerms(rec.mean(0), diff_t.mean(0), prior, stderr)


DEFAULT_NOISE_TO_SIGNAL = 0.7  # chosen on TinyStories valid (docs/latent_diffusion.md): 0.1 -> 18.5 nats/token, 0.7 -> 6.3


def default_t0(schedule: NoiseSchedule, noise_to_signal: float = DEFAULT_NOISE_TO_SIGNAL) -> float:
    """The time at which sigma/alpha = ``noise_to_signal`` (the decoder's noise, in latent stds).

    Any t0 gives a valid bound (it defines where the decoder takes over); the
    diffusion term grows as exp(lambda) near t0, so a t0 inside the noise range
    the decoder was trained on (sigma_max of the autoencoder loss) is much tighter.
    """
    return float(schedule.t_of_log_snr(torch.tensor(-2 * math.log(noise_to_signal))))


@torch.no_grad()
def pipeline_nll_bound(
    pipe, texts: list[str] | list[list[int]], *, prefix_len: int = 0, n_samples: int = 32, seed: int = 0,
    t0: float | None = None, min_latents: int = 0, samples_per_call: int = 8,
) -> tuple[list[float], list[float], list[int]]:
    """Bound of each text under a LatentDiffusionPipeline: (nats, standard error, scored tokens).

    Scored tokens: the text's tokens after the first ``prefix_len`` plus the
    end-of-text. Texts longer than the autoencoder's maximum are truncated to
    ``max_seq_len - 1`` tokens (the autoencoder's policy). A text given as a list
    of token ids is scored as it is (end-of-text included if it has one): how the
    comparison scores every model on the same tokens. ``min_latents``: score every continuation in a
    window of at least this many latents (text, end-of-text, then padding; at most the denoiser's
    ``max_latents``), the same window for texts of different lengths. ``samples_per_call``: Monte Carlo
    draws of a text evaluated in one network call (:func:`latent_bound`; the same draws whatever its value).
    """

    ae, den, tok = pipe.autoencoder, pipe.denoiser, pipe.tokenizer
    schedule = den.schedule
    t0 = default_t0(schedule) if t0 is None else t0
    limit = ae.config.max_seq_len
    k = ae.config.tokens_per_latent
    device = pipe._execution_device
    nats, ses, counts = [], [], []
    gen = torch.Generator().manual_seed(seed)
    for text in texts:
        if isinstance(text, str):
            ids = tok(text, add_special_tokens=False)["input_ids"][: limit - 1] + [tok.eos_token_id]
        else:
            ids = list(text)[:limit]
        if prefix_len >= len(ids):
            raise InputError(f"prefix_len {prefix_len} leaves nothing to score in a text of {len(ids) - 1} tokens")
        prefix, rest = ids[:prefix_len], ids[prefix_len:]
        # latents of the scored continuation, as the pipeline would sample; at least min_latents (then
        # text, end-of-text and padding fill a window of the same size for every text)
        n = min(max(-(-len(rest) // k), min_latents), den.config.max_latents)
        block = den.config.block_size
        if block is not None:
            n = -(-n // block) * block  # whole blocks; the padding after the text is scored as well
        cont = torch.full((1, n * k), tok.pad_token_id, dtype=torch.long, device=device)
        cont[0, : len(rest)] = torch.tensor(rest, device=device)
        mask = (cont != tok.pad_token_id).long()
        mask[0, : len(rest)] = 1
        z0 = ae.encode(cont, mask).float()
        ctx, ctx_mask = encode_prompts(ae, [prefix], tok.pad_token_id, device)

        # a block model decodes each block alone and reads the clean blocks before it, as its sampler
        per = n * k if block is None else block * k
        # the sampler reads up to the first end-of-text and the padding after it comes after every scored
        # token (of the decoder's independent positions, or of a local-AR group's left-to-right chain), so
        # it is marginalised out: only the scored tokens cost nats
        scored = (torch.arange(n * k, device=device) < len(rest)).float()

        def decoder_nll(z: torch.Tensor, cont: torch.Tensor = cont, per: int = per,
                        scored: torch.Tensor = scored) -> torch.Tensor:
            targets = cont.reshape(-1, per).repeat(len(z), 1)  # z: the text's row once per draw (draws, n, d)
            logits = ae.decode(z.reshape(-1, per // k, z.shape[-1]).to(ae.dtype), targets).float()
            ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            return (ce.reshape(len(z), -1) * scored).sum(1)

        extra = {} if block is None else {"clean": z0.to(den.dtype)}

        def x0_fn(z_t: torch.Tensor, t: torch.Tensor, ctx=ctx, ctx_mask=ctx_mask, extra=extra) -> torch.Tensor:
            per_draw = {k: _rows(v, len(z_t)) for k, v in extra.items()}  # the text's inputs once per draw
            return pipe.predict_x0(z_t.to(den.dtype), t, _rows(ctx, len(z_t)), _rows(ctx_mask, len(z_t)),
                                   **per_draw)  # the time expert of each row

        terms = latent_bound(z0, decoder_nll, x0_fn, schedule, t0=t0, n_samples=n_samples, generator=gen,
                             block_size=block, samples_per_call=min(samples_per_call, n_samples))
        nats.append(float(terms.total[0]))
        ses.append(float(terms.stderr[0]))
        counts.append(len(rest))
    return nats, ses, counts


def _rows(x: torch.Tensor | None, m: int) -> torch.Tensor | None:
    """One row (1, ...) repeated to ``m`` rows."""
    return None if x is None else x.repeat(m, *[1] * (x.dim() - 1))
