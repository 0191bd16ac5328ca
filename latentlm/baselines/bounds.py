"""What the token-diffusion bounds (MDLM, duo, SEDD) share: their arguments' checks and the prompt mask."""

from __future__ import annotations

import torch

from latentlm.errors import InputError


def prompt_positions(ids: torch.Tensor, prefix_len: int, n_samples: int) -> torch.Tensor:
    """The positions (b, s) bool of the first ``prefix_len`` tokens of each row of ``ids`` (b, s), the
    prompt a conditional bound keeps clean and does not score; InputError when ``n_samples`` (Monte Carlo
    draws) cannot give a standard error or the prompt leaves nothing to score."""
    if n_samples < 2:
        raise InputError(f"n_samples must be at least 2 for a standard error, got {n_samples}")
    if not 0 <= prefix_len < ids.shape[1]:
        raise InputError(f"prefix_len must be in [0, {ids.shape[1]}), got {prefix_len}")
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, :prefix_len] = True
    return keep
