"""One interface for every model: ``generate(prompts, ...) -> texts + NFE`` and
``nll(texts, prefix_len) -> nats/token (+ standard error where it is a bound)``.

Scored tokens, the same for every model: the text's tokens after the first
``prefix_len`` ones, plus the final end-of-text. Texts longer than the model's
context keep their first ``context - 2`` tokens (documented truncation).
Bits per character divide the total nats by ln 2 and by the characters of the
scored text, counting the end-of-text as one character.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from latentlm.baselines import autoregressive as ar
from latentlm.baselines import masked_diffusion as mdlm
from latentlm.baselines import mdlm_decoders
from latentlm.baselines import parallel_token_prediction as ptp
from latentlm.baselines import score_entropy_diffusion as sedd
from latentlm.baselines import uniform_diffusion as uniform
from latentlm.data.tokenizer import TOKENIZER_FILES, load_tokenizer
from latentlm.device import resolve_device
from latentlm.diffusion.likelihood import pipeline_nll_bound
from latentlm.errors import CheckpointError, InputError, check_text
from latentlm.kinds import kind_of_folder, resolve
from latentlm.loading import (
    load_model,
    load_pipeline,
    load_ptp,
)
from latentlm.outputs import GenerationOutput
from latentlm.pipeline_latent_diffusion import make_scheduler


@dataclass
class NLLOutput:
    nats_per_token: float
    stderr: float  # Monte Carlo standard error of nats/token (0 for exact likelihoods)
    bits_per_char: float
    n_tokens: int
    n_chars: int
    exact: bool
    per_text: list[float] = field(default_factory=list)  # nats of each text (for bootstrap)
    per_text_tokens: list[int] = field(default_factory=list)  # scored tokens of each text
    per_text_se: list[float] = field(default_factory=list)  # Monte Carlo standard error of each text's nats
    per_text_chars: list[int] = field(default_factory=list)  # scored characters of each text


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise InputError("empty prompt list: pass at least one prompt (an empty string for unconditional)")
    return [check_text(p) for p in prompts]


class LanguageModelAdapter:
    """Base: tokenisation, truncation and bookkeeping shared by every adapter."""

    kind = "base"
    exact = False  # nll is the exact likelihood (else a bound with a Monte Carlo error)

    def __init__(self, model, tokenizer, name: str | None = None) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.name = name or self.kind

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None, device: torch.device | str = "cpu"):
        """The adapter of the model saved in ``folder`` (its ``config.json`` and tokenizer) on ``device``."""
        return cls(load_model(folder).to(device), load_tokenizer(folder), name)

    @property
    def context(self) -> int:
        return int(self.model.config.max_seq_len)

    def _tokens(self, text: str, budget: int) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"][:budget]

    def _prompt_ids(self, prompts: list[str], max_new_tokens: int, reserve: int, sliding: int | None = None
                    ) -> list[list[int]]:
        """Token ids of ``prompts``; InputError unless each prompt with ``reserve`` more tokens and the new
        tokens fit the context or, for a model whose context slides, unless the prompt fits it and
        ``max_new_tokens`` is at most ``sliding`` (the model's limit per call)."""
        if max_new_tokens <= 0:
            raise InputError(f"max_new_tokens must be positive, got {max_new_tokens}")
        if sliding is not None and max_new_tokens > sliding:
            raise InputError(f"max_new_tokens {max_new_tokens} exceeds the limit of {sliding} per call; "
                             "generate in several calls, each continuing the last")
        ids = [self._tokens(p, 10**9) for p in prompts]
        longest = max(len(x) for x in ids)
        if sliding is not None and longest + reserve > self.context:
            raise InputError(f"prompt of {longest} tokens exceeds the context of {self.context} tokens; "
                             "shorten the prompt")
        if sliding is None and longest + max_new_tokens + reserve > self.context:
            raise InputError(f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the "
                             f"context of {self.context} tokens; shorten the prompt or max_new_tokens")
        return ids

    def _finish(self, prompts: list[str], new: torch.Tensor, nfe: int) -> GenerationOutput:
        """The output of ``generate`` from the sampled ids (b, max_new_tokens): each row cut at its first
        end-of-text, decoded, and padded from there on in ``sequences``."""
        eot = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eot
        conts = []
        for row in new.tolist():
            if eot in row:
                row = row[: row.index(eot)]
            conts.append(self.tokenizer.decode(row))
        sequences = new.masked_fill((new == eot).int().cumsum(1) > 0, pad)
        return GenerationOutput([p + c for p, c in zip(prompts, conts)], conts, nfe, list(prompts), sequences)

    def nll(self, texts, prefix_len: int | Sequence[int] = 0, **kwargs) -> NLLOutput:
        """Nats/token of ``texts`` after their first ``prefix_len`` tokens (one number, or one per text):
        exact for AR, an upper bound with its standard error for the diffusion models."""
        if isinstance(prefix_len, int):
            return self._nll(texts, prefix_len, **kwargs)
        texts = [texts] if isinstance(texts, str) else list(texts)
        if len(prefix_len) != len(texts):
            raise InputError(f"got {len(prefix_len)} prefix lengths for {len(texts)} texts")
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prefix_len):
            groups.setdefault(int(p), []).append(i)
        per = [None] * len(texts)
        for p, idx in groups.items():
            out = self._nll([texts[i] for i in idx], p, **kwargs)
            for j, i in enumerate(idx):
                per[i] = (out.per_text[j], out.per_text_se[j], out.per_text_tokens[j], out.per_text_chars[j], out.exact)
        nats, ses, toks, chars, exact = (list(x) for x in zip(*per))
        return _summary(nats, ses, toks, chars, all(exact))

    def _score_units(self, texts: Sequence[str], prefix_len: int) -> list[tuple[list[int], int]]:
        if prefix_len < 0:
            raise InputError(f"prefix_len must be >= 0, got {prefix_len}")
        texts = [check_text(t, "text") for t in texts] if not isinstance(texts, str) else [check_text(texts, "text")]
        if not texts:
            raise InputError("no text to score")
        units = []
        for t in texts:
            ids = self._tokens(t, self.context - 2) + [self.tokenizer.eos_token_id]
            if prefix_len >= len(ids):
                raise InputError(f"prefix_len {prefix_len} leaves nothing to score in a text of {len(ids) - 1} tokens")
            scored_chars = len(self.tokenizer.decode(ids[prefix_len:-1])) + 1
            units.append((ids, scored_chars))
        return units


class ARAdapter(LanguageModelAdapter):
    kind = "ar"
    exact = True

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens: int = 128, *, generator=None, temperature: float = 1.0,
                 top_p: float = 1.0, stop_at_eot: bool = True) -> GenerationOutput:
        """``stop_at_eot=False``: sample all ``max_new_tokens`` (the texts still end at the first end-of-text).
        Any ``max_new_tokens``: past the context the KV cache slides (:func:`ar.generate`)."""
        prompts = _check_prompts(prompts)
        ids = self._prompt_ids(prompts, max_new_tokens, reserve=1, sliding=ar.MAX_NEW_TOKENS)
        eot, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        new, nfe = torch.full((len(prompts), max_new_tokens), pad, dtype=torch.long), 0
        for group, x, m in _length_buckets([[eot] + p for p in ids], pad, self.model.device):
            rows, n = ar.generate(self.model, x, max_new_tokens, temperature=temperature, top_p=top_p,
                                  generator=generator, attention_mask=m, stop_at_eot=stop_at_eot)
            new[group] = rows.cpu()
            nfe = max(nfe, n)  # a batch stops when its rows have ended
        return self._finish(prompts, new, nfe)

    @torch.no_grad()
    def _nll(self, texts, prefix_len: int = 0, *, batch_size: int = 16, progress: bool = False) -> NLLOutput:
        units = self._score_units(texts, prefix_len)
        per_text = []
        for x, m in _scoring_batches(units, self.tokenizer.eos_token_id, 0, batch_size, self.model.device,
                                     f"nll {self.name}", progress):
            per_text += ar.sequence_nll(self.model, x, m, prefix_len).tolist()
        return summarise_nll(per_text, [0.0] * len(per_text), units, prefix_len, exact=True)


class PTPAdapter(ARAdapter):
    """An AR decoded with Parallel Token Prediction: the AR's samples (token for token, at the same
    seed) and its exact likelihood, several tokens per call. ``last_stats``: the tokens each
    verification committed in the latest ``generate``."""

    kind = "ptp"

    def __init__(self, draft, teacher, tokenizer, name: str | None = None) -> None:
        super().__init__(teacher, tokenizer, name)
        self.draft = draft.eval()
        self.last_stats = ptp.PTPStats()

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None, device: torch.device | str = "cpu") -> PTPAdapter:
        """The PTP model in ``folder`` and the AR that verifies it (``folder/teacher``)."""
        draft, teacher = load_ptp(folder)
        return cls(draft.to(device), teacher.to(device), load_tokenizer(folder), name)

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens: int = 128, *, generator=None, temperature: float = 1.0,
                 top_p: float = 1.0, draft_tokens: int = 0, stop_at_eot: bool = True) -> GenerationOutput:
        """``draft_tokens``: tokens drafted per call (0: as many as the model was trained for);
        ``stop_at_eot`` as the AR's."""
        prompts = _check_prompts(prompts)
        ids = self._prompt_ids(prompts, max_new_tokens, reserve=1)
        eot, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        new, calls = torch.full((len(prompts), max_new_tokens), pad, dtype=torch.long), 0
        self.last_stats = ptp.PTPStats()
        for group, x, m in _length_buckets([[eot] + p for p in ids], pad, self.model.device):  # as the AR's
            rows, stats = ptp.ptp_generate(self.draft, self.model, x, max_new_tokens, draft_tokens=draft_tokens or None,
                                           temperature=temperature, top_p=top_p, generator=generator,
                                           attention_mask=m, stop_at_eot=stop_at_eot)
            new[group] = rows.cpu()
            calls = max(calls, stats.calls)
            self.last_stats.calls += stats.calls
            self.last_stats.verify_calls += stats.verify_calls
            self.last_stats.tokens_per_call += stats.tokens_per_call
        return self._finish(prompts, new, calls)


class _TokenDiffusionAdapter(LanguageModelAdapter):
    """What the token-diffusion adapters share: prompts batched by length and filled after the clamped
    prompt by ``generate_fn(model, x, max_new_tokens, prompt_mask=, generator=, **options)``, and the
    Monte Carlo bound ``bound(model, ids, prefix_len=, n_samples=, generator_seed=)`` text by text."""

    generate_fn = None
    bound = None

    def _fill(self, prompts, max_new_tokens: int, generator, **options) -> GenerationOutput:
        prompts = _check_prompts(prompts)
        ids = self._prompt_ids(prompts, max_new_tokens, reserve=0)
        new, nfe = torch.zeros(len(prompts), max_new_tokens, dtype=torch.long), 0
        for group, x, m in _length_buckets(ids, self.tokenizer.pad_token_id, self.model.device):
            rows, n = type(self).generate_fn(self.model, x, max_new_tokens, generator=generator, prompt_mask=m,
                                             **options)
            new[group] = rows.cpu()
            nfe = max(nfe, n)  # every sample saw at most n evaluations (batches run separately)
        return self._finish(prompts, new, nfe)

    @torch.no_grad()
    def _nll(self, texts, prefix_len: int = 0, *, n_samples: int = 32, progress: bool = False,
             seed: int = 0) -> NLLOutput:
        units = self._score_units(texts, prefix_len)
        means, ses = [], []
        for i, (ids, _) in enumerate(tqdm(units, desc=f"nll {self.name}", disable=not progress)):
            x = torch.tensor([ids], device=self.model.device)
            m, se = type(self).bound(self.model, x, prefix_len=prefix_len, n_samples=n_samples,
                                     generator_seed=seed + i)
            means.append(float(m[0]))
            ses.append(float(se[0]))
        return summarise_nll(means, ses, units, prefix_len, exact=False)


class MDLMAdapter(_TokenDiffusionAdapter):
    kind = "mdlm"
    generate_fn, bound = mdlm_decoders.generate, mdlm.nll_bound

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens: int = 128, *, generator=None, decoder: str = "ancestral",
                 num_inference_steps: int = 64, threshold: float = 0.9, temperature: float = 1.0
                 ) -> GenerationOutput:
        return self._fill(prompts, max_new_tokens, generator, decoder=decoder, steps=num_inference_steps,
                          threshold=threshold, temperature=temperature)


class UniformAdapter(_TokenDiffusionAdapter):
    """Uniform-state token diffusion (baselines/uniform_diffusion.py): ancestral or Psi sampling, and the
    NELBO of its ``loss_steps``-step reverse process as the likelihood bound."""

    kind = "duo"
    generate_fn, bound = uniform.generate, uniform.nll_bound

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens: int = 128, *, generator=None, decoder: str = "ancestral",
                 num_inference_steps: int = 64, temperature: float = 1.0, corrector: float = 0.5,
                 corrector_interval: tuple[float, float] = (0.0, 1.0)) -> GenerationOutput:
        return self._fill(prompts, max_new_tokens, generator, decoder=decoder, steps=num_inference_steps,
                          temperature=temperature, corrector=corrector,
                          corrector_interval=tuple(corrector_interval))


class ScoreEntropyAdapter(_TokenDiffusionAdapter):
    """Score-entropy diffusion with uniform transitions (baselines/score_entropy_diffusion.py): Tweedie
    tau-leaping, and the score-entropy bound (plus its prior term) as the likelihood bound."""

    kind = "sedd"
    generate_fn, bound = sedd.generate, sedd.nll_bound

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens: int = 128, *, generator=None,
                 num_inference_steps: int = 64) -> GenerationOutput:
        return self._fill(prompts, max_new_tokens, generator, steps=num_inference_steps)


GENERATION_CHUNK = 64  # prompts per forward batch: bounds generation memory whatever the number of prompts


PAD_SLACK = 0.25  # a batch of prompts holds lengths within 25% (or 4 tokens) of its shortest


def _length_buckets(ids: list[list[int]], pad: int, device, size: int | None = None
                    ) -> list[tuple[list[int], torch.Tensor, torch.Tensor | None]]:
    """Prompts in batches of similar length: (indices into ``ids``, their ids left-padded to the
    longest (b, s), attention mask (b, s) or None when every length is equal). Batches hold at most
    ``size`` (GENERATION_CHUNK) prompts, and lengths within PAD_SLACK of the batch's shortest, so
    padding wastes little compute (what a CPU pays for) while batches stay large (what a GPU wants)."""
    size = size or GENERATION_CHUNK
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    groups: list[list[int]] = []
    for i in order:
        g = groups[-1] if groups else None
        shortest = len(ids[g[0]]) if g else 0
        if g is None or len(g) >= size or len(ids[i]) - shortest > max(4, PAD_SLACK * shortest):
            groups.append([i])
        else:
            g.append(i)
    batches = []
    for g in groups:
        rows = [ids[i] for i in g]
        width = max(len(r) for r in rows)
        x = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long, device=device)
        m = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=device)
        batches.append((g, x, None if bool(m.all()) else m))
    return batches


def _scoring_batches(units, start_id: int, pad_id: int, batch_size: int, device, desc: str, progress: bool):
    """Batches of texts to score exactly: each row ``start_id`` then the text's ids, right-padded with
    ``pad_id``; yields ids (b, s) and the mask of real tokens (b, s) on ``device``."""
    for i in tqdm(range(0, len(units), batch_size), desc=desc, disable=not progress):
        chunk = units[i : i + batch_size]
        width = max(len(ids) for ids, _ in chunk) + 1
        x = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        m = torch.zeros_like(x)
        for r, (ids, _) in enumerate(chunk):
            x[r, : len(ids) + 1] = torch.tensor([start_id] + ids)
            m[r, : len(ids) + 1] = 1
        yield x.to(device), m.to(device)


def summarise_nll(per_text: list[float], ses: list[float], units, prefix_len: int, exact: bool) -> NLLOutput:
    """The :class:`NLLOutput` of the nats of each text (``per_text``) and their Monte Carlo standard errors
    (``ses``, zeros when exact), for the ``units`` of :meth:`LanguageModelAdapter._score_units`."""
    return _summary(per_text, ses, [len(ids) - prefix_len for ids, _ in units], [c for _, c in units], exact)


def _summary(per_text: list[float], ses: list[float], tokens: list[int], chars: list[int], exact: bool) -> NLLOutput:
    n_tokens, n_chars, total = sum(tokens), sum(chars), sum(per_text)
    stderr = math.sqrt(sum(s * s for s in ses)) / n_tokens  # independent estimates per text
    return NLLOutput(total / n_tokens, stderr, total / math.log(2) / n_chars, n_tokens, n_chars, exact,
                     list(per_text), list(tokens), list(ses), list(chars))


class LatentAdapter(LanguageModelAdapter):
    """The latent diffusion pipeline behind the common interface."""

    kind = "latent"

    def __init__(self, pipe, name: str | None = None) -> None:
        self.pipe, self.tokenizer, self.model = pipe, pipe.tokenizer, pipe.denoiser
        self.name = name or self.kind

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None, device: torch.device | str = "cpu") -> LatentAdapter:
        return cls(load_pipeline(folder).to(device), name)

    @property
    def context(self) -> int:
        return int(self.pipe.autoencoder.config.max_seq_len)

    def generate(self, prompts, max_new_tokens: int = 128, *, generator=None, num_inference_steps: int = 32,
                 guidance_scale: float = 1.0, guidance_interval: tuple[float, float] = (0.0, 1.0),
                 corrector_steps: int = 0, scheduler: str | None = None, mode: str | None = None,
                 window_blocks: int | None = None, decoder_temperature: float = 0.0,
                 denoising_end: float = 1.0, project_below: float = 0.0, stop_at_eot: bool = True
                 ) -> GenerationOutput:
        """``mode`` and ``window_blocks``: None for the pipeline's own (its preset's ``sampling_mode``);
        ``decoder_temperature``, ``denoising_end``, ``project_below`` and ``stop_at_eot``: as the pipeline's."""
        prompts = _check_prompts(prompts)
        if scheduler is not None:
            self.pipe.scheduler = make_scheduler(scheduler, self.pipe.denoiser)
        out = self.pipe(prompts, max_new_tokens=max_new_tokens, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, guidance_interval=guidance_interval,
                        corrector_steps=corrector_steps, generator=generator, mode=mode,
                        window_blocks=window_blocks, decoder_temperature=decoder_temperature,
                        denoising_end=denoising_end, project_below=project_below, stop_at_eot=stop_at_eot)
        return GenerationOutput(out.texts, out.continuations, out.nfe, out.prompts, out.sequences)

    def _nll(self, texts, prefix_len: int = 0, *, n_samples: int = 32, progress: bool = False,
             seed: int = 0) -> NLLOutput:
        units = self._score_units(texts, prefix_len)
        nats, ses, _ = pipeline_nll_bound(self.pipe, [ids for ids, _ in units], prefix_len=prefix_len,
                                          n_samples=n_samples, seed=seed)  # the tokens every model scores
        return summarise_nll(nats, ses, units, prefix_len, exact=False)


class HFCausalLMAdapter(LanguageModelAdapter):
    """Any saved transformers causal LM (``AutoModelForCausalLM``) with its own tokenizer: sampling
    through ``generate()``, the exact likelihood from its logits. Texts start after its beginning-of-text
    token (end-of-text when it has none, as GPT-2) and are scored up to its end-of-text, like ours; with
    another tokenizer, compare models by bits per character."""

    kind = "hf"
    exact = True

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None, device: torch.device | str = "cpu"
             ) -> HFCausalLMAdapter:
        return load_hf_causal_lm(folder, name, torch.device(device))

    @property
    def context(self) -> int:
        c = self.model.config
        return int(getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None) or 1024)

    @property
    def _start_id(self) -> int:
        t = self.tokenizer
        return t.bos_token_id if t.bos_token_id is not None else t.eos_token_id

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens: int = 128, *, generator=None, temperature: float = 1.0,
                 top_p: float = 1.0, stop_at_eot: bool = True) -> GenerationOutput:
        """Samples of ``generate()`` (greedy at temperature 0); ``generator`` seeds them (transformers
        draws from torch's global generator, which is restored afterwards). ``stop_at_eot=False``: every
        row runs to ``max_new_tokens`` (the texts still end at the first end-of-text)."""
        ar.check_sampling(temperature, top_p)
        prompts = _check_prompts(prompts)
        ids = self._prompt_ids(prompts, max_new_tokens, reserve=1)
        eot = self.tokenizer.eos_token_id
        seed = int(torch.randint(2**62, (1,), generator=generator)) if generator is not None else 0
        new, nfe = torch.full((len(prompts), max_new_tokens), eot, dtype=torch.long), 0
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else \
            dict(do_sample=False)
        with torch.random.fork_rng(devices=[self.model.device] if self.model.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for group, x, m in _length_buckets([[self._start_id] + p for p in ids], eot, self.model.device):
                mask = torch.ones_like(x) if m is None else m
                out = self.model.generate(input_ids=x, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          pad_token_id=eot, eos_token_id=eot if stop_at_eot else None, **sampling)
                rows = out[:, x.shape[1]:].cpu()
                new[group, : rows.shape[1]] = rows
                nfe = max(nfe, rows.shape[1])
        return self._finish(prompts, new, nfe)

    @torch.no_grad()
    def _nll(self, texts, prefix_len: int = 0, *, batch_size: int = 16, progress: bool = False) -> NLLOutput:
        units = self._score_units(texts, prefix_len)
        per_text = []
        for x, m in _scoring_batches(units, self._start_id, self.tokenizer.eos_token_id, batch_size,
                                     self.model.device, f"nll {self.name}", progress):
            logits = self.model(input_ids=x, attention_mask=m).logits[:, :-1].float()
            nll = -logits.log_softmax(-1).gather(-1, x[:, 1:, None]).squeeze(-1) * m[:, 1:]
            nll[:, :prefix_len] = 0
            per_text += nll.sum(-1).tolist()
        return summarise_nll(per_text, [0.0] * len(per_text), units, prefix_len, exact=True)


def load_hf_causal_lm(folder: str | Path, name: str | None = None, device: torch.device | None = None
                      ) -> HFCausalLMAdapter:
    """A transformers causal LM folder and its tokenizer (local files only, no remote code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not any((Path(folder) / f).is_file() for f in TOKENIZER_FILES):  # transformers would build an empty one
        raise CheckpointError(f"{folder} has no tokenizer ({', '.join(TOKENIZER_FILES)}): save the model's "
                              "tokenizer next to it (tokenizer.save_pretrained)")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as e:  # malformed tokenizer files
        raise CheckpointError(f"{folder} has no usable tokenizer (save it with the model): {e}") from e
    if tok.eos_token_id is None:
        raise CheckpointError(f"the tokenizer of {folder} has no end-of-text token; texts could not be scored "
                              "to their end")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as e:  # not a causal LM, bad weights...
        raise CheckpointError(f"cannot load {folder} as a transformers causal LM: {e}") from e
    if len(tok) > model.config.vocab_size:
        raise CheckpointError(f"the tokenizer of {folder} has {len(tok)} tokens, more than the model's vocabulary "
                              f"of {model.config.vocab_size}: it is not the model's tokenizer")
    return HFCausalLMAdapter(model.to(device or "cpu"), tok, name)


def load_language_model(folder: str | Path, name: str | None = None, device: str | torch.device = "cpu"
                        ) -> LanguageModelAdapter:
    """The evaluation adapter of the model saved in ``folder``: a latent diffusion pipeline
    folder (``model_index.json``), a baseline or PTP model (kind read from ``config.json``), or any
    transformers causal LM folder with its tokenizer, on ``device`` (a torch device or a name for
    :func:`~latentlm.device.resolve_device`, e.g. ``"auto"``)."""
    device = device if isinstance(device, torch.device) else resolve_device(device)
    return resolve(kind_of_folder(folder).adapter).load(folder, name, device)
