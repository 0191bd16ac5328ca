"""The sizes of a ``compare`` report, importable without torch (the CLI's defaults come from here)."""

from __future__ import annotations

from dataclasses import dataclass

from latentlm.errors import InputError


@dataclass
class CompareConfig:
    """Sizes of every part of the report (defaults: the full report; quickstart shrinks them)."""

    prompts: int = 128
    max_new_tokens: int = 128
    # the real continuations, every model's reference, are cut to this many words whatever the models'
    # tokenizers (0: 3/4 of max_new_tokens, the usual words per BPE token of English; TinyStories with
    # the protocol's 4,096-token tokenizer: 0.78)
    reference_words: int = 0
    seeds: int = 1
    prompt_sentences: int = 2  # opening of a real story (synthetic stories: their introductions)
    nll_texts: int = 128
    nll_samples: int = 8  # Monte Carlo samples per text for the diffusion bounds
    cloze_items: int = 64
    nfe_sweep: tuple[int, ...] = (8, 16, 32, 64)
    sweep_prompts: int = 32
    speed_lengths: tuple[int, ...] = (128, 256, 512, 1024)
    speed_batch: int = 16
    window: int = 16  # words per coherence window
    distances: tuple[int, ...] = (1, 2, 4)
    mauve: bool = True
    mauve_bootstrap: int = 100  # half-samples of openings for each MAUVE interval (0: no interval)
    curves: bool = True  # judge perplexity against word entropy over each model's diversity knob
    curve_prompts: int = 256  # openings per point of those curves (one sample each)
    bootstrap: int = 200
    batch_size: int = 32  # prompts per generate call
    seed: int = 0

    def words_per_reference(self) -> int:
        """The words each real continuation is cut to (:attr:`reference_words`, or 3/4 of max_new_tokens)."""
        return self.reference_words or max(1, round(0.75 * self.max_new_tokens))

    def validate(self) -> None:
        for name in ("prompts", "max_new_tokens", "seeds", "prompt_sentences", "nll_texts", "cloze_items",
                     "sweep_prompts", "speed_batch", "window", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.reference_words, int) or self.reference_words < 0:
            raise InputError(f"reference_words must be a number of words >= 0 (0: 3/4 of max_new_tokens), "
                             f"got {self.reference_words!r}")
        if self.nll_samples < 2:
            raise InputError(f"nll_samples must be at least 2 (for a standard error), got {self.nll_samples}")
        if self.bootstrap < 10:
            raise InputError(f"bootstrap must be at least 10 resamples, got {self.bootstrap}")
        if self.mauve_bootstrap != 0 and self.mauve_bootstrap < 10:
            raise InputError(f"mauve_bootstrap must be 0 (no interval) or at least 10, got {self.mauve_bootstrap}")
        if not isinstance(self.curve_prompts, int) or self.curve_prompts < 10:
            raise InputError(f"curve_prompts must be an integer of at least 10 (MAUVE needs 10), "
                             f"got {self.curve_prompts!r}")
        for name in ("nfe_sweep", "speed_lengths", "distances"):
            if any(not isinstance(v, int) or v < 1 for v in getattr(self, name)):
                raise InputError(f"{name} must hold positive integers, got {getattr(self, name)}")
