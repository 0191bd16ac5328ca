"""Sanity samplers: trivial "models" run through every metric of the report.

A metric on which one of them beats real text can be gamed, and the report
marks it "hackable" (docs/evaluation.md). All work on words (whitespace
tokens) fitted on the training texts; each continues an opening with about
``n_words`` words.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence

from latentlm.data.synthetic import split_sentences
from latentlm.errors import DataError


class SanitySampler:
    name = "base"

    def continue_(self, prompt: str, n_words: int, rng: random.Random) -> str:
        raise NotImplementedError

    def generate(self, prompts: Sequence[str], n_words: int, seed: int = 0) -> list[str]:
        """Continuations (without the prompt), one per prompt."""
        rng = random.Random(seed)
        return [self.continue_(p, n_words, rng) for p in prompts]


class UnigramSampler(SanitySampler):
    """Independent words from the training unigram distribution."""

    name = "sanity: unigram"

    def __init__(self, corpus: Sequence[str]) -> None:
        counts = Counter(w for t in corpus for w in t.split())
        if not counts:
            raise DataError("sanity samplers need a non-empty training corpus")
        self.words, self.weights = zip(*counts.items())

    def continue_(self, prompt, n_words, rng):
        return " ".join(rng.choices(self.words, self.weights, k=n_words))


class BigramSampler(SanitySampler):
    """A word bigram model of the training texts, started from the prompt's last word."""

    name = "sanity: bigram"

    def __init__(self, corpus: Sequence[str]) -> None:
        self.next: dict[str, Counter] = defaultdict(Counter)
        for t in corpus:
            w = t.split()
            for a, b in zip(w, w[1:]):
                self.next[a][b] += 1
        self.unigram = UnigramSampler(corpus)

    def continue_(self, prompt, n_words, rng):
        prev = prompt.split()[-1] if prompt.split() else ""
        out = []
        for _ in range(n_words):
            nxt = self.next.get(prev)
            prev = (rng.choices(list(nxt), list(nxt.values()))[0] if nxt
                    else rng.choices(self.unigram.words, self.unigram.weights)[0])
            out.append(prev)
        return " ".join(out)


class CopyTrainingSampler(SanitySampler):
    """The first words of a random training story, whatever the prompt (memorisation)."""

    name = "sanity: copy train"

    def __init__(self, corpus: Sequence[str]) -> None:
        self.corpus = [t for t in corpus if t.split()]
        if not self.corpus:
            raise DataError("sanity samplers need a non-empty training corpus")

    def continue_(self, prompt, n_words, rng):
        return " ".join(rng.choice(self.corpus).split()[:n_words])


class RepeatSentenceSampler(SanitySampler):
    """The prompt's last sentence, repeated (repetition; trivially consistent)."""

    name = "sanity: repeat"

    def continue_(self, prompt, n_words, rng):
        sents = split_sentences(prompt) or ["the end."]
        w = sents[-1].split()
        return " ".join((w * (n_words // max(len(w), 1) + 1))[:n_words])


def sanity_samplers(corpus: Sequence[str]) -> list[SanitySampler]:
    return [UnigramSampler(corpus), BigramSampler(corpus), CopyTrainingSampler(corpus), RepeatSentenceSampler()]
