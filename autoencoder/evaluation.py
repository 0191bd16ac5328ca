"""Evaluate a text autoencoder: reconstruction under latent noise, latent statistics,
interpolation, semantic alignment and speed (``latentlm eval autoencoder``)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from latentlm.autoencoder.modeling_autoencoder import (
    TextAutoencoder,
    decode_ids,
    encode_texts,
    resolve_semantic_model,
)
from latentlm.data.synthetic import check_story, split_sentences
from latentlm.errors import DataError

SIGMAS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def _batches(texts: Sequence[str], size: int):
    for i in range(0, len(texts), size):
        yield list(texts[i : i + size])


@torch.no_grad()
def reconstruction_curve(
    model: TextAutoencoder, tokenizer, texts: Sequence[str], sigmas=SIGMAS, *, batch_size: int = 32,
    seed: int = 0, progress: bool = True,
) -> dict:
    """Token accuracy and exact match of reconstructions from latents + sigma * std * noise.

    ``std`` is the empirical standard deviation of the latents over ``texts``.
    Accuracy counts every real token and the end-of-text; exact match is the
    share of texts whose decoded text (cut at end-of-text) equals the input
    after the documented truncation.
    """
    gen = torch.Generator().manual_seed(seed)
    latents, masks, ids_all = [], [], []
    t0 = time.perf_counter()
    n_tokens = 0
    for chunk in _batches(texts, batch_size):
        ids, mask = encode_texts(chunk, tokenizer, model.config.max_seq_len)
        latents.append(model.encode(ids, mask))
        masks.append(mask)
        ids_all.append(ids)
        n_tokens += int(mask.sum())
    encode_s = time.perf_counter() - t0
    std = float(torch.cat([z.flatten() for z in latents]).std())
    out: dict = {"latent_std": std, "sigmas": list(sigmas), "token_accuracy": [], "exact_match": []}
    decode_s = 0.0
    for sigma in tqdm(sigmas, desc="noise levels", disable=not progress):
        correct = total = exact = 0
        for z, mask, ids in zip(latents, masks, ids_all):
            noisy = z + sigma * std * torch.randn(z.shape, generator=gen)
            t0 = time.perf_counter()
            pred = model.decode_tokens(noisy)[:, : ids.shape[1]]
            decode_s += time.perf_counter() - t0
            correct += int(((pred == ids) & mask.bool()).sum())
            total += int(mask.sum())
            exact += sum(a == b for a, b in zip(decode_ids(pred, tokenizer), decode_ids(ids, tokenizer)))
        out["token_accuracy"].append(correct / total)
        out["exact_match"].append(exact / len(texts))
    s, acc = np.asarray(sigmas), np.asarray(out["token_accuracy"])
    out["robustness_area"] = float(np.trapezoid(acc, s) / (s[-1] - s[0])) if len(s) > 1 else float(acc[0])
    out["encode_tokens_per_s"] = n_tokens / encode_s
    out["decode_tokens_per_s"] = n_tokens * len(sigmas) / decode_s
    out["_latents"] = latents  # for the statistics below (dropped from JSON)
    out["_masks"] = masks
    return out


def latent_statistics(latents: list[torch.Tensor], masks: list[torch.Tensor], k: int) -> dict:
    """Per-dimension mean/std (summarised) and effective rank of the real latent vectors."""
    rows = []
    for z, m in zip(latents, masks):
        n = z.shape[1]
        pad = n * k - m.shape[1]
        slot_real = torch.nn.functional.pad(m, (0, pad)).reshape(m.shape[0], n, k).any(-1)  # (b, n)
        rows.append(z[slot_real])
    x = torch.cat(rows).double()  # (N, d)
    mean, std = x.mean(0), x.std(0)
    s = torch.linalg.svdvals(x - mean)
    p = s / s.sum()
    eff_rank = float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))
    return {"n_vectors": x.shape[0], "dim": x.shape[1], "mean_abs_mean": float(mean.abs().mean()),
            "std_mean": float(std.mean()), "std_min": float(std.min()), "std_max": float(std.max()),
            "effective_rank": eff_rank}


@torch.no_grad()
def interpolation_wellformedness(
    model: TextAutoencoder, tokenizer, texts: Sequence[str], *, pairs: int = 20, seed: int = 0
) -> dict | None:
    """Decode points between two texts' latents (t = 0.25, 0.5, 0.75) and report the share of
    well-formed sentences under the synthetic-story grammar. None unless ``texts`` are
    synthetic stories (at least 90% of their own sentences well-formed)."""
    sample = list(texts[: 2 * pairs])
    own = np.mean([check_story(t).well_formed_rate for t in sample]) if sample else 0.0
    if len(sample) < 2 or own < 0.9:
        return None
    rng = np.random.default_rng(seed)
    ok = total = 0
    for _ in range(pairs):
        a, b = rng.choice(len(sample), 2, replace=False)
        ids, mask = encode_texts([sample[a], sample[b]], tokenizer, model.config.max_seq_len)
        za, zb = model.encode(ids, mask)
        for t in (0.25, 0.5, 0.75):
            z = model.normalize(((1 - t) * za + t * zb)[None])
            text = decode_ids(model.decode_tokens(z), tokenizer)[0]
            sents = split_sentences(text)
            ok += sum(s.well_formed for s in check_story(text).sentences)
            total += len(sents)
    return {"pairs": pairs, "points": [0.25, 0.5, 0.75], "well_formed_sentence_share": ok / max(total, 1),
            "data_well_formed_share": float(own)}


@torch.no_grad()
def semantic_alignment(
    model: TextAutoencoder, tokenizer, texts: Sequence[str], *, pairs: int = 500, seed: int = 0,
    sentence_model: str = "all-MiniLM-L6-v2",
) -> dict:
    """Spearman correlation between latent cosine (mean over real latent slots) and
    sentence-transformer cosine, over random pairs of texts."""
    # optional (the [eval] extra) and heavy: only for this measurement
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    texts = list(texts)
    st = SentenceTransformer(resolve_semantic_model(sentence_model), device="cpu")
    emb = torch.as_tensor(st.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True))
    pooled = []
    for chunk in _batches(texts, 32):
        ids, mask = encode_texts(chunk, tokenizer, model.config.max_seq_len)
        z = model.encode(ids, mask)
        k = model.config.tokens_per_latent
        pad = z.shape[1] * k - mask.shape[1]
        real = torch.nn.functional.pad(mask, (0, pad)).reshape(len(chunk), -1, k).any(-1).float()
        pooled.append((z * real[..., None]).sum(1) / real.sum(1, keepdim=True))
    lat = torch.nn.functional.normalize(torch.cat(pooled), dim=-1)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(texts), pairs), rng.integers(0, len(texts), pairs)
    keep = i != j
    i, j = i[keep], j[keep]
    lat_cos = (lat[i] * lat[j]).sum(-1).numpy()
    st_cos = (emb[i] * emb[j]).sum(-1).numpy()
    rho = spearmanr(lat_cos, st_cos).statistic
    return {"pairs": int(keep.sum()), "spearman": float(rho)}


def evaluate_autoencoder(
    model: TextAutoencoder, tokenizer, texts: Sequence[str], *, max_texts: int | None = None,
    seed: int = 0, progress: bool = True, alignment_pairs: int = 500,
) -> dict:
    """Every autoencoder metric of the evaluation page, as a JSON-ready dict."""
    texts = [t for t in texts if t.strip()][:max_texts]
    if not texts:
        raise DataError("no non-empty text to evaluate the autoencoder on")
    model.eval()
    curve = reconstruction_curve(model, tokenizer, texts, seed=seed, progress=progress)
    stats = latent_statistics(curve.pop("_latents"), curve.pop("_masks"), model.config.tokens_per_latent)
    return {
        "n_texts": len(texts),
        "encoder_type": model.config.encoder_type,
        "tokens_per_latent": model.config.tokens_per_latent,
        "latent_dim": model.config.latent_dim,
        "reconstruction": curve,
        "latent_statistics": stats,
        "interpolation": interpolation_wellformedness(model, tokenizer, texts, seed=seed),
        "semantic_alignment": semantic_alignment(model, tokenizer, texts, pairs=alignment_pairs, seed=seed),
    }


def summary_table(result: dict) -> str:
    """A short Markdown summary of :func:`evaluate_autoencoder`'s result."""
    rec = result["reconstruction"]
    lines = ["| sigma x std | token accuracy | exact match |", "|---|---|---|"]
    for s, a, e in zip(rec["sigmas"], rec["token_accuracy"], rec["exact_match"]):
        lines.append(f"| {s:.1f} | {a:.4f} | {e:.3f} |")
    stats = result["latent_statistics"]
    interp = result["interpolation"]
    lines += [
        "",
        f"robustness area {rec['robustness_area']:.4f}; latent std {rec['latent_std']:.3f}; "
        f"effective rank {stats['effective_rank']:.1f} of {stats['dim']}",
        f"semantic alignment (Spearman) {result['semantic_alignment']['spearman']:.3f} over "
        f"{result['semantic_alignment']['pairs']} pairs",
        "interpolation: " + ("skipped (not synthetic stories)" if interp is None else
                             f"{interp['well_formed_sentence_share']:.3f} well-formed sentences"),
        f"speed: encode {rec['encode_tokens_per_s']:.0f} tokens/s, decode {rec['decode_tokens_per_s']:.0f} tokens/s",
    ]
    return "\n".join(lines)
