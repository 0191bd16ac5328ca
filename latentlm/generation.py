"""Text in, text out for saved models (used by ``latentlm generate`` and the quickstart)."""

from __future__ import annotations

from pathlib import Path

import torch

from latentlm.baselines.autoregressive import CausalLM, generate
from latentlm.data.tokenizer import load_tokenizer
from latentlm.errors import InputError
from latentlm.loading import load_model


def generate_text(
    model_dir: str | Path,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_samples: int = 1,
    seed: int = 0,
) -> list[str]:
    """Continue ``prompt`` with the model saved in ``model_dir``; return prompt + continuation."""
    if num_samples < 1:
        raise InputError(f"num_samples must be positive, got {num_samples}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise InputError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    model = load_model(model_dir)
    if not isinstance(model, CausalLM):
        raise InputError(f"{model_dir} holds a {type(model).__name__}, which cannot generate text alone")
    tok = load_tokenizer(model_dir)
    model.eval()
    ids = [tok.eos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor([ids] * num_samples)
    new, _ = generate(model, input_ids, max_new_tokens, temperature=temperature, top_p=top_p,
                      generator=torch.Generator().manual_seed(seed))
    texts = []
    for row in new.tolist():
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id)]
        texts.append(prompt + tok.decode(row))
    return texts
