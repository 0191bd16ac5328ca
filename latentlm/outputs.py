"""What a loss returns to the training loop, and what generation returns (a leaf: losses, samplers and
adapters import it, never the trainer)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers.utils import BaseOutput

Batch = dict[str, torch.Tensor]


@dataclass
class LossOutput:
    """The scalar to minimise and metrics to log."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


LossFn = Callable[[torch.nn.Module, Batch], LossOutput]


@dataclass
class GenerationOutput(BaseOutput):
    """What every generator returns (the latent pipeline, and every model through its adapter's
    ``generate``), one entry per sample:

    * ``texts``: prompt + continuation; ``continuations``: the new text alone; ``prompts``: the prompt of
      each sample (repeated for several samples per prompt);
    * ``sequences``: the continuation's token ids (b, max_new_tokens), cut at the first end-of-text
      (which is not kept) and padded with the tokenizer's padding id;
    * ``nfe``: network evaluations per sample.

    A diffusers ``BaseOutput``: fields read as attributes, keys or (without the None ones) a tuple."""

    texts: list[str] | None
    continuations: list[str] | None
    nfe: int
    prompts: list[str] | None = None
    sequences: torch.Tensor | None = None
