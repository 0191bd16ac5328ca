"""A model kind in one file: a bigram language model, its training recipe and its evaluation adapter,
registered with one call at the bottom. ``tests/test_kinds.py`` trains, saves, loads, generates and
compares it; nothing else in the library names it."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from latentlm.eval.models import LanguageModelAdapter, NLLOutput, summarise_nll
from latentlm.kinds import ModelKind, register_kind
from latentlm.outputs import GenerationOutput, LossOutput
from latentlm.recipes import Recipe


class BigramLM(ModelMixin, ConfigMixin):
    """p(x_i | x_{i-1}): one row of logits per previous token."""

    @register_to_config
    def __init__(self, vocab_size: int, max_seq_len: int = 256) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(vocab_size, vocab_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.logits[input_ids]  # (b, s, vocab): the next token's logits


def bigram_loss(model: BigramLM, batch: dict[str, torch.Tensor]) -> LossOutput:
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    targets = ids[:, 1:] if mask is None else ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return LossOutput(F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), targets.flatten(), ignore_index=-100))


@dataclasses.dataclass
class BigramConfig:
    """Model section (``[bigram.model]``)."""

    max_seq_len: int = 256

    def validate(self) -> None:
        pass


def bigram_recipe() -> Recipe:
    return Recipe("bigram", BigramConfig, lambda cfg, tok, ctx: BigramLM(len(tok), cfg["model"].max_seq_len),
                  lambda cfg, ctx: bigram_loss)


class BigramAdapter(LanguageModelAdapter):
    kind = "bigram"
    exact = True

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens: int = 128, *, generator=None, temperature: float = 1.0
                 ) -> GenerationOutput:
        ids = self._prompt_ids(list(prompts), max_new_tokens, reserve=1)
        eot = self.tokenizer.eos_token_id
        last = torch.tensor([(p or [eot])[-1] for p in ids])
        new = []
        for _ in range(max_new_tokens):
            probs = (self.model(last) / max(temperature, 1e-6)).softmax(-1)
            last = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            new.append(last)
        return self._finish(list(prompts), torch.stack(new, 1), max_new_tokens)

    @torch.no_grad()
    def _nll(self, texts, prefix_len: int = 0, **_) -> NLLOutput:
        units = self._score_units(texts, prefix_len)
        per_text = []
        for ids, _ in units:
            x = torch.tensor([self.tokenizer.eos_token_id, *ids])
            nll = -self.model(x[:-1]).log_softmax(-1).gather(-1, x[1:, None]).squeeze(-1)
            per_text.append(float(nll[prefix_len:].sum()))
        return summarise_nll(per_text, [0.0] * len(per_text), units, prefix_len, exact=True)


KIND = register_kind(ModelKind(
    "bigram", "a bigram language model (an example kind)", recipe="tests.toy_kind:bigram_recipe",
    model_class="tests.toy_kind:BigramLM", adapter="tests.toy_kind:BigramAdapter", options=("temperature",),
    diversity_knobs={"temperature": (0.5, 1.0)}))
