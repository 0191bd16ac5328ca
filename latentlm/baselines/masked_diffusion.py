"""Masked (absorbing-state) token diffusion: MDLM (Sahoo et al. 2024) on the shared layers.

Forward process: each token is independently replaced by ``<mask>`` with
probability ``t`` (log-linear schedule, alpha(t) = 1 - t). The network is a
bidirectional transformer without time input (the mask count carries it).

SUBS parameterisation: the mask token gets zero probability and unmasked
tokens are carried over unchanged. The continuous-time NELBO is

    NELBO(x) = E_{t ~ U(0,1)} [ (1/t) * sum_{i masked in x_t} -log p(x_i | x_t) ]

(weight -alpha'(t) / (1 - alpha(t)) = 1/t). It upper-bounds -log p(x) of the
model's reverse process, which unmasks positions in a uniformly random order:
p(x) = E_order prod_i p(x_order(i) | x_order(<i)). ``exact_nll_by_orders``
computes that by enumeration for tiny cases (the test of the bound).

The decoders (ancestral, LLaDA, Fast-dLLM threshold, AXON anchors) are in
:mod:`latentlm.baselines.mdlm_decoders`.
"""

from __future__ import annotations

import itertools
import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from latentlm.baselines.bounds import prompt_positions
from latentlm.errors import InputError
from latentlm.layers import Transformer
from latentlm.outputs import LossOutput

T_EPS = 1e-3  # smallest masking level (the 1/t weight is unbounded at 0)


class MaskedDiffusionLM(ModelMixin, ConfigMixin):
    """Bidirectional transformer giving SUBS log-probabilities of the clean tokens."""

    @register_to_config
    def __init__(
        self,
        vocab_size: int,
        dim: int = 256,
        depth: int = 6,
        n_heads: int = 4,
        mlp_ratio: float = 4.0,
        max_seq_len: int = 1024,
        mask_token_id: int = 2,
        pad_token_id: int = 0,
        eot_token_id: int = 1,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.backbone = Transformer(dim, depth, n_heads, mlp_ratio)
        self.head = nn.Linear(dim, vocab_size)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        return_attention_layers: int = 0,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """x_t (b, s) -> SUBS log-probabilities (b, s, vocab) in float32.

        Masked positions: log-softmax with the mask token at -inf. Unmasked
        positions: log-prob 0 on their own token, -inf elsewhere (carry-over).
        """
        h, attn = self.hidden_states(input_ids, attention_mask, return_attention_layers)
        logp = self.clean_log_probs(h)
        unmasked = input_ids != self.config.mask_token_id
        carry = torch.full_like(logp, float("-inf")).scatter(-1, input_ids[..., None], 0.0)
        logp = torch.where(unmasked[..., None], carry, logp)
        return (logp, attn) if return_attention_layers else logp

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, return_attention_layers: int = 0,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x_t (b, s) -> the backbone's last hidden states (b, s, dim) and the attention maps asked for."""
        if input_ids.shape[1] > self.config.max_seq_len:
            raise InputError(f"sequence of {input_ids.shape[1]} tokens exceeds the model's context of "
                             f"{self.config.max_seq_len}")
        return self.backbone(self.embed(input_ids), attention_mask=attention_mask,
                             return_attention_layers=return_attention_layers)

    def clean_log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., dim) -> log-probabilities (..., vocab) in float32 of the clean token at a
        masked position: the head's log-softmax with the mask token at -inf."""
        logits = self.head(h).float()
        logits[..., self.config.mask_token_id] = float("-inf")
        return logits.log_softmax(-1)


def _mask_tokens(ids: torch.Tensor, t: torch.Tensor, mask_id: int, keep: torch.Tensor | None) -> torch.Tensor:
    """Forward process: mask each token with probability t (b, 1); ``keep`` positions never."""
    masked = torch.rand(ids.shape, device=ids.device) < t
    if keep is not None:
        masked &= ~keep
    return torch.where(masked, torch.full_like(ids, mask_id), ids)


def nelbo_terms(
    model: MaskedDiffusionLM, ids: torch.Tensor, t: torch.Tensor, *, keep: torch.Tensor | None = None,
    weight_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One-sample NELBO of each row (b,) at masking levels t (b,): (1/t) * sum of masked CE."""
    xt = _mask_tokens(ids, t[:, None], model.config.mask_token_id, keep)
    masked = xt == model.config.mask_token_id
    h, _ = model.hidden_states(xt)
    # the head and the log-softmax at the masked positions only (an unmasked one carries its token
    # over at loss 0): (m, vocab) float32 rather than (b, s, vocab)
    logp = model.clean_log_probs(h[masked])
    nll = torch.zeros(ids.shape, dtype=logp.dtype, device=ids.device)
    nll[masked] = -logp.gather(-1, ids[masked][:, None]).squeeze(-1)
    if weight_mask is not None:
        nll = nll * weight_mask
    return nll.sum(-1) / t


def mdlm_loss(model: MaskedDiffusionLM, batch: dict[str, torch.Tensor]) -> LossOutput:
    """NELBO per token with stratified (low-discrepancy) masking levels across the batch."""
    ids = batch["input_ids"]
    b = ids.shape[0]
    u = (torch.rand((), device=ids.device) + torch.arange(b, device=ids.device) / b) % 1
    t = T_EPS + (1 - T_EPS) * u
    mask = batch.get("attention_mask")
    per_row = nelbo_terms(model, ids, t, weight_mask=None if mask is None else mask.float())
    n_tokens = ids.numel() if mask is None else mask.sum()
    return LossOutput(per_row.sum() / n_tokens)


@torch.no_grad()
def nll_bound(
    model: MaskedDiffusionLM, ids: torch.Tensor, *, prefix_len: int = 0, n_samples: int = 64,
    generator_seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo NELBO of each row of ids (b, s), conditional on the first ``prefix_len`` tokens.

    Uses ``n_samples`` stratified masking levels per row. Returns (mean, standard
    error) of the per-row bound in nats (sum over the scored tokens), each (b,).
    """
    keep = prompt_positions(ids, prefix_len, n_samples)
    g = torch.Generator(device="cpu").manual_seed(generator_seed)
    draws = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        offset = torch.rand((), generator=g)
        for k in range(n_samples):
            u = ((k + offset) / n_samples) % 1
            t = torch.full((ids.shape[0],), T_EPS + (1 - T_EPS) * float(u), device=ids.device)
            draws.append(nelbo_terms(model, ids, t, keep=keep))
    d = torch.stack(draws).double()  # (n_samples, b)
    return d.mean(0), d.std(0) / math.sqrt(n_samples)


@torch.no_grad()
def exact_nll_by_orders(model: MaskedDiffusionLM, ids: torch.Tensor) -> tuple[float, float]:
    """Exact -log p(x) of the model's reverse process for one short row ids (1, s), by
    enumerating every unmasking order, and the order-averaged loss the NELBO equals:

        p(x)  = mean over orders of prod_i p(x_order(i) | x_order(<i))
        bound = mean over orders of sum_i -log p(x_order(i) | x_order(<i))   (>= -log p(x))
    """
    s = ids.shape[1]
    if s > 7:
        raise InputError("enumeration over orders is for toy lengths (at most 7 tokens)")
    mask_id = model.config.mask_token_id
    logps = []
    for order in itertools.permutations(range(s)):
        x = torch.full_like(ids, mask_id)
        total = 0.0
        for pos in order:
            total += float(model(x)[0, pos, ids[0, pos]])
            x[0, pos] = ids[0, pos]
        logps.append(total)
    lp = torch.tensor(logps, dtype=torch.float64)
    exact = -(torch.logsumexp(lp, 0) - math.log(len(logps)))
    return float(exact), float(-lp.mean())
