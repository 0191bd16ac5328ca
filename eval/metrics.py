"""Sample-quality statistics on plain texts (model-independent: words are whitespace tokens).

Each function takes a list of texts and returns a number; the harness reports
them for every model next to the same numbers on real held-out text, because
each one alone can be gamed (docs/evaluation.md): low generation perplexity
by repetition, high entropy by noise, high MAUVE by copying.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
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
    with _native_stderr_silenced():  # faiss's k-means warns on stderr about small sets, once per call
        out = mauve.compute_mauve(p_features=p_features, q_features=q_features, num_buckets=k, seed=seed,
                                  verbose=False, device_id=-1)
    return float(out.mauve)


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 (where C++ libraries print) to /dev/null for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def mauve_interval(p_features: np.ndarray, q_features: np.ndarray, p_groups: Sequence[int], q_groups: Sequence[int],
                   *, n_boot: int = 100, level: float = 0.95, seed: int = 0,
                   point: float | None = None) -> tuple[float, float]:
    """Interval of :func:`mauve_score` by half-sampling groups of rows (openings), without replacement.

    Row i of ``p_features`` belongs to group ``p_groups[i]`` (the opening it continues; several samples
    of one opening share it), and likewise for ``q_features``. Each of ``n_boot`` draws takes half of
    the openings without replacement and every row of each on both sides when both sides hold the same
    groups (model samples against the real continuations of the same openings), else half of each
    side's own. Resampling with replacement would duplicate texts, and MAUVE's quantisation scores
    duplicates as a distribution shift (it pulled a 926-sample score of 0.57 to resamples of 0.32-0.61);
    a half-sample without replacement has, for a mean, exactly the variance of the full sample. MAUVE
    depends on the sample size, so the half-samples' spread is placed around ``point`` (the full-sample
    score; computed when None): the interval is point + (their ``level`` percentiles - their mean).
    """
    p_groups, q_groups = list(p_groups), list(q_groups)
    if len(p_groups) != len(p_features) or len(q_groups) != len(q_features):
        raise InputError("mauve_interval: one group id per feature row")
    if n_boot < 10:
        raise InputError(f"mauve_interval needs at least 10 resamples, got {n_boot}")
    rows_p, rows_q = _rows_by_group(p_groups), _rows_by_group(q_groups)
    if len(rows_p) < 20 or len(rows_q) < 20:
        raise InputError(f"mauve_interval needs 20+ groups per side (half-samples of 10+), got {len(rows_p)} "
                         f"and {len(rows_q)}")
    paired = rows_p.keys() == rows_q.keys()
    rng = np.random.default_rng(seed)

    def half(rows: dict[int, list[int]]) -> np.ndarray:
        return rng.choice(np.array(list(rows)), len(rows) // 2, replace=False)

    def take(rows: dict[int, list[int]], ids: np.ndarray) -> np.ndarray:
        return np.array([i for g in ids for i in rows[g]])

    stats = []
    for b in range(n_boot):
        ids_p = half(rows_p)
        ids_q = ids_p if paired else half(rows_q)
        stats.append(mauve_score(p_features[take(rows_p, ids_p)], q_features[take(rows_q, ids_q)], seed=seed + b))
    point = mauve_score(p_features, q_features, seed=seed) if point is None else point
    lo, hi = _placed_around(point, stats, level)
    return float(np.clip(lo, 0, 1)), float(np.clip(hi, 0, 1))


def corpus_interval(texts: Sequence[str], groups: Sequence[int], statistic: Callable[[list[str]], float], *,
                    n_boot: int = 100, level: float = 0.95, seed: int = 0,
                    point: float | None = None) -> tuple[float, float]:
    """Interval of a statistic of the pooled texts (word entropy, distinct-n) by half-sampling groups of
    texts (openings) without replacement, as :func:`mauve_interval` does.

    Such a statistic depends on the sample's size (half the texts: fewer distinct words over fewer
    words), so the half-samples' spread is placed around ``point`` (the statistic of every text;
    computed when None): a range of per-seed values would sit off the pooled value, not around it."""
    texts, groups = list(texts), list(groups)
    if len(groups) != len(texts):
        raise InputError("corpus_interval: one group id per text")
    if n_boot < 10:
        raise InputError(f"corpus_interval needs at least 10 resamples, got {n_boot}")
    rows = _rows_by_group(groups)
    if len(rows) < 20:
        raise InputError(f"corpus_interval needs 20+ groups (half-samples of 10+), got {len(rows)}")
    rng = np.random.default_rng(seed)
    keys = np.array(list(rows))
    stats = [statistic([texts[i] for g in rng.choice(keys, len(keys) // 2, replace=False) for i in rows[g]])
             for _ in range(n_boot)]
    return _placed_around(statistic(texts) if point is None else point, stats, level)


def _placed_around(point: float, stats: Sequence[float], level: float) -> tuple[float, float]:
    """point + (the ``level`` percentiles of half-sample statistics - their mean)."""
    lo, hi = np.percentile(stats, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    centre = float(np.mean(stats))
    return float(point + lo - centre), float(point + hi - centre)


def _rows_by_group(groups: Sequence[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        out.setdefault(g, []).append(i)
    return out


def value_at(points: Sequence[Sequence[float]], target: float) -> tuple[float, ...] | None:
    """Where a curve crosses ``x = target``: the other coordinates, linearly interpolated.

    ``points``: (x, y1, y2, ...) in the order of the knob that traces the curve (a temperature, a
    step count). Every segment between consecutive points whose x values bracket ``target`` gives a
    crossing (a non-monotone curve can cross more than once); returns the crossing with the lowest y1
    (the best a model reaches at that x when y1 is a perplexity), or None when no segment brackets
    ``target`` (the curve does not reach it). A single point counts only when it lies on ``target``.
    """
    pts = [tuple(float(v) for v in p) for p in points]
    if any(len(p) < 2 or len(p) != len(pts[0]) for p in pts):
        raise InputError("value_at: every point needs the same number (two or more) of coordinates")
    hits = [p[1:] for p in pts if p[0] == target]
    for a, b in zip(pts, pts[1:]):
        lo, hi = min(a[0], b[0]), max(a[0], b[0])
        if lo < target < hi:
            w = (target - a[0]) / (b[0] - a[0])
            hits.append(tuple(ya + w * (yb - ya) for ya, yb in zip(a[1:], b[1:])))
    return min(hits, key=lambda h: h[0]) if hits else None
