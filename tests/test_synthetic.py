import random

import pytest

from latentlm.data.synthetic import (
    NAMES,
    VOCAB,
    check_story,
    corrupt_story,
    generate_stories,
    generate_story,
    split_sentences,
)
from latentlm.errors import InputError


def test_story_shape_and_vocabulary():
    words = set()
    for s in generate_stories(500, seed=7):
        n = len(split_sentences(s.text))
        assert 5 <= n <= 15
        assert 1 <= len(s.cast) <= 3
        words |= set(s.text.replace(".", " ").replace(",", " ").split())
    assert len(words) < 1000
    assert len(NAMES) >= 50


@pytest.mark.slow
def test_100k_distinct_stories():
    texts = {s.text for s in generate_stories(100_000, seed=0)}
    assert len(texts) == 100_000


def test_checker_accepts_every_generated_story():
    for s in generate_stories(2000, seed=3):
        check = check_story(s.text)
        assert check.ok, (s.text, check)
        assert check.mentions, "every story refers back to a fact"


def test_checker_flags_injected_contradictions():
    rng = random.Random(0)
    stories = generate_stories(1000, seed=11)
    flagged = 0
    for i, s in enumerate(stories):
        kind = ["name", "colour", "pronoun"][i % 3]
        try:
            bad = corrupt_story(s, kind, rng)
        except InputError:  # no reference sentence carrying that fact: swap the name instead
            bad = corrupt_story(s, "name", rng)
        flagged += not check_story(bad.text).ok
        assert check_story(s.text).ok  # no false alarm on the clean one
    assert flagged / len(stories) >= 0.99


def test_mentions_report_distance_and_disagreement():
    text = ("once upon a time there was a girl named lily, and she was very kind. "
            "lily lived near the river and had a red kite. the sun was warm. "
            "lily played with her blue kite.")
    check = check_story(text)
    colour = [m for m in check.mentions if m.fact == "colour"][0]
    assert (colour.expected, colour.found, colour.consistent) == ("red", "blue", False)
    assert colour.distance == len("lily lived near the river and had a red kite. the sun was warm.".split())
    assert [s.well_formed for s in check.sentences] == [True] * 4


def test_unknown_sentence_is_not_well_formed():
    check = check_story("once upon a time there was a girl named lily, and she was very kind. lily flew to mars.")
    assert [s.well_formed for s in check.sentences] == [True, False]
    assert check_story("").sentences == []


def test_distance_knob():
    near = generate_story(1, max_gap=0)
    far = generate_story(1, min_gap=3, max_gap=3, max_sentences=15)
    d_near = max(m.distance for m in check_story(near.text).mentions)
    d_far = min(m.distance for m in check_story(far.text).mentions if m.fact != "character")
    assert d_far > 0 and d_near >= 0
    assert all(w in VOCAB["colour"] for w in ["red", "blue"])


def test_bad_arguments():
    with pytest.raises(InputError):
        generate_story(0, max_characters=4)
    with pytest.raises(InputError):
        generate_story(0, min_gap=3, max_gap=1)
    with pytest.raises(InputError):
        corrupt_story(generate_story(0), "size", random.Random(0))
