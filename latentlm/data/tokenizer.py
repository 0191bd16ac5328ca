"""Byte-level BPE tokenizer trained with `tokenizers`, saved as a `PreTrainedTokenizerFast`.

Special tokens: ``<pad>`` (id 0), ``<eot>`` end of text (id 1), ``<mask>`` (id 2).
The byte-level model has no unknown token and ``decode(encode(x)) == x``
for any UTF-8 string (no normaliser, no prefix space, no clean-up).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from latentlm.choices import DEFAULT_VOCAB_SIZE
from latentlm.errors import CheckpointError, InputError

PAD, EOT, MASK = "<pad>", "<eot>", "<mask>"
SPECIAL_TOKENS = [PAD, EOT, MASK]


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, *, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it for transformers."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise InputError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a raw `tokenizers.Tokenizer` with our special tokens."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOT,
        mask_token=MASK,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer folder: one saved by :func:`train_tokenizer`, or any ``AutoTokenizer`` folder
    (e.g. a pretrained model's), to which the special tokens latentlm needs and it lacks are added
    (see :func:`complete_special_tokens`).

    Raises:
        CheckpointError: the folder is missing or its files are malformed.
    """
    path = Path(path)
    if not path.is_dir() or not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointError(f"{path} is not a tokenizer folder (none of {', '.join(TOKENIZER_FILES)})")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as e:  # malformed json and friends
        present = ", ".join(f for f in TOKENIZER_FILES if (path / f).is_file())
        raise CheckpointError(f"cannot load the tokenizer from {path} ({present}): {e}") from e
    return complete_special_tokens(tok, path)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def complete_special_tokens(tok, where: str | Path = "tokenizer"):
    """``tok`` with the padding, end-of-text and mask tokens latentlm relies on: those it lacks are added
    as new tokens (``<pad>``, ``<eot>``, ``<mask>``, after its vocabulary; a warning names them), so the
    tokenizer a run saves with its model has them. A tokenizer of :func:`train_tokenizer` has all three."""
    missing = {attr: name for attr, name in (("pad_token", PAD), ("eos_token", EOT), ("mask_token", MASK))
               if getattr(tok, f"{attr}_id", None) is None}
    if missing:
        tok.add_special_tokens(missing)
        warnings.warn(f"the tokenizer in {where} had no {', '.join(a.replace('_token', '') for a in missing)} token; "
                      f"added {', '.join(f'{n} (id {tok.convert_tokens_to_ids(n)})' for n in missing.values())}",
                      stacklevel=3)
    return tok


SENTENCE_END = (".", "!", "?", '."', '!"', '?"', "\n")


def sentence_end_ids(tok: PreTrainedTokenizerFast) -> list[int]:
    """Ids of the tokens that end a sentence: their text ends with ``.``, ``!`` or ``?`` (a closing quote
    allowed) or a newline. A split right after one leaves a prompt that ends at a sentence boundary."""
    special = set(tok.all_special_ids)
    return sorted(i for i in range(len(tok)) if i not in special
                  and tok.decode([i]).rstrip(" ").endswith(SENTENCE_END))
