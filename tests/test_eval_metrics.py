"""Every metric of the report on inputs whose answer is known."""

import json
import math
import random

import numpy as np
import pytest

from latentlm.data.synthetic import corrupt_story, generate_stories
from latentlm.errors import DataError, InputError
from latentlm.eval import consistency as cons
from latentlm.eval import metrics as M
from latentlm.eval.compare import REAL, _hackable
from latentlm.eval.sanity import sanity_samplers

from .conftest import shared_file


def test_entropy_of_a_uniform_sample():
    assert M.unigram_entropy(["a b c d", "e f g h"]) == pytest.approx(3.0)
    assert M.unigram_entropy(["a a a a"]) == 0.0
    assert M.unigram_entropy([]) == 0.0


def test_distinct_and_rep_of_repeated_strings():
    text = " ".join(["the cat"] * 10)  # 20 words, 19 bigrams of which 2 distinct
    assert M.distinct_n([text], 2) == pytest.approx(2 / 19)
    assert M.distinct_n(["a b c d e"], 2) == 1.0
    assert M.rep_n(["a b c d a b c d"], 4) == pytest.approx(1 / 5)  # abcd bcda cdab dabc abcd
    assert M.rep_n(["a b c d e f"], 4) == 0.0


def test_self_bleu_bounds():
    same = ["the little dog ran to the park and played all day"] * 4
    assert M.self_bleu(same) == pytest.approx(100.0)
    disjoint = [" ".join(f"w{i}_{j}" for j in range(12)) for i in range(4)]
    assert M.self_bleu(disjoint) < 10.0  # sacrebleu's default exp smoothing keeps it above 0
    with pytest.raises(InputError):
        M.self_bleu(["only one"])


def test_memorisation_counts_training_ngrams():
    corpus = ["one two three four five six seven eight nine ten"]
    index = M.NgramIndex(corpus, 8)
    assert index.memorised(corpus) == 1.0
    assert index.memorised(["one two three four five six seven nine ten eleven"]) == 0.0
    assert index.memorised(["short text"]) == 0.0  # no 8-gram at all


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    xs = [float(i % 7) for i in range(200)]
    lo, hi = M.bootstrap_ci(xs, lambda v: sum(v) / len(v), n_boot=300)
    assert lo < sum(xs) / len(xs) < hi
    assert (lo, hi) == M.bootstrap_ci(xs, lambda v: sum(v) / len(v), n_boot=300)
    with pytest.raises(InputError):
        M.bootstrap_ci([], len)


def test_mauve_separates_distributions():
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(100, 8)), rng.normal(size=(100, 8))
    far = rng.normal(loc=5.0, size=(100, 8))
    assert M.mauve_score(p, q) > 0.9
    assert M.mauve_score(p, far) < 0.1
    with pytest.raises(InputError):
        M.mauve_score(p[:5], q)


def test_mauve_interval_half_samples_openings_with_the_known_spread_of_a_mean(monkeypatch):
    """With MAUVE replaced by a statistic whose sampling spread is known (the mean of 400 openings'
    values, sd 0.05: a 95% interval of +-1.96 x 0.05 / 20), the interval has that width around the full-sample
    value; model rows and real rows of the same openings are drawn together, each side alone when their
    openings differ, and no opening twice."""
    rng = np.random.default_rng(0)
    g = 400
    effect = 0.5 + 0.05 * rng.normal(size=g)  # inside [0, 1], as MAUVE
    groups = [i % g for i in range(2 * g)]  # two samples per opening, as seeds x openings
    p = np.stack([effect[groups] + 0.0005 * rng.normal(size=2 * g), np.array(groups, float)], 1)
    q = np.stack([effect, np.arange(g, dtype=float)], 1)
    paired = []

    def mean_of_p(pf, qf, seed=0):
        paired.append(sorted(set(pf[:, 1])) == sorted(set(qf[:, 1])))
        assert len(set(qf[:, 1])) == len(qf)  # without replacement
        return float(pf[:, 0].mean())

    monkeypatch.setattr(M, "mauve_score", mean_of_p)
    lo, hi = M.mauve_interval(p, q, groups, range(g), n_boot=400, seed=1)
    assert lo < effect.mean() < hi
    assert 0.85 * 1.96 * 0.05 / 20 < (hi - lo) / 2 < 1.15 * 1.96 * 0.05 / 20, (lo, hi)
    shifted = M.mauve_interval(p, q, groups, range(g), n_boot=400, seed=1, point=float(p[:, 0].mean()) + 0.1)
    assert shifted == pytest.approx((lo + 0.1, hi + 0.1))  # the spread, placed around the given score
    assert all(paired)
    paired.clear()
    M.mauve_interval(p, q, groups, [g + i for i in range(g)], n_boot=20, point=0.5)  # other openings: drawn apart
    assert not any(paired)
    with pytest.raises(InputError, match="one group id per feature row"):
        M.mauve_interval(p, q, groups[:-1], range(g))
    with pytest.raises(InputError, match="at least 10"):
        M.mauve_interval(p, q, groups, range(g), n_boot=5)
    with pytest.raises(InputError, match="20"):
        M.mauve_interval(p[:20], q[:10], groups[:20], range(10))


def test_a_corpus_statistic_has_its_interval_around_the_pooled_value():
    """Word entropy grows with the sample (more of a Zipf vocabulary is seen): each seed's half of the
    texts scores below the pooled texts, so the range over seeds misses the value it reports; the
    half-samples' spread, placed around the pooled value, brackets it and narrows with more openings."""
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(3000)]
    zipf = 1 / np.arange(1, 3001)
    zipf /= zipf.sum()

    def texts(n_openings: int) -> list[str]:
        return [" ".join(rng.choice(vocab, 30, p=zipf)) for _ in range(2 * n_openings)]  # seeds x openings

    c = texts(100)
    pooled = M.unigram_entropy(c)
    per_seed = [M.unigram_entropy(c[:100]), M.unigram_entropy(c[100:])]
    assert max(per_seed) < pooled  # the bias a range over seeds reports
    lo, hi = M.corpus_interval(c, [i % 100 for i in range(200)], M.unigram_entropy, n_boot=50)
    assert lo < pooled < hi
    wide = hi - lo
    c4 = texts(400)
    lo, hi = M.corpus_interval(c4, [i % 400 for i in range(800)], M.unigram_entropy, n_boot=50)
    assert lo < M.unigram_entropy(c4) < hi and hi - lo < 0.75 * wide
    with pytest.raises(InputError, match="one group id per text"):
        M.corpus_interval(c, [0], M.unigram_entropy)
    with pytest.raises(InputError, match="20"):
        M.corpus_interval(c[:20], list(range(10)) * 2, M.unigram_entropy)


def test_mauve_interval_brackets_the_score():
    rng = np.random.default_rng(0)
    p, q, far = rng.normal(size=(120, 8)), rng.normal(size=(60, 8)), rng.normal(loc=5.0, size=(120, 8))
    groups = [i % 60 for i in range(120)]
    lo, hi = M.mauve_interval(p, q, groups, range(60), n_boot=10)
    assert 0.5 < lo <= M.mauve_score(p, q) <= hi <= 1.0
    lo, hi = M.mauve_interval(far, q, groups, range(60), n_boot=10)
    assert hi < 0.1


@pytest.mark.parametrize("points, target, expected", [
    ([(7.0, 10.0), (8.0, 20.0), (9.0, 40.0)], 8.5, (30.0,)),  # crossing: interpolated in its segment
    ([(9.0, 40.0), (8.0, 20.0)], 8.25, (25.0,)),  # a falling curve crosses the same way
    ([(6.0, 5.0), (6.5, 8.0)], 8.8, None),  # never reaches the target
    ([(9.5, 50.0), (9.2, 45.0)], 8.8, None),  # above it everywhere
    ([(7.0, 30.0), (9.0, 50.0), (8.0, 10.0), (10.0, 30.0)], 8.5, (15.0,)),  # non-monotone: three
    # crossings (45, 30, 15): the lowest perplexity
    ([(8.8, 12.0)], 8.8, (12.0,)),  # a point on the target
    ([(7.0, 10.0, 0.2), (9.0, 30.0, 0.6)], 8.0, (20.0, 0.4)),  # every coordinate is interpolated
])
def test_value_at_matched_entropy(points, target, expected):
    hit = M.value_at(points, target)
    assert hit == (None if expected is None else pytest.approx(expected))


def test_value_at_rejects_ragged_points():
    with pytest.raises(InputError):
        M.value_at([(1.0, 2.0), (1.0,)], 1.0)


def test_synthetic_probe_true_and_corrupted_continuations():
    stories = generate_stories(60, seed=5)
    prompts = [s.split()[0] for s in stories]
    clean = cons.synthetic_probe(prompts, [s.text for s in stories])
    assert clean.well_formed == 1.0 and clean.consistent == 1.0
    assert sum(n for _, n in clean.by_distance.values()) == sum(x[3] for x in clean.per_story)
    rng = random.Random(0)
    bad = [corrupt_story(s, "colour", rng).text if any("colour" in x.slots for x in s.sentences[s.n_intro:])
           else s.text for s in stories]
    assert cons.synthetic_probe(prompts, bad).consistent < 1.0
    with pytest.raises(DataError):
        cons.synthetic_probe(["a."], ["a."])  # nothing after the prompt


def test_entity_persistence_on_real_and_renamed_continuations():
    openings = ["once upon a time there was a girl named lily.", "a boy named tom had a dog."]
    names = {"lily", "tom", "max", "sue"}
    real = cons.entity_persistence(openings, ["lily smiled. lily ran home.", "tom and his dog played. tom ate."],
                                   names)
    assert real.known_share == 1.0 and real.new_name_rate == 0.0
    swapped = cons.entity_persistence(openings, ["max smiled. sue ran.", "sue played. max ate."], names)
    assert swapped.known_share == 0.0 and swapped.new_name_rate > 0
    assert cons.name_lexicon(["a girl named lily", "a girl named lily", "a dog named rex"]) == {"lily"}
    with pytest.raises(DataError, match="lexicon is empty"):
        cons.entity_persistence(openings, ["x"], set())
    with pytest.raises(DataError, match="no opening"):
        cons.entity_persistence(["the sun was warm."], ["lily ran."], names)


def test_cloze_accuracy_of_an_oracle_and_of_a_coin():
    stories = [s.text for s in generate_stories(80, seed=3)]
    items = cons.cloze_items(stories, 50, seed=0)
    truth = {(ctx, true) for ctx, true, _ in items}
    oracle = cons.cloze_accuracy(items, lambda ctx, ends: [0.0 if (ctx, e) in truth else 1.0 for e in ends])
    assert sum(oracle) / len(oracle) == 1.0
    rng = random.Random(0)
    coin = cons.cloze_accuracy(items, lambda ctx, ends: [rng.random() for _ in ends])
    assert 0.2 < sum(coin) / len(coin) < 0.8
    with pytest.raises(DataError):
        cons.cloze_items(["one. two."], 5)


@pytest.mark.slow
def test_coherence_is_one_on_real_text_and_about_zero_on_shuffled_windows():
    path = shared_file("tinystories", "valid.jsonl")
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines()][:60]
    size = 12
    real_sim = cons.window_similarity(texts, size, [1, 2], M.sentence_embeddings)
    shuffled = cons.shuffled_similarity(texts, size, M.sentence_embeddings, pairs=400)
    assert cons.coherence_curve(real_sim, real_sim, shuffled) == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}
    # texts made of windows of different stories
    wins = [cons.windows(t, size) for t in texts]
    rng = random.Random(1)
    mixed = [" ".join(rng.choice(wins[rng.randrange(len(wins))] or ["x"]) for _ in range(6)) for _ in texts]
    mixed_sim = cons.window_similarity(mixed, size, [1, 2], M.sentence_embeddings)
    curve = cons.coherence_curve(mixed_sim, real_sim, shuffled)
    assert all(abs(v) < 0.25 for v in curve.values()), curve


def test_sanity_samplers_are_seeded_and_sized():
    corpus = [s.text for s in generate_stories(50)]
    prompts = ["lily had a red kite.", "tom smiled."]
    for s in sanity_samplers(corpus):
        a, b = s.generate(prompts, 20, seed=1), s.generate(prompts, 20, seed=1)
        assert a == b and all(len(x.split()) == 20 for x in a), s.name
    with pytest.raises(DataError):
        sanity_samplers([])


def test_hackable_flags_a_sanity_sampler_that_beats_real_text():
    rows = {REAL: {"rep4": 0.01, "mauve": 0.9}, "sanity: unigram": {"rep4": 0.0, "mauve": 0.1},
            "model": {"rep4": 0.0, "mauve": 0.95}}
    assert _hackable(rows) == {"rep4": ["sanity: unigram"]}
    assert math.isclose(M.unigram_entropy(["x y"]), 1.0)


def test_speed_rows_say_how_many_tokens_a_sample_that_ended_early_made():
    """A generator that stops at end-of-text returns fewer tokens than asked; its latency is not the
    asked length's, and the speed row says so (``tokens_made``)."""
    import torch

    from latentlm.eval.speed import measure_speed, speed_table
    from latentlm.outputs import GenerationOutput

    class Tok:
        pad_token_id, eos_token_id = 0, 1

    class EndsAtTen:
        tokenizer = Tok()

        def generate(self, prompts, n, generator=None, **kw):
            made = min(n, 10)
            seq = torch.cat([torch.full((len(prompts), made), 5), torch.zeros(len(prompts), n - made, dtype=torch.long)], 1)
            return GenerationOutput(texts=list(prompts), continuations=[""] * len(prompts), nfe=made, sequences=seq)

    rows = measure_speed(EndsAtTen(), "early", "a prompt", [8, 64], batch=2)
    assert [r.tokens_made for r in rows] == [8, 10]
    assert "| early | 64 | 10 |" in speed_table(rows, reference="early")
