"""How generable an autoencoder's latent space is (``latentlm eval latents``): where a latent model built
on it will lose the text, measured before sampling from it.

* **Reconstruction where the denoiser works**: whole documents; continuations split at a random token
  and right after a sentence end; the last, partly filled latent of a prompt. The rows are built by the
  denoiser's own batch code (``split_points``, ``prepare_denoiser_batch``, ``encode_prompts``), so what is
  scored is what a denoiser trains on.
* **Decoder robustness**: real continuation latents noised to each t of a grid on the noise schedule
  (the denoiser's, or the cosine schedule for an autoencoder alone), decoded from z_t / alpha_t (what the
  decoder reads when the denoiser adds nothing).
* **Latent statistics**: mean norm, per-dimension variance, participation ratio (the number of
  dimensions the variance effectively spreads over) and round-trip drift (decode, re-encode: how far
  the latents of a latent's decoded tokens are from it).
* With a pipeline: the per-t map of its denoiser (:mod:`latentlm.eval.per_t`).

Every accuracy counts the real tokens (end-of-text included); entropies are word entropies (bits) of
the decoded texts, next to the real texts'.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch

from latentlm.autoencoder.modeling_autoencoder import decode_ids, encode_prompts
from latentlm.diffusion.losses import DenoiserLossConfig, prepare_denoiser_batch, split_points
from latentlm.diffusion.schedules import NoiseSchedule
from latentlm.eval import metrics as M
from latentlm.eval.compare import is_synthetic, openings
from latentlm.eval.compare_config import CompareConfig
from latentlm.eval.per_t import DEFAULT_GRID, PerTRow, map_table, per_t_map

SPLITS = ("document", "token", "sentence")  # where a row's continuation starts


@dataclass
class Reconstruction:
    split: str
    accuracy: float
    entropy: float  # decoded continuations
    real_entropy: float  # the same continuations, real
    n_tokens: int


def _rows(docs: list[str], tokenizer, seq_len: int, batch_size: int):
    """Documents as the denoiser's training batches: ids + end-of-text, cut at ``seq_len``, padded."""
    for a in range(0, len(docs), batch_size):
        enc = [x[: seq_len - 1] + [tokenizer.eos_token_id]
               for x in tokenizer(docs[a : a + batch_size], add_special_tokens=False)["input_ids"]]
        ids = torch.full((len(enc), seq_len), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, x in enumerate(enc):
            ids[r, : len(x)], mask[r, : len(x)] = torch.tensor(x), 1
        yield {"input_ids": ids, "attention_mask": mask}


def _split_cfg(split: str) -> DenoiserLossConfig:
    """The denoiser's split settings for one kind of row: the whole document (an empty prompt), a random
    token, or right after a sentence end; the whole rest of the row as the continuation, no prompt drop."""
    return DenoiserLossConfig(p_unconditional=1.0 if split == "document" else 0.0, p_prompt_drop=0.0,
                              p_sentence_split=1.0 if split == "sentence" else 0.0, min_latents_fraction=1.0)


@torch.no_grad()
def split_reconstruction(ae, tokenizer, docs: list[str], sentence_ends: torch.Tensor, *, batch_size: int = 32,
                         seed: int = 0) -> list[Reconstruction]:
    """Token accuracy and word entropy of decoded continuation latents for each of :data:`SPLITS`."""
    out = []
    for split in SPLITS:
        torch.manual_seed(seed)
        cfg, correct, total, decoded, real = _split_cfg(split), 0, 0, [], []
        for batch in _rows(docs, tokenizer, ae.config.max_seq_len, batch_size):
            x = prepare_denoiser_batch(batch, autoencoder=ae, cfg=cfg, sentence_ends=sentence_ends)
            pred = ae.decode_tokens(x.z0)
            known = x.token_mask.bool()
            correct += int((pred[known] == x.tokens[known]).sum())
            total += int(known.sum())
            decoded += decode_ids(torch.where(known, pred, tokenizer.pad_token_id), tokenizer)
            real += decode_ids(x.tokens, tokenizer)
        out.append(Reconstruction(split, correct / max(total, 1), M.unigram_entropy(decoded),
                                  M.unigram_entropy(real), total))
    return out


@torch.no_grad()
def partial_prompt_groups(ae, tokenizer, docs: list[str], *, batch_size: int = 32, seed: int = 0) -> dict:
    """Accuracy of the tokens in the last latent of prompts that end inside a group of k tokens (split at a
    random token, as the denoiser's rows are): the latent the sampler's first block reads next to."""
    k = ae.config.tokens_per_latent
    torch.manual_seed(seed)
    cfg = _split_cfg("token")
    correct = total = rows = 0
    for batch in _rows(docs, tokenizer, ae.config.max_seq_len, batch_size):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        split = split_points(ids, mask.sum(1), cfg)
        prompts = [ids[r, :p].tolist() for r, p in enumerate(split.tolist())]
        z, z_mask = encode_prompts(ae, prompts, tokenizer.pad_token_id, "cpu")
        if z is None:
            continue
        last = ae.decode_tokens(z[:, -1:])  # (b, k): the right-most (left-padded) prompt latent
        for r, p in enumerate(prompts):
            part = len(p) % k
            if part == 0:
                continue
            correct += int((last[r, :part] == torch.tensor(p[-part:])).sum())
            total += part
            rows += 1
    return {"accuracy": correct / max(total, 1), "n_tokens": total, "n_prompts": rows}


@torch.no_grad()
def robustness(ae, tokenizer, docs: list[str], schedule: NoiseSchedule, grid=DEFAULT_GRID, *,
               batch_size: int = 32, seed: int = 0) -> list[dict]:
    """Accuracy and entropy of whole-document latents noised to z_t on ``schedule`` and decoded from
    z_t / alpha_t, at each t of ``grid``."""
    gen = torch.Generator().manual_seed(seed)
    batches = list(_rows(docs, tokenizer, ae.config.max_seq_len, batch_size))
    latents = [ae.encode(b["input_ids"], b["attention_mask"]).float() for b in batches]
    out = []
    for t in grid:
        alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(float(t))))
        correct = total = 0
        decoded = []
        for b, z in zip(batches, latents):
            noisy = z + (sigma / alpha) * torch.randn(z.shape, generator=gen)
            pred = ae.decode_tokens(noisy)[:, : b["input_ids"].shape[1]]
            known = b["attention_mask"].bool()
            correct += int((pred[known] == b["input_ids"][known]).sum())
            total += int(known.sum())
            decoded += decode_ids(torch.where(known, pred, tokenizer.pad_token_id), tokenizer)
        out.append({"t": float(t), "noise_per_dim": sigma / alpha, "accuracy": correct / max(total, 1),
                    "entropy": M.unigram_entropy(decoded)})
    return out


@torch.no_grad()
def latent_geometry(ae, tokenizer, docs: list[str], *, batch_size: int = 32) -> dict:
    """Mean norm, per-dimension variance (mean, min, max), participation ratio (sum var)^2 / sum var^2 of
    the covariance's eigenvalues, and round-trip drift |encode(decode(z)) - z| / |z| of real latents."""
    vectors, drift = [], []
    k = ae.config.tokens_per_latent
    for b in _rows(docs, tokenizer, ae.config.max_seq_len, batch_size):
        z = ae.encode(b["input_ids"], b["attention_mask"]).float()
        real = b["attention_mask"].reshape(len(z), -1, k).any(-1)  # (b, n) latents with a real token
        tokens = ae.decode_tokens(z)
        again = ae.encode(tokens, torch.ones_like(tokens)).float()
        drift.append(((again - z).norm(dim=-1) / z.norm(dim=-1).clamp_min(1e-8))[real])
        vectors.append(z[real])
    x = torch.cat(vectors).double()
    var = x.var(0)
    eig = torch.linalg.eigvalsh(torch.cov(x.T)).clamp_min(0)
    return {"n_latents": len(x), "dim": x.shape[1], "mean_norm": float(x.norm(dim=-1).mean()),
            "variance_mean": float(var.mean()), "variance_min": float(var.min()), "variance_max": float(var.max()),
            "participation_ratio": float(eig.sum() ** 2 / (eig ** 2).sum().clamp_min(1e-30)),
            "round_trip_drift": float(torch.cat(drift).mean())}


def generability_report(ae, tokenizer, docs: list[str], sentence_ends: torch.Tensor, *, pipe=None,
                        grid=DEFAULT_GRID, max_texts: int = 256, prompts: int = 64, seed: int = 0) -> dict:
    """The whole report as a dictionary (JSON-ready): reconstruction by split, partial prompt groups,
    robustness over ``grid``, latent geometry, and with ``pipe`` its per-t map on ``prompts`` openings."""
    ae = ae.eval()
    docs = random.Random(seed).sample(docs, min(max_texts, len(docs)))
    schedule = pipe.denoiser.schedule if pipe is not None else NoiseSchedule("cosine")
    report = {"texts": len(docs), "schedule": "the denoiser's" if pipe is not None else "cosine",
              "reconstruction": [asdict(r) for r in split_reconstruction(ae, tokenizer, docs, sentence_ends, seed=seed)],
              "partial_prompt_group": partial_prompt_groups(ae, tokenizer, docs, seed=seed),
              "robustness": robustness(ae, tokenizer, docs, schedule, grid, seed=seed),
              "geometry": latent_geometry(ae, tokenizer, docs)}
    if pipe is not None:
        pairs = openings(docs, prompts, CompareConfig(seed=seed), is_synthetic(docs))
        report["per_t"] = [asdict(r) for r in per_t_map(pipe, [o for o, _ in pairs], [c for _, c in pairs], grid,
                                                        seed=seed)]
        report["per_t_real_entropy"] = M.unigram_entropy([c for _, c in pairs])
    return report


def report_table(report: dict) -> str:
    """The report as markdown tables."""
    lines = [f"{report['texts']} texts.", "", "| rows | token accuracy | word entropy (decoded / real) | tokens |",
             "|---|---|---|---|"]
    for r in report["reconstruction"]:
        lines.append(f"| {r['split']} | {r['accuracy']:.4f} | {r['entropy']:.2f} / {r['real_entropy']:.2f} | "
                     f"{r['n_tokens']:,} |")
    p = report["partial_prompt_group"]
    lines += ["", f"Last, partly filled prompt latent: token accuracy {p['accuracy']:.4f} over {p['n_tokens']:,} "
              f"tokens of {p['n_prompts']} prompts.", "",
              f"Decoder robustness ({report['schedule']} schedule, whole documents decoded from z_t / alpha_t):", "",
              "| t | noise per dimension | token accuracy | word entropy |", "|---|---|---|---|"]
    for r in report["robustness"]:
        lines.append(f"| {r['t']:.2f} | {r['noise_per_dim']:.3f} | {r['accuracy']:.4f} | {r['entropy']:.2f} |")
    g = report["geometry"]
    lines += ["", f"Latents: {g['n_latents']:,} of dimension {g['dim']}, mean norm {g['mean_norm']:.2f}, "
              f"variance per dimension {g['variance_mean']:.3f} ({g['variance_min']:.3f}-{g['variance_max']:.3f}), "
              f"participation ratio {g['participation_ratio']:.1f}, round-trip drift {g['round_trip_drift']:.4f}."]
    if "per_t" in report:
        lines += ["", "The denoiser per t:", "",
                  map_table([PerTRow(**r) for r in report["per_t"]], report["per_t_real_entropy"])]
    return "\n".join(lines)
