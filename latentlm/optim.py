"""Optimizers of the training loop: AdamW, or Muon on the hidden weight matrices.

Muon (Jordan et al. 2024) orthogonalises the momentum of each 2-D weight
matrix by Newton-Schulz iterations before the update; it trains transformers
in fewer steps than AdamW (Liu et al. 2025, "Muon is scalable for LLM
training"). It only suits the hidden matrices: embeddings, input/output
projections, norms and biases stay on AdamW. Both use the same learning rate
and schedule: ``torch.optim.Muon(adjust_lr_fn="match_rms_adamw")`` scales each
matrix's update to AdamW's RMS (0.2 sqrt(max(A, B))), so one ``train.lr``
serves both.
torch's Muon orthogonalises in bfloat16; on a CPU that only emulates bf16 it
runs in float32 instead (:func:`newton_schulz_float32`), 9x faster there.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.optim._muon as _torch_muon

from latentlm.device import muon_float32_orthogonalisation
from latentlm.errors import ConfigError

OPTIMIZERS = ("adamw", "muon")


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """A 2-D weight inside the transformer blocks (``...blocks.<i>...``): Muon's parameters."""
    return p.dim() == 2 and ".blocks." in f".{name}"


def newton_schulz_float32(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int,
                          eps: float) -> torch.Tensor:
    """torch's Muon orthogonalisation (quintic Newton-Schulz, X <- a X + (b A + c A^2) X with A = X X^T)
    in float32 instead of its hard-coded bfloat16, for CPUs that only emulate bf16 (9x slower there)."""
    a, b, c = ns_coefficients
    x = grad.float()
    wide = x.size(0) > x.size(1)
    x = x.T if wide else x
    x = x / x.norm().clamp(min=eps)  # spectral norm <= 1
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if wide else x).to(grad.dtype)


@contextlib.contextmanager
def float32_newton_schulz(enabled: bool) -> Iterator[None]:
    """Within the block, torch's Muon orthogonalises in float32 (when ``enabled``)."""
    original = getattr(_torch_muon, "_zeropower_via_newtonschulz", None)
    if not enabled or original is None:  # a torch without the private hook keeps its own
        yield
        return
    _torch_muon._zeropower_via_newtonschulz = newton_schulz_float32
    try:
        yield
    finally:
        _torch_muon._zeropower_via_newtonschulz = original


class MuonWithAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` for the hidden matrices and ``torch.optim.AdamW`` for the rest,
    as one optimizer: one ``step``, one ``state_dict``, and ``param_groups`` that a
    learning-rate scheduler sets for both."""

    def __init__(self, muon_params: list[torch.Tensor], adamw_groups: list[dict[str, Any]], *, lr: float,
                 betas: tuple[float, float], weight_decay: float) -> None:
        self.muon = torch.optim.Muon(muon_params, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, foreach=True)
        # the inner optimizers' group dicts themselves, so a scheduler's lr reaches them
        super().__init__(self.muon.param_groups + self.adamw.param_groups, {})

    def _share_groups(self) -> None:
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self.muon.param_groups[0]["params"]
        with float32_newton_schulz(muon_float32_orthogonalisation(params[0].device)):
            self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self._share_groups()  # load_state_dict replaces the inner group dicts


def make_optimizer(model: torch.nn.Module, name: str, *, lr: float, betas: tuple[float, float],
                   weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer ``name`` (one of :data:`OPTIMIZERS`) over ``model``'s trainable parameters.

    Weight decay applies to matrices only (not to norms and biases), in both optimizers.
    """
    if name not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    hidden: list[torch.Tensor] = []
    rest: list[torch.Tensor] = []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (hidden if name == "muon" and is_hidden_matrix(n, p) else rest).append(p)
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if name == "muon" and not hidden:
        warnings.warn(f"train.optimizer='muon': {type(model).__name__} has no 2-D weights under a `blocks` "
                      "module, so every parameter is trained by AdamW", stacklevel=2)
    if not hidden:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)
    return MuonWithAdamW(hidden, groups, lr=lr, betas=betas, weight_decay=weight_decay)
