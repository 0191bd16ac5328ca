"""What a loss function returns to the training loop (a leaf: losses import it, not the trainer)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Batch = dict[str, torch.Tensor]


@dataclass
class LossOutput:
    """The scalar to minimise and metrics to log."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


LossFn = Callable[[torch.nn.Module, Batch], LossOutput]
