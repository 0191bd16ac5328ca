"""Synthetic stories with known facts: the built-in corpus and the exact consistency probe.

A story introduces a cast of 1-3 named characters, each with fixed facts
(kind, pronoun, a possession with a colour, a place), then refers back to those
facts in later sentences, with neutral filler sentences in between whose number
controls the distance between a fact and its mention.

Every sentence comes from a small grammar (:data:`TEMPLATES`), so
:func:`check_story` can parse any text, decide per sentence whether it is
well-formed, and decide per later mention whether it agrees with what the story
introduced, with the distance in words (whitespace tokens).

Example::

    once upon a time there was a girl named lily, and she was very kind.
    lily lived near the river and had a red kite. the sun was warm.
    lily played with her red kite.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from latentlm.errors import InputError
from latentlm.files import write_text_atomic

NAMES = (
    "lily tom anna ben sara max mia leo emma jack zoe sam lucy finn ella noah ruby owen "
    "nora luke ivy eli rosa adam kate hugo jane omar tess dan nina paul amy carl beth "
    "ian lena mark dora ned fay rex gus olive pete rita seth una vic wendy yuri zack"
).split()
PEOPLE = {"girl": "she", "boy": "he"}
ANIMALS = "cat dog rabbit bird fox bear mouse duck frog owl".split()
KINDS = list(PEOPLE) + ANIMALS
COLOURS = "red blue green yellow purple pink brown white black gray".split()
OBJECTS = "ball kite hat box book cup boat drum bike doll bag scarf".split()
PLACES = "river forest hill park farm beach garden lake village meadow pond castle".split()
TRAITS = "kind brave happy shy funny clever gentle curious".split()
POSSESSIVE = {"she": "her", "he": "his"}
PRONOUNS = tuple(POSSESSIVE)

VOCAB: dict[str, list[str]] = {
    "name": NAMES,
    "kind": KINDS,
    "pronoun": list(PRONOUNS),
    "poss": list(POSSESSIVE.values()),
    "colour": COLOURS,
    "object": OBJECTS,
    "place": PLACES,
    "trait": TRAITS,
}
# Which fact a slot states about the sentence's character (slots not listed state none).
SLOT_FACT = {"kind": "kind", "pronoun": "pronoun", "poss": "pronoun", "colour": "colour",
             "object": "object", "place": "place"}
FACTS = ("kind", "pronoun", "colour", "object", "place")

# role -> templates. "intro" sentences introduce facts; "reference" sentences
# mention them later; "filler" sentences carry no fact (some name a character).
TEMPLATES: dict[str, list[str]] = {
    "intro_first": ["once upon a time there was a {kind} named {name}, and {pronoun} was very {trait}."],
    "intro_more": ["there was also a {kind} named {name}, and {pronoun} was very {trait}."],
    "intro_details": ["{name} lived near the {place} and had a {colour} {object}."],
    "reference": [
        "{name} played with {poss} {colour} {object}.",
        "{name} walked back to the {place}.",
        "everyone knew that {name} was a {trait} {kind}.",
        "{name} felt tired, so {pronoun} sat down to rest.",
        "the {colour} {object} belonged to {name}.",
        "{name} could see the {place} from far away.",
        "{name} held {poss} {object} close.",
        "{name} showed {poss} {object} to a friend near the {place}.",
    ],
    "filler": [
        "the sun was warm.",
        "a little bird sang in a tree.",
        "the wind was soft and cool.",
        "the sky was clear and bright.",
        "it was a quiet day.",
        "the flowers smelled sweet.",
        "a small cloud moved across the sky.",
        "the grass was wet from the rain.",
        "{name} smiled.",
        "{name} looked around.",
        "{name} laughed at a funny thought.",
        "then it was time for lunch.",
    ],
}
ROLE_OF = {t: role for role, ts in TEMPLATES.items() for t in ts}


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w+\})", template)
    regex = "".join(
        f"(?P<{p[1:-1]}>{'|'.join(VOCAB[p[1:-1]])})" if p.startswith("{") else re.escape(p)
        for p in parts
    )
    return re.compile(rf"^{regex}$")


PATTERNS = [(t, _compile(t)) for t in ROLE_OF]


# --------------------------------------------------------------------------- generation


@dataclass
class Character:
    name: str
    kind: str
    pronoun: str
    colour: str
    object: str
    place: str
    trait: str

    def slots(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "pronoun": self.pronoun,
                "poss": POSSESSIVE[self.pronoun], "colour": self.colour, "object": self.object,
                "place": self.place, "trait": self.trait}


@dataclass
class Sentence:
    template: str
    slots: dict[str, str]

    @property
    def role(self) -> str:
        return ROLE_OF[self.template]

    def render(self) -> str:
        return self.template.format(**self.slots)


@dataclass
class SyntheticStory:
    """A generated story: its sentences (template + slot values) and cast."""

    sentences: list[Sentence]
    cast: list[Character]
    seed: int = 0
    n_intro: int = field(default=0)

    @property
    def text(self) -> str:
        return " ".join(s.render() for s in self.sentences)

    def split(self) -> tuple[str, str]:
        """(opening that introduces every character, the rest of the story)."""
        head = " ".join(s.render() for s in self.sentences[: self.n_intro])
        tail = " ".join(s.render() for s in self.sentences[self.n_intro :])
        return head, tail


def _new_character(rng: random.Random, taken: set[str]) -> Character:
    name = rng.choice([n for n in NAMES if n not in taken])
    kind = rng.choice(KINDS)
    pronoun = PEOPLE.get(kind) or rng.choice(PRONOUNS)
    return Character(name, kind, pronoun, rng.choice(COLOURS), rng.choice(OBJECTS),
                     rng.choice(PLACES), rng.choice(TRAITS))


def generate_story(
    seed: int,
    *,
    min_sentences: int = 5,
    max_sentences: int = 15,
    max_characters: int = 3,
    min_gap: int = 0,
    max_gap: int = 2,
) -> SyntheticStory:
    """Generate one story from ``seed``.

    Args:
        min_sentences, max_sentences: story length in sentences (5-15 by default).
        max_characters: the cast has 1 to ``max_characters`` characters.
        min_gap, max_gap: neutral filler sentences inserted before each
            reference sentence: the knob for mention distance.
    """
    if not 1 <= max_characters <= 3:
        raise InputError(f"max_characters must be 1, 2 or 3, got {max_characters}")
    if not 0 <= min_gap <= max_gap:
        raise InputError(f"need 0 <= min_gap <= max_gap, got {min_gap}, {max_gap}")
    if not 3 <= min_sentences <= max_sentences:
        raise InputError(f"need 3 <= min_sentences <= max_sentences, got {min_sentences}, {max_sentences}")
    rng = random.Random(seed)
    n_chars = rng.randint(1, min(max_characters, (max_sentences - 1) // 2))
    cast: list[Character] = []
    for _ in range(n_chars):
        cast.append(_new_character(rng, {c.name for c in cast}))
    sentences: list[Sentence] = []
    for i, c in enumerate(cast):
        role = "intro_first" if i == 0 else "intro_more"
        sentences.append(Sentence(TEMPLATES[role][0], c.slots()))
        sentences.append(Sentence(TEMPLATES["intro_details"][0], c.slots()))
    n_intro = len(sentences)
    target = rng.randint(max(min_sentences, n_intro + 1), max_sentences)
    while len(sentences) < target:
        for _ in range(rng.randint(min_gap, max_gap)):
            if len(sentences) >= target - 1:
                break
            sentences.append(Sentence(rng.choice(TEMPLATES["filler"]), rng.choice(cast).slots()))
        sentences.append(Sentence(rng.choice(TEMPLATES["reference"]), rng.choice(cast).slots()))
    for s in sentences:  # keep only the slots each template uses
        s.slots = {k: v for k, v in s.slots.items() if "{" + k + "}" in s.template}
    return SyntheticStory(sentences, cast, seed, n_intro)


def generate_stories(n: int, seed: int = 0, **kwargs) -> list[SyntheticStory]:
    """``n`` stories; story ``i`` is ``generate_story(seed * 1_000_003 + i)``."""
    if n < 0:
        raise InputError(f"n must be non-negative, got {n}")
    return [generate_story(seed * 1_000_003 + i, **kwargs) for i in range(n)]


def write_jsonl(stories: list[SyntheticStory], path: str | Path) -> Path:
    """Write stories as ``{"id", "text"}`` lines (the format of every corpus here)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, "".join(json.dumps({"id": f"synthetic-{s.seed}", "text": s.text}) + "\n"
                                           for s in stories))


# --------------------------------------------------------------------------- corruption


def corrupt_story(story: SyntheticStory, kind: str, rng: random.Random) -> SyntheticStory:
    """A copy of ``story`` with one contradiction injected into one reference sentence.

    ``kind`` is ``"name"`` (the character becomes one never introduced),
    ``"colour"`` (a different colour) or ``"pronoun"`` (the other pronoun).
    """
    slot_of = {"name": ["name"], "colour": ["colour"], "pronoun": ["pronoun", "poss"]}
    if kind not in slot_of:
        raise InputError(f"kind must be one of {list(slot_of)}, got {kind!r}")
    candidates = [
        i for i, s in enumerate(story.sentences)
        if s.role == "reference" and any(k in s.slots for k in slot_of[kind])
    ]
    if not candidates:
        raise InputError(f"story {story.seed} has no reference sentence with a {kind}")
    i = rng.choice(candidates)
    s = story.sentences[i]
    slots = dict(s.slots)
    if kind == "name":
        cast = {c.name for c in story.cast}
        slots["name"] = rng.choice([n for n in NAMES if n not in cast])
    elif kind == "colour":
        slots["colour"] = rng.choice([c for c in COLOURS if c != slots["colour"]])
    elif "pronoun" in slots:
        slots["pronoun"] = "he" if slots["pronoun"] == "she" else "she"
    else:
        slots["poss"] = "his" if slots["poss"] == "her" else "her"
    sentences = list(story.sentences)
    sentences[i] = Sentence(s.template, slots)
    return SyntheticStory(sentences, story.cast, story.seed, story.n_intro)


# --------------------------------------------------------------------------- checking


@dataclass
class SentenceCheck:
    text: str
    well_formed: bool
    role: str | None  # template role, None when not well-formed


@dataclass
class MentionCheck:
    """One later mention of a fact: what the story introduced and what the mention says."""

    sentence: int  # index of the mentioning sentence
    character: str
    fact: str  # "character" (the name was introduced) or one of FACTS
    expected: str | None
    found: str
    consistent: bool
    distance: int  # words between the introduction and the mention


@dataclass
class StoryCheck:
    sentences: list[SentenceCheck]
    mentions: list[MentionCheck]

    @property
    def well_formed_rate(self) -> float:
        return sum(s.well_formed for s in self.sentences) / max(1, len(self.sentences))

    @property
    def consistency_rate(self) -> float:
        """Share of consistent mentions (1.0 when there is no mention)."""
        return sum(m.consistent for m in self.mentions) / len(self.mentions) if self.mentions else 1.0

    @property
    def ok(self) -> bool:
        return all(s.well_formed for s in self.sentences) and all(m.consistent for m in self.mentions)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split after ``.``, ``!`` or ``?`` followed by white space."""
    return [s for s in (p.strip() for p in re.split(r"(?<=[.!?])\s+", text.strip())) if s]


def _parse(sentence: str) -> tuple[str, dict[str, str]] | None:
    for template, pattern in PATTERNS:
        m = pattern.match(sentence)
        if m:
            return template, m.groupdict()
    return None


def check_story(text: str) -> StoryCheck:
    """Check ``text`` against the synthetic grammar and the facts it introduces.

    A sentence is well-formed when it matches one template with in-vocabulary
    words. An intro sentence of a new name introduces that name's facts; every
    other statement of a fact about a name (references, fillers naming a
    character, re-introductions) is a mention, consistent when it agrees with
    the introduced value. A mention of a name never introduced is inconsistent.
    """
    known: dict[str, dict[str, tuple[str, int]]] = {}  # name -> fact -> (value, word offset)
    sentences: list[SentenceCheck] = []
    mentions: list[MentionCheck] = []
    offset = 0
    for idx, sent in enumerate(split_sentences(text)):
        parsed = _parse(sent)
        sentences.append(SentenceCheck(sent, parsed is not None, ROLE_OF[parsed[0]] if parsed else None))
        if parsed:
            template, slots = parsed
            role = ROLE_OF[template]
            name = slots.get("name")
            if name is not None:
                facts = {SLOT_FACT[k]: (v if k != "poss" else {"her": "she", "his": "he"}[v])
                         for k, v in slots.items() if k in SLOT_FACT}
                introducing = role.startswith("intro") and (
                    name not in known or (role == "intro_details" and "place" not in known[name])
                )
                if introducing:
                    entry = known.setdefault(name, {"character": (name, offset)})
                    for fact, value in facts.items():
                        entry.setdefault(fact, (value, offset))
                elif name not in known:
                    mentions.append(MentionCheck(idx, name, "character", None, name, False, 0))
                else:
                    entry = known[name]
                    intro_at = entry["character"][1]
                    if not facts:
                        mentions.append(MentionCheck(idx, name, "character", name, name, True, offset - intro_at))
                    for fact, value in facts.items():
                        expected, at = entry.get(fact, (None, offset))
                        mentions.append(MentionCheck(idx, name, fact, expected, value,
                                                     expected == value, offset - at))
        offset += len(sent.split())
    return StoryCheck(sentences, mentions)
