"""Sample-quality statistics on plain texts (model-independent: words are whitespace tokens).

Each function takes a list of texts and returns a number; the harness reports
them for every model next to the same numbers on real held-out text, because
each one alone can be gamed (docs/evaluation.md): low generation perplexity
by repetition, high entropy by noise, high MAUVE by copying.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from latentlm.autoencoder.modeling_autoencoder import resolve_semantic_model
from latentlm.errors import InputError


def words(text: str) -> list[str]:
    return text.split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def unigram_entropy(texts: Sequence[str]) -> float:
    """Entropy in bits of the pooled word distribution (log2 of the vocabulary for a uniform sample)."""
    counts = Counter(w for t in texts for w in words(t))
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def rep_n(texts: Sequence[str], n: int = 4) -> float:
    """Share of n-grams that repeat an earlier n-gram of the same text (Welleck et al. 2020 seq-rep-n)."""
    rep = total = 0
    for t in texts:
        grams = ngrams(words(t), n)
        rep += len(grams) - len(set(grams))
        total += len(grams)
    return rep / total if total else 0.0


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams, pooled over the texts (Li et al. 2016)."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: Sequence[str], max_texts: int = 200, seed: int = 0) -> float:
    """Mean sentence BLEU (sacrebleu, 0-100) of each text against all the others (Zhu et al. 2018).

    High means the samples resemble each other (low diversity). At most
    ``max_texts`` texts (a seeded subset) keep the quadratic cost bounded.
    """
    import sacrebleu  # optional: the [eval] extra

    texts = [t for t in texts if t.strip()]
    if len(texts) < 2:
        raise InputError("self-BLEU needs at least two non-empty texts")
    if len(texts) > max_texts:
        texts = random.Random(seed).sample(texts, max_texts)
    scores = [sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1 :]).score for i, t in enumerate(texts)]
    return float(np.mean(scores))


class NgramIndex:
    """The set of word n-grams of a corpus (the training set), for memorisation."""

    def __init__(self, corpus: Sequence[str], n: int = 8) -> None:
        self.n = n
        self.grams = {hash(g) for t in corpus for g in ngrams(words(t), n)}

    def memorised(self, texts: Sequence[str]) -> float:
        """Share of the texts' n-grams found in the corpus."""
        grams = [g for t in texts for g in ngrams(words(t), self.n)]
        return sum(hash(g) in self.grams for g in grams) / len(grams) if grams else 0.0


def bootstrap_ci(
    items: Sequence, statistic: Callable[[list], float], *, n_boot: int = 200, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over resamples of ``items`` (samples or seeds)."""
    items = list(items)
    if not items:
        raise InputError("bootstrap over an empty list")
    rng = random.Random(seed)
    stats = sorted(statistic([items[rng.randrange(len(items))] for _ in items]) for _ in range(n_boot))
    lo = stats[int((1 - level) / 2 * (n_boot - 1))]
    hi = stats[int((1 + level) / 2 * (n_boot - 1))]
    return float(lo), float(hi)


def sentence_embeddings(texts: Sequence[str], model_name: str = "all-MiniLM-L6-v2", batch_size: int = 64) -> np.ndarray:
    """Unit-norm sentence-transformer embeddings (n, d); all-MiniLM-L6-v2 offline by default."""
    # heavy (a second torch model stack): loaded only when embeddings are asked for
    from sentence_transformers import SentenceTransformer

    model = _ENCODERS.get(model_name)
    if model is None:
        model = _ENCODERS[model_name] = SentenceTransformer(resolve_semantic_model(model_name), device="cpu")
    return model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)


_ENCODERS: dict = {}


def mauve_score(p_features: np.ndarray, q_features: np.ndarray, seed: int = 0) -> float:
    """MAUVE (Pillutla et al. 2021, ``mauve-text``) between two feature sets (n, d).

    The number of clusters follows the package's rule (n / 10), at least 2.
    """
    import mauve  # optional: the [eval] extra

    if len(p_features) < 10 or len(q_features) < 10:
        raise InputError(f"MAUVE needs at least 10 texts per side, got {len(p_features)} and {len(q_features)}")
    k = max(2, min(len(p_features), len(q_features)) // 10)
    out = mauve.compute_mauve(p_features=p_features, q_features=q_features, num_buckets=k, seed=seed,
                              verbose=False, device_id=-1)
    return float(out.mauve)
