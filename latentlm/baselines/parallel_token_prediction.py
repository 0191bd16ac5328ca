"""Parallel Token Prediction (PTP, Draxler et al. 2026, arXiv 2512.21323) for the AR baseline.

The AR samples token i by inverse CDF, t_i = Pick(u_i, P_i) with u_i ~ U[0, 1). Given the context
and u_1..u_k, the next k tokens are a deterministic function, so one network can predict them
jointly in one call. :class:`ParallelTokenPredictor` is the AR's architecture plus an embedding
of u at k future positions (O-PTP: each position predicts the teacher's token, one-hot); each
future position sees the context, the earlier future positions and its own u.

Decoding (:func:`ptp_generate`) drafts k tokens in one call of the predictor and verifies them
in one call of the AR: it keeps the longest prefix the AR picks with the same u's, plus the AR's
own pick after it. The output is token for token the AR's sample with those u's.

Training (:func:`ptp_loss`) distils from a trained AR on data: the AR's distributions on a
window of text give, for each token, the interval of u that picks it; a u drawn in that interval
makes the text the AR's sample, so the predictor learns the AR's map from (context, u's) to
tokens with one AR forward per batch and no sequential sampling.

Shapes: ``b`` batch, ``s`` window, ``k`` draft tokens, ``n`` completions per window, ``V`` vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from latentlm.baselines.autoregressive import (
    CausalLM,
    check_prompt,
    check_sampling,
    draw_uniforms,
    next_token_probs,
    pick,
    token_interval,
)
from latentlm.errors import ConfigError, InputError
from latentlm.layers import KVCache, Transformer
from latentlm.outputs import LossOutput


class UniformEmbedding(nn.Module):
    """u in [0, 1) (...) -> (..., dim): u and its first ``bits`` binary digits (fixed point, most
    significant first, as +-1) through a linear map. Picking a token compares u with cumulative
    probabilities, which the leading digits settle."""

    def __init__(self, dim: int, bits: int = 24) -> None:
        super().__init__()
        self.bits = bits
        self.proj = nn.Linear(bits + 1, dim)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        fixed = (u.double() * 2**self.bits).floor().long().clamp(0, 2**self.bits - 1)
        shifts = torch.arange(self.bits - 1, -1, -1, device=u.device)
        digits = ((fixed[..., None] >> shifts) & 1).to(self.proj.weight.dtype) * 2 - 1
        return self.proj(torch.cat([u[..., None].to(digits.dtype), digits], dim=-1))


class ParallelTokenPredictor(ModelMixin, ConfigMixin):
    """The AR's architecture (same names, so an AR's weights load into it) plus an embedding of u.

    ``draft_tokens``: the most future tokens one call predicts (the training completion length)."""

    @register_to_config
    def __init__(
        self,
        vocab_size: int,
        dim: int = 256,
        depth: int = 6,
        n_heads: int = 4,
        mlp_ratio: float = 4.0,
        max_seq_len: int = 1024,
        pad_token_id: int = 0,
        eot_token_id: int = 1,
        draft_tokens: int = 16,
        u_bits: int = 24,
    ) -> None:
        super().__init__()
        if draft_tokens < 1:
            raise ConfigError(f"draft_tokens must be at least 1, got {draft_tokens}")
        self.embed = nn.Embedding(vocab_size, dim)
        self.backbone = Transformer(dim, depth, n_heads, mlp_ratio)
        self.u_embed = UniformEmbedding(dim, u_bits)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, u: torch.Tensor, *, mask: torch.Tensor,
                positions: torch.Tensor, kv_caches: list[KVCache] | None = None) -> torch.Tensor:
        """Tokens (b, s) then u positions (b, q) as one sequence under ``mask`` (b or 1, 1, s + q, keys)
        at rotary ``positions`` ((s + q,) or (b, s + q)) -> logits (b, q, V) of the token each u picks."""
        x = torch.cat([self.embed(input_ids), self.u_embed(u).to(self.embed.weight.dtype)], dim=1)
        h, _ = self.backbone(x, mask=mask, positions=positions, kv_caches=kv_caches)
        return F.linear(h[:, input_ids.shape[1]:], self.embed.weight)  # tied, as the AR's

    def new_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.backbone.blocks]

    @classmethod
    def from_teacher(cls, teacher: CausalLM, *, draft_tokens: int = 16, u_bits: int = 24,
                     max_seq_len: int | None = None) -> ParallelTokenPredictor:
        """A predictor with ``teacher``'s architecture and weights (u embedding fresh)."""
        if not isinstance(teacher, CausalLM):
            raise ConfigError(f"a PTP model starts from an AR model (CausalLM), got a {type(teacher).__name__}")
        c = teacher.config
        model = cls(vocab_size=c.vocab_size, dim=c.dim, depth=c.depth, n_heads=c.n_heads,
                    mlp_ratio=c.mlp_ratio, max_seq_len=max(c.max_seq_len, max_seq_len or 0),
                    pad_token_id=c.pad_token_id, eot_token_id=c.eot_token_id, draft_tokens=draft_tokens,
                    u_bits=u_bits)
        missing, unexpected = model.load_state_dict(teacher.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("u_embed.") for k in missing), (missing, unexpected)
        return model


def check_pair(student: ParallelTokenPredictor, teacher: CausalLM) -> None:
    """Raise InputError unless ``student`` is a PTP model and ``teacher`` an AR of the same tokens."""
    if not isinstance(student, ParallelTokenPredictor):
        raise InputError(f"the draft model must be a ParallelTokenPredictor, got a {type(student).__name__}")
    if not isinstance(teacher, CausalLM):
        raise InputError(f"the verifier must be an AR model (CausalLM), got a {type(teacher).__name__}")
    for key in ("vocab_size", "eot_token_id", "pad_token_id"):
        if student.config[key] != teacher.config[key]:
            raise InputError(f"the PTP model and its AR disagree on {key} ({student.config[key]} against "
                             f"{teacher.config[key]}): they use different tokenizers")


# ---------------------------------------------------------------------------------------------- training


@dataclass
class PTPLossConfig:
    """Loss section of a PTP run (``[ptp.loss]``)."""

    completions: int = 8  # windows of draft_tokens future positions per row, at random starts
    temperature: float = 1.0  # the AR's sampling distribution the predictor learns to invert
    top_p: float = 1.0

    def validate(self) -> None:
        if self.completions < 1:
            raise ConfigError(f"loss.completions must be at least 1, got {self.completions}")
        if not self.temperature > 0:
            raise ConfigError(f"loss.temperature must be positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"loss.top_p must be in (0, 1], got {self.top_p}")


def completion_layout(starts: torch.Tensor, s: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask (1, 1, s + n k, s + n k) and positions (s + n k,) of a window of ``s`` tokens followed by
    ``n`` completions of ``k`` u positions: completion c, position j (0-based) predicts token
    ``starts[c] + 1 + j`` and sees the tokens up to ``starts[c]`` and positions j' <= j of its own."""
    n = starts.shape[0]
    device = starts.device
    tok = torch.arange(s, device=device)
    j = torch.arange(k, device=device)
    aux_pos = (starts[:, None] + 1 + j).flatten()  # (n k,)
    aux_start = starts[:, None].expand(n, k).flatten()
    aux_c = torch.arange(n, device=device)[:, None].expand(n, k).flatten()
    mask = torch.zeros(s + n * k, s + n * k, dtype=torch.bool, device=device)
    mask[:s, :s] = tok[None, :] <= tok[:, None]  # causal over the tokens
    mask[s:, :s] = tok[None, :] <= aux_start[:, None]  # a completion sees its context
    mask[s:, s:] = (aux_c[:, None] == aux_c[None, :]) & (aux_pos[None, :] <= aux_pos[:, None])
    return mask[None, None], torch.cat([tok, aux_pos])


def ptp_loss(model: ParallelTokenPredictor, batch: dict[str, torch.Tensor], *, teacher: CausalLM,
             cfg: PTPLossConfig) -> LossOutput:
    """O-PTP distillation on a window of data: cross-entropy of the teacher's token at every u position.

    The teacher's distribution P_i at each position gives the interval of u that picks the text's
    token; u_i is drawn uniformly in it, so the text is what the teacher samples with those u's. A
    token the teacher cannot pick (outside its top-p nucleus) ends its completion's targets there.
    """
    ids = batch["input_ids"]  # (b, s)
    b, s = ids.shape
    k = model.config.draft_tokens
    if s < k + 2:
        raise ConfigError(f"data.seq_len {s} leaves no room for completions of {k} draft tokens")
    if next(teacher.parameters()).device != ids.device:
        teacher.to(ids.device)
    with torch.no_grad():
        probs = next_token_probs(teacher(ids[:, :-1]).float(), cfg.temperature, cfg.top_p)  # (b, s-1, V)
        low, high = token_interval(probs, ids[:, 1:])  # u that picks token p+1 given tokens <= p
        del probs
        u = low + (high - low) * torch.rand_like(low)
        pickable = high > low
    n = min(cfg.completions, s - k - 1)
    starts = torch.randperm(s - k - 1, device=ids.device)[:n].sort().values  # last context token
    mask, positions = completion_layout(starts, s, k)
    target_idx = (starts[:, None] + 1 + torch.arange(k, device=ids.device)).flatten()  # (n k,)
    logits = model(ids, u[:, target_idx - 1], mask=mask, positions=positions)  # (b, n k, V)
    targets = ids[:, target_idx]
    valid = pickable[:, target_idx - 1].view(b, n, k).long().cumprod(-1).bool().flatten(1)
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.masked_fill(~valid, -100).flatten(),
                           ignore_index=-100)
    with torch.no_grad():
        hit = (logits.argmax(-1) == targets) & valid
        runs = hit.view(b, n, k).long().cumprod(-1).sum(-1).float()  # tokens a draft would get accepted
    return LossOutput(loss, {"accepted": float(runs.mean()), "first_token_acc": float(hit.view(b, n, k)[..., 0].float().mean())})


# ---------------------------------------------------------------------------------------------- decoding


@dataclass
class PTPStats:
    """What a PTP decode did: network calls and the tokens each verification call committed."""

    calls: int = 0  # network evaluations, draft and verification (prefill included)
    verify_calls: int = 0
    tokens_per_call: list[int] = field(default_factory=list)  # per row and verification, live rows only

    @property
    def mean_tokens_per_call(self) -> float:
        return sum(self.tokens_per_call) / max(1, len(self.tokens_per_call))


class _Stream:
    """A model's KV cache with each column's row-validity and rotary position, so that rows of one
    batch can hold different numbers of tokens (each row sees its own tokens at their own positions)."""

    def __init__(self, caches: list[KVCache], batch: int, device) -> None:
        self.caches = caches
        self.valid = torch.zeros(batch, 0, dtype=torch.bool, device=device)
        self.pos = torch.zeros(batch, 0, dtype=torch.long, device=device)

    def mask(self, q_valid: torch.Tensor, q_pos: torch.Tensor) -> torch.Tensor:
        """(b, 1, q, cached + q): a query sees the valid columns at positions up to its own, itself always."""
        k_valid = torch.cat([self.valid, q_valid], dim=1)
        k_pos = torch.cat([self.pos, q_pos], dim=1)
        m = k_valid[:, None, :] & (k_pos[:, None, :] <= q_pos[:, :, None])
        q = q_pos.shape[1]
        m[:, :, -q:] |= torch.eye(q, dtype=torch.bool, device=m.device)
        return m[:, None]

    def append(self, valid: torch.Tensor, pos: torch.Tensor) -> None:
        """Record the token columns just added to the caches, and cut the caches after the last column
        some row needs: a draft's u positions (added after the tokens) and rejected drafts go."""
        self.valid = torch.cat([self.valid, valid], dim=1)
        self.pos = torch.cat([self.pos, pos], dim=1)
        used = self.valid.any(0).nonzero()
        keep = int(used[-1, 0]) + 1 if len(used) else 0
        self.valid, self.pos = self.valid[:, :keep], self.pos[:, :keep]
        for c in self.caches:
            c.k, c.v = c.k[:, :, :keep], c.v[:, :, :keep]


@torch.no_grad()
def ptp_generate(
    student: ParallelTokenPredictor,
    teacher: CausalLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    draft_tokens: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
    stop_at_eot: bool = True,
) -> tuple[torch.Tensor, PTPStats]:
    """Continue ``input_ids`` (b, s) by ``max_new_tokens``: the AR's own samples, several tokens per call.

    Same contract as :func:`latentlm.baselines.autoregressive.generate` (left-padded prompts with
    ``attention_mask``, u's from :func:`draw_uniforms`, end-of-text padding, ``stop_at_eot``), so both return the
    same tokens for the same generator state. Each step: the predictor drafts ``draft_tokens`` tokens
    from the next u's in one call; the AR scores the last committed token and the drafts in one call
    and picks with the same u's; the drafts it agrees with, then its own next pick, are committed.
    """
    check_pair(student, teacher)
    check_sampling(temperature, top_p)
    check_prompt(teacher, input_ids, max_new_tokens, attention_mask)
    k = student.config.draft_tokens if draft_tokens is None else draft_tokens
    if not 1 <= k <= student.config.draft_tokens:
        raise InputError(f"draft_tokens must be in [1, {student.config.draft_tokens}] (the PTP model was "
                         f"trained to draft {student.config.draft_tokens} tokens), got {k}")
    b, s = input_ids.shape
    device = input_ids.device
    eot = teacher.config.eot_token_id
    u_all = draw_uniforms(b, max_new_tokens, generator, device)
    u_all = torch.cat([u_all, torch.full((b, k + 1), 0.5, dtype=u_all.dtype, device=device)], 1)  # past the end
    rows = torch.arange(b, device=device)
    prompt_valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    prompt_pos = torch.arange(s, device=device).expand(b, s)
    stats = PTPStats()

    def picks(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        if temperature == 0:
            return logits.argmax(-1)
        return pick(next_token_probs(logits, temperature, top_p), u)

    # teacher prefill: the first new token, as the AR picks it
    verifier = _Stream(teacher.new_cache(), b, device)
    h, _ = teacher.backbone(teacher.embed(input_ids), mask=verifier.mask(prompt_valid, prompt_pos),
                            positions=prompt_pos, kv_caches=verifier.caches)
    verifier.append(prompt_valid, prompt_pos)
    first = picks(F.linear(h[:, -1], teacher.embed.weight), u_all[:, 0])
    stats.calls += 1
    out = torch.full((b, max_new_tokens + k + 1), eot, dtype=torch.long, device=device)
    out[:, 0] = first
    n = torch.ones(b, dtype=torch.long, device=device)  # committed tokens per row
    last = first  # the committed token the verifier has not seen yet
    # the drafter first reads the prompt and the first token, later the tokens committed since its last call
    drafter = _Stream(student.new_cache(), b, device)
    pend_ids = torch.cat([input_ids, first[:, None]], 1)
    pend_valid = torch.cat([prompt_valid, torch.ones(b, 1, dtype=torch.bool, device=device)], 1)
    pend_pos = torch.cat([prompt_pos, torch.full((b, 1), s, device=device)], 1)
    live = torch.ones(b, dtype=torch.bool, device=device)
    live &= ((first != eot) | (not stop_at_eot)) & (n < max_new_tokens)
    j = torch.arange(k + 1, device=device)
    while bool(live.any()):
        u_next = u_all[rows[:, None], (n[:, None] + j).clamp(max=u_all.shape[1] - 1)]  # of tokens n .. n + k
        # draft: k u positions after the committed tokens
        u_pos = s + n[:, None] + j[:k]  # positions of new tokens n .. n + k - 1
        u = u_next[:, :k]
        aux_valid = torch.ones(b, k, dtype=torch.bool, device=device)
        mask = drafter.mask(torch.cat([pend_valid, aux_valid], 1), torch.cat([pend_pos, u_pos], 1))
        logits = student(pend_ids, u, mask=mask, positions=torch.cat([pend_pos, u_pos], 1),
                         kv_caches=drafter.caches)
        drafter.append(pend_valid, pend_pos)
        drafts = logits.argmax(-1)  # (b, k)
        # verify: the last committed token and the drafts, in one call of the AR
        v_ids = torch.cat([last[:, None], drafts], 1)
        v_pos = s + n[:, None] - 1 + j
        v_valid = torch.ones(b, k + 1, dtype=torch.bool, device=device)
        h, _ = teacher.backbone(teacher.embed(v_ids), mask=verifier.mask(v_valid, v_pos), positions=v_pos,
                                kv_caches=verifier.caches)
        chosen = picks(F.linear(h, teacher.embed.weight), u_next)
        stats.calls += 2
        stats.verify_calls += 1
        accepted = (drafts == chosen[:, :k]).long().cumprod(-1).sum(-1)  # (b,) drafts the AR agrees with
        commit = j[None, :] <= accepted[:, None]  # (b, k + 1)
        # the verifier keeps the last token and the accepted drafts; the next call brings its own pick
        verifier.append(commit & live[:, None], v_pos)  # column j holds draft j - 1: kept if j <= accepted
        idx = (n[:, None] + j).clamp(max=out.shape[1] - 1)
        cur = out.gather(1, idx)
        out.scatter_(1, idx, torch.where(commit & live[:, None], chosen, cur))
        stats.tokens_per_call += (accepted + 1)[live].tolist()
        ended = (chosen == eot) & commit & stop_at_eot
        pend_ids, pend_valid = chosen, commit & live[:, None]
        pend_pos = s + n[:, None] + j
        last = chosen.gather(1, accepted[:, None]).squeeze(1)
        n = torch.where(live, n + accepted + 1, n)
        live &= ~ended.any(1) & (n < max_new_tokens)
    new = out[:, :max_new_tokens]
    if not stop_at_eot:
        return new, stats
    after_eot = (new == eot).long().cumsum(1) > 0
    after_eot = torch.cat([torch.zeros_like(after_eot[:, :1]), after_eot[:, :-1]], 1)  # after the first EOT
    return new.masked_fill(after_eot, eot), stats
