"""Long-range consistency probes (docs/evaluation.md has the protocol).

1. :func:`synthetic_probe`: exact consistency of later mentions against the facts
   a synthetic opening introduced, by distance in words (the story checker).
2. :func:`entity_persistence`: on real stories, the share of name mentions in a
   continuation that belong to the opening's characters, and the share of name
   mentions in its second half that are new names.
3. :func:`cloze_accuracy`: the share of stories whose true final sentence is
   scored better (lower nats/token given the rest) than another story's ending.
4. :func:`coherence_curve`: cosine similarity of sentence embeddings of word
   windows at distance d, normalised between shuffled windows (0) and real text (1).

A probe that has nothing to measure raises :class:`~latentlm.errors.DataError`
with the reason, which the harness reports as a skip (never a silent zero).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from latentlm.data.synthetic import check_story, split_sentences
from latentlm.errors import DataError

DISTANCE_BINS = (0, 16, 32, 64, 128, 10**9)  # words between a fact's introduction and its mention


def _bin_label(lo: int, hi: int) -> str:
    return f"{lo}+" if hi >= 10**9 else f"{lo}-{hi - 1}"


# --------------------------------------------------------------------------- 1. synthetic probe


@dataclass
class ProbeResult:
    well_formed: float  # share of well-formed continuation sentences
    consistent: float  # share of consistent later mentions
    by_distance: dict[str, tuple[float, int]]  # distance bin -> (accuracy, mentions)
    per_story: list[tuple[int, int, int, int]]  # (well-formed, sentences, consistent, mentions) for bootstrap


def synthetic_probe(prompts: Sequence[str], texts: Sequence[str]) -> ProbeResult:
    """Check continuations (``texts`` = prompt + continuation) of synthetic openings."""
    per_story = []
    bins: dict[str, list[int]] = {_bin_label(lo, hi): [0, 0] for lo, hi in zip(DISTANCE_BINS, DISTANCE_BINS[1:])}
    for prompt, text in zip(prompts, texts):
        check = check_story(text)
        skip = len(split_sentences(prompt))
        sents = check.sentences[skip:]
        mentions = [m for m in check.mentions if m.sentence >= skip]
        per_story.append((sum(s.well_formed for s in sents), len(sents), sum(m.consistent for m in mentions),
                          len(mentions)))
        for m in mentions:
            for lo, hi in zip(DISTANCE_BINS, DISTANCE_BINS[1:]):
                if lo <= m.distance < hi:
                    b = bins[_bin_label(lo, hi)]
                    b[0] += m.consistent
                    b[1] += 1
    wf, ns, cons, nm = (sum(x[i] for x in per_story) for i in range(4))
    if ns == 0:
        raise DataError("synthetic probe: the continuations contain no sentence to check")
    return ProbeResult(wf / ns, cons / nm if nm else float("nan"),
                       {k: (c / n if n else float("nan"), n) for k, (c, n) in bins.items()}, per_story)


# --------------------------------------------------------------------------- 2. entity persistence

_NAMED = re.compile(r"\bnamed ([a-z]+)")
_WORD = re.compile(r"[a-z]+")


def name_lexicon(corpus: Sequence[str], min_count: int = 2) -> set[str]:
    """Character names of a lower-cased corpus: words that follow "named" at least ``min_count`` times."""
    counts = Counter(m for t in corpus for m in _NAMED.findall(t.lower()))
    return {w for w, c in counts.items() if c >= min_count}


@dataclass
class PersistenceResult:
    known_share: float  # name mentions in the continuation that are the opening's characters
    new_name_rate: float  # name mentions in the second half that are names not seen before
    n_mentions: int
    per_story: list[tuple[int, int, int, int]]  # (known, mentions, new in 2nd half, mentions in 2nd half)


def entity_persistence(openings: Sequence[str], continuations: Sequence[str], names: set[str]) -> PersistenceResult:
    """Name mentions of the continuations against the characters of their openings."""
    if not names:
        raise DataError("entity persistence: the name lexicon is empty (no 'named X' in the training texts)")
    per_story = []
    for opening, cont in zip(openings, continuations):
        cast = {w for w in _WORD.findall(opening.lower()) if w in names}
        if not cast:
            continue
        mentions = [w for w in _WORD.findall(cont.lower()) if w in names]
        half = len(mentions) // 2
        seen = cast | set(mentions[:half])
        second = mentions[half:]
        per_story.append((sum(w in cast for w in mentions), len(mentions), sum(w not in seen for w in second),
                          len(second)))
    known, n, new, n2 = (sum(x[i] for x in per_story) for i in range(4))
    if not per_story:
        raise DataError("entity persistence: no opening introduces a character from the name lexicon")
    if n == 0:
        raise DataError("entity persistence: the continuations mention no character name")
    return PersistenceResult(known / n, new / n2 if n2 else 0.0, n, per_story)


# --------------------------------------------------------------------------- 3. cloze discrimination

ScoreFn = Callable[[str, list[str]], list[float]]  # (context, endings) -> nats/token of each ending


def cloze_items(stories: Sequence[str], n: int, seed: int = 0, min_sentences: int = 3) -> list[tuple[str, str, str]]:
    """(context, true ending, distractor ending) for up to ``n`` stories of at least ``min_sentences``
    sentences; the distractor is the final sentence of another story (a seeded derangement)."""
    usable = [split_sentences(s) for s in stories]
    usable = [s for s in usable if len(s) >= min_sentences]
    if len(usable) < 2:
        raise DataError(f"cloze: need at least 2 stories of {min_sentences}+ sentences, found {len(usable)}")
    rng = random.Random(seed)
    usable = rng.sample(usable, min(n, len(usable)))
    shift = rng.randrange(1, len(usable))
    items = []
    for i, sents in enumerate(usable):
        other = usable[(i + shift) % len(usable)][-1]
        if other != sents[-1]:
            items.append((" ".join(sents[:-1]), sents[-1], other))
    return items


def cloze_accuracy(items: Sequence[tuple[str, str, str]], score: ScoreFn) -> list[bool]:
    """Per item: does the true ending get fewer nats/token than the distractor (both given the context)?"""
    return [(lambda s: s[0] < s[1])(score(ctx, [true, false])) for ctx, true, false in items]


# --------------------------------------------------------------------------- 4. segment coherence


def windows(text: str, size: int) -> list[str]:
    w = text.split()
    return [" ".join(w[i : i + size]) for i in range(0, len(w) - size + 1, size)]


def window_similarity(texts: Sequence[str], size: int, distances: Sequence[int], embed) -> dict[int, float]:
    """Mean cosine similarity of windows i and i + d within each text, per distance d."""
    segs = [windows(t, size) for t in texts]
    flat = [w for s in segs for w in s]
    if not flat:
        raise DataError(f"coherence: no text has {size} words")
    emb = embed(flat)
    out, start = {d: [] for d in distances}, 0
    for s in segs:
        e = emb[start : start + len(s)]
        start += len(s)
        for d in distances:
            if len(s) > d:
                out[d].extend((e[:-d] * e[d:]).sum(-1).tolist())
    return {d: float(np.mean(v)) for d, v in out.items() if v}


def shuffled_similarity(texts: Sequence[str], size: int, embed, seed: int = 0, pairs: int = 2000) -> float:
    """Mean cosine similarity of windows taken from two different texts (the 0 of the scale)."""
    segs = [windows(t, size) for t in texts]
    owner = [i for i, s in enumerate(segs) for _ in s]
    if len(set(owner)) < 2:
        raise DataError(f"coherence: need two texts of {size}+ words for the shuffled baseline")
    emb = embed([w for s in segs for w in s])  # every window once; pairs index into it
    rng = random.Random(seed)
    sims = []
    while len(sims) < pairs:
        a, b = rng.randrange(len(owner)), rng.randrange(len(owner))
        if owner[a] != owner[b]:
            sims.append(float(emb[a] @ emb[b]))
    return float(np.mean(sims))


def coherence_curve(model_sim: dict[int, float], real_sim: dict[int, float], shuffled: float) -> dict[int, float]:
    """(model - shuffled) / (real - shuffled) per distance: 1 = as coherent as real text, 0 = unrelated windows.

    Distances at which real text is within MIN_COHERENCE_GAP of the shuffled baseline are left
    out (the ratio would only amplify noise); the report lists them as "-".
    """
    return {d: (model_sim[d] - shuffled) / (real_sim[d] - shuffled)
            for d in model_sim if d in real_sim and real_sim[d] - shuffled > MIN_COHERENCE_GAP}


MIN_COHERENCE_GAP = 0.02  # distances where real text is not clearly above shuffled windows are left out
