"""The names and defaults that the command line shares with the models, importable without torch (the
CLI builds its parser, and answers ``--help``, from these before it imports anything heavy). The
modules that implement them import them from here: one definition each."""

from __future__ import annotations

SAMPLING_MODES = ("parallel", "block-ar", "staggered")  # how a latent pipeline samples (its __call__'s mode)
SCHEDULER_NAMES = ("ddpm", "ddim", "dpm++", "flow-euler")  # the latent pipeline's samplers (diffusers)
MDLM_DECODERS = ("ancestral", "llada", "threshold", "anchor")  # MDLM's decoders (baselines/mdlm_decoders.py)
UNIFORM_DECODERS = ("ancestral", "psi")  # uniform-state diffusion's samplers (baselines/uniform_decoders.py)
# Option values are lowercase words joined by hyphens. A config that spells one of these four with
# underscores (run_config.json, config.json, presets, --set overrides) is read under the hyphenated name.
RENAMED_VALUES = {"logit_normal": "logit-normal", "clean_prefix": "clean-prefix", "min_snr": "min-snr",
                  "shifted_cosine": "shifted-cosine"}


def current_value(value: object) -> object:
    """``value`` under its current spelling (:data:`RENAMED_VALUES`); anything else unchanged."""
    return RENAMED_VALUES.get(value, value) if isinstance(value, str) else value


DEFAULT_VOCAB_SIZE = 4096  # a tokenizer trained by a run
DEFAULT_SHARD_TOKENS = 100_000_000  # tokens per shard file at most (200 MB of uint16)
QUICKSTART_STORIES = 4000  # synthetic training stories of `make demo`
QUICKSTART_PROMPTS = 64  # held-out openings `make demo` continues with every model
