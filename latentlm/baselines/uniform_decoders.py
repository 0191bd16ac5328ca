"""Samplers of uniform-state diffusion (:mod:`latentlm.baselines.uniform_process`), as plain functions with
the MDLM decoders' shape::

    decode_x(model_fn, x, fill, *, steps, temperature=1.0, generator=None, callback=None, ...) -> (x, nfe)

* ``model_fn(z, t)``: log-probabilities (b, s, K) of the clean tokens for the states z (b, s) at times
  t (b,) in [0, 1];
* ``x`` (b, s): the starting state, uniform draws at the positions to generate (the prior,
  :func:`prior_state`); ``fill`` (b, s) bool marks those positions; every other one (prompt, padding)
  is kept;
* ``callback(info)`` after each step with ``{"i", "t", "x", "x0"}`` as the MDLM decoders pass;
* returns the final state and the network evaluations (one a step).

Steps are uniform in time, t_i = i / steps, from 1 down to 0. Categoricals are drawn in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from latentlm.baselines.uniform_process import alpha, psi_probs
from latentlm.choices import UNIFORM_DECODERS as DECODER_NAMES
from latentlm.errors import InputError

Callback = Callable[[dict[str, Any]], None]


def prior_state(x: torch.Tensor, fill: torch.Tensor, vocab_size: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` with uniform token draws at the ``fill`` positions: a sample of the prior q(z_1)."""
    start = torch.randint(0, vocab_size, x.shape, generator=generator).to(x.device)
    return torch.where(fill, start, x)


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    flat = probs.reshape(-1, probs.shape[-1]).double().clamp_min(0)
    return torch.multinomial(flat.cpu(), 1, generator=generator).squeeze(-1).to(probs.device).reshape(probs.shape[:-1])


@torch.no_grad()
def decode_psi(model_fn, x: torch.Tensor, fill: torch.Tensor, *, steps: int, temperature: float = 1.0,
               generator: torch.Generator | None = None, callback: Callback | None = None, corrector: float = 0.5,
               corrector_interval: tuple[float, float] = (0.0, 1.0)) -> tuple[torch.Tensor, int]:
    """Psi-sampler (Deschenaux, Gulcehre & Sahoo, arXiv:2602.21185): each step draws z_s from
    kappa x the ancestral posterior + (1 - kappa) x the predicted clean token noised forward to s, with
    kappa = 1 - ``corrector`` at times t inside ``corrector_interval`` and 1 elsewhere. Both parts keep the
    forward marginals under an exact denoiser; the corrector lets later steps revise earlier choices.
    ``corrector=0`` is :func:`decode_ancestral`, draw for draw."""
    if not 0 <= corrector <= 1:
        raise InputError(f"corrector must be in [0, 1] (0: ancestral sampling), got {corrector!r}")
    lo, hi = corrector_interval
    if not 0 <= lo <= hi <= 1:
        raise InputError(f"corrector_interval must be (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1, got "
                         f"{corrector_interval!r}")
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    if temperature <= 0:
        raise InputError(f"temperature must be > 0 (the clean-token distribution is sharpened by 1 / T), "
                         f"got {temperature!r}")
    x = x.clone()
    for i in range(steps, 0, -1):
        t, s = i / steps, (i - 1) / steps
        logp = model_fn(x, torch.full((x.shape[0],), t, device=x.device)).double()
        p = (logp / temperature).softmax(-1)
        kappa = 1 - corrector if lo <= t <= hi else 1.0
        a_t = alpha(torch.tensor(t, dtype=torch.float64))
        a_s = alpha(torch.tensor(s, dtype=torch.float64))
        z = _draw(psi_probs(p, x, a_s, a_t, kappa), generator)
        x = torch.where(fill, z, x)
        if callback is not None:
            callback({"i": steps - i, "t": s, "x": x, "x0": p.argmax(-1)})
    return x, steps


@torch.no_grad()
def decode_ancestral(model_fn, x: torch.Tensor, fill: torch.Tensor, *, steps: int, temperature: float = 1.0,
                     generator: torch.Generator | None = None, callback: Callback | None = None
                     ) -> tuple[torch.Tensor, int]:
    """Ancestral sampling of uniform-state diffusion (UDLM, Schiff et al. 2024; Duo, arXiv:2506.10892):
    each step draws z_s from the posterior q(z_s | z_t, x = p_theta(. | z_t)). Its quality plateaus as steps
    grow (the Psi-samplers' motivation)."""
    return decode_psi(model_fn, x, fill, steps=steps, temperature=temperature, generator=generator,
                      callback=callback, corrector=0.0)


UNIFORM_DECODERS: dict[str, Callable[..., tuple[torch.Tensor, int]]] = {"ancestral": decode_ancestral,
                                                                          "psi": decode_psi}
assert tuple(UNIFORM_DECODERS) == DECODER_NAMES  # the CLI's choices (latentlm/choices.py)
