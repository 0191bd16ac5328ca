"""Where a latent pipeline loses the text: real continuations noised to each time t of a grid, decoded.

For each t: the rescaled noisy latent z_t / alpha_t (what the decoder reads if the denoiser did
nothing), the denoiser's clean estimate x0_hat(z_t, t) without and with self-conditioning (its own
first estimate fed back, as the samplers do), each decoded by the autoencoder and scored by token
accuracy against the real continuation and by word entropy of the decoded texts; and the training
density near t (as a share of uniform times' mass: under 0.01 the denoiser hardly trained there).
A block-causal denoiser is given one time for all its blocks, each block seeing the noisy blocks before
it, and again with the clean blocks before it ([clean ; noisy] layout): what block-AR sampling gives it.
Last, the estimate the sampler reads (self-conditioned when the denoiser self-conditions; with the clean
blocks before for a block-causal one) with every row's context (its prompt, its clean blocks) taken from
another row: where it scores as well as with its own, the denoiser does not read its context.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from latentlm.autoencoder.modeling_autoencoder import decode_ids
from latentlm.diffusion.time_density import mass_near
from latentlm.eval import metrics as M

DEFAULT_GRID = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.67, 0.75, 0.85, 0.95)


@dataclass
class PerTRow:
    t: float
    training_mass: float | None  # training density near t / uniform's (None: not saved with the pipeline)
    noisy_accuracy: float  # z_t / alpha_t decoded
    noisy_entropy: float
    x0_accuracy: float  # x0_hat(z_t, t), no self-conditioning
    x0_entropy: float
    x0_sc_accuracy: float | None  # x0_hat with its own first estimate as self-conditioning (None: no self-cond)
    x0_sc_entropy: float | None
    # block-causal: x0_hat with the clean blocks before each block (self-conditioned when it self-conditions)
    x0_prefix_accuracy: float | None = None
    x0_prefix_entropy: float | None = None
    # the sampler's estimate with another row's context (prompt, clean blocks): what the context is worth
    x0_other_accuracy: float | None = None
    x0_other_entropy: float | None = None


def continuation_ids(tokenizer, continuations: list[str], max_new_tokens: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (b, n k) and mask of real continuations as the denoiser trains on them: cut to
    ``max_new_tokens`` (no end-of-text then), else followed by the end-of-text, padded to whole latents."""
    n = -(-max_new_tokens // k) * k
    ids = torch.full((len(continuations), n), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, c in enumerate(continuations):
        x = tokenizer(c, add_special_tokens=False)["input_ids"]
        x = x[:max_new_tokens] if len(x) >= max_new_tokens else x + [tokenizer.eos_token_id]
        ids[r, : len(x)] = torch.tensor(x)
        mask[r, : len(x)] = 1
    return ids, mask


@torch.no_grad()
def per_t_map(pipe, prompts: list[str], continuations: list[str], grid=DEFAULT_GRID, *, max_new_tokens: int = 128,
              seed: int = 0, batch_size: int = 64) -> list[PerTRow]:
    """One :class:`PerTRow` per t of ``grid`` for the (opening, real continuation) pairs given."""
    ae, tok = pipe.autoencoder, pipe.tokenizer
    device = pipe.denoiser.device
    k = ae.config.tokens_per_latent
    ids, mask = continuation_ids(tok, continuations, max_new_tokens, k)
    spec = getattr(pipe.config, "training_times", None)
    self_cond = pipe.denoiser.config.self_conditioning
    block_causal = pipe.denoiser.config.block_size is not None
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for t_val in grid:
        decoded: dict[str, list[torch.Tensor]] = {"noisy": [], "x0": [], "x0_sc": [], "x0_prefix": [], "x0_other": []}
        for a in range(0, len(prompts), batch_size):
            b_ids, b_mask = ids[a : a + batch_size].to(device), mask[a : a + batch_size].to(device)
            z0 = ae.encode(b_ids, b_mask).float()
            _, prompt, prompt_mask = pipe.encode_prompt(prompts[a : a + batch_size], 1, device)
            t = torch.full((len(z0),), float(t_val), device=device)
            alpha, sigma = (v.float()[:, None, None] for v in pipe.denoiser.schedule.alpha_sigma(t))
            eps = torch.randn(z0.shape, generator=gen).to(device)
            z_t = alpha * z0 + sigma * eps
            x0 = pipe.predict_x0(z_t, t, prompt, prompt_mask).float()
            decoded["noisy"].append(pipe.tokens_of(z_t / alpha))
            decoded["x0"].append(pipe.tokens_of(x0))
            if self_cond:
                decoded["x0_sc"].append(pipe.tokens_of(pipe.predict_x0(z_t, t, prompt, prompt_mask, self_cond=x0)))
            if block_causal:
                decoded["x0_prefix"].append(pipe.tokens_of(_read(pipe, z_t, t, prompt, prompt_mask, z0)))
            if len(prompts) > 1:  # row r reads row r - 1's context (a batch of one row: its own)
                other = _read(pipe, z_t, t, prompt.roll(1, 0), prompt_mask.roll(1, 0),
                              z0.roll(1, 0) if block_causal else None)
                decoded["x0_other"].append(pipe.tokens_of(other))
        scores = {name: _scores(tok, torch.cat(v).cpu(), ids, mask) if v else (None, None)
                  for name, v in decoded.items()}
        mass = float(mass_near(spec, torch.tensor([float(t_val)], dtype=torch.float64))[0]) if spec else None
        rows.append(PerTRow(float(t_val), mass, *scores["noisy"], *scores["x0"], *scores["x0_sc"], *scores["x0_prefix"],
                            *scores["x0_other"]))
    return rows


def _read(pipe, z_t, t, prompt, prompt_mask, clean) -> torch.Tensor:
    """The clean estimate the sampler reads: self-conditioned on a first estimate when the denoiser
    self-conditions; ``clean``: the clean blocks before each block of a block-causal denoiser."""
    kw = {} if clean is None else {"clean": clean}
    x = pipe.predict_x0(z_t, t, prompt, prompt_mask, **kw).float()
    if pipe.denoiser.config.self_conditioning:
        x = pipe.predict_x0(z_t, t, prompt, prompt_mask, self_cond=x, **kw).float()
    return x


def _scores(tok, pred: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Token accuracy over the real tokens, and the word entropy of the decoded texts (cut at end-of-text)."""
    real = mask.bool()
    accuracy = float((pred[real] == ids[real]).float().mean())
    return accuracy, M.unigram_entropy(decode_ids(pred, tok))


def map_table(rows: list[PerTRow], real_entropy: float) -> str:
    """Markdown table of a per-t map; ``real_entropy``: the real continuations' word entropy."""
    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    prefix = any(r.x0_prefix_accuracy is not None for r in rows)
    other = any(r.x0_other_accuracy is not None for r in rows)
    head = ("| t | training mass / uniform | z_t/alpha acc. | entropy | x0_hat acc. | entropy | "
            "x0_hat self-cond acc. | entropy |" + (" x0_hat, clean blocks before: acc. | entropy |" if prefix else "")
            + (" the same, another row's context: acc. | entropy |" if other else ""))
    lines = [f"Real continuations: word entropy {real_entropy:.2f} bits.", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        d = asdict(r)
        lines.append(f"| {r.t:.2f} | {f(r.training_mass, '{:.2f}')} | {f(d['noisy_accuracy'])} | "
                     f"{f(d['noisy_entropy'], '{:.2f}')} | {f(d['x0_accuracy'])} | {f(d['x0_entropy'], '{:.2f}')} | "
                     f"{f(d['x0_sc_accuracy'])} | {f(d['x0_sc_entropy'], '{:.2f}')} |"
                     + (f" {f(d['x0_prefix_accuracy'])} | {f(d['x0_prefix_entropy'], '{:.2f}')} |" if prefix else "")
                     + (f" {f(d['x0_other_accuracy'])} | {f(d['x0_other_entropy'], '{:.2f}')} |" if other else ""))
    return "\n".join(lines)
