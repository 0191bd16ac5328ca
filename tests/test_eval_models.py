"""The common generate / nll interface over AR, MDLM and the latent pipeline."""

import math

import pytest
import torch

from latentlm.baselines import CausalLM
from latentlm.baselines.masked_diffusion import MaskedDiffusionLM
from latentlm.errors import InputError
from latentlm.eval.models import ARAdapter, MDLMAdapter, load_language_model


@pytest.fixture
def ar(tiny_tokenizer):
    torch.manual_seed(0)
    return ARAdapter(CausalLM(vocab_size=len(tiny_tokenizer), dim=32, depth=1, n_heads=4, max_seq_len=64),
                     tiny_tokenizer)


@pytest.fixture
def mdlm(tiny_tokenizer):
    torch.manual_seed(0)
    return MDLMAdapter(MaskedDiffusionLM(vocab_size=len(tiny_tokenizer), dim=32, depth=1, n_heads=4,
                                         max_seq_len=64), tiny_tokenizer)


@pytest.mark.parametrize("which", ["ar", "mdlm"])
def test_generate_keeps_prompts_and_counts_nfe(which, ar, mdlm):
    lm = {"ar": ar, "mdlm": mdlm}[which]
    kw = {} if which == "ar" else {"steps": 4, "decoder": "llada"}
    out = lm.generate(["lily had", "the sun", "a"], 8, generator=torch.Generator().manual_seed(0), **kw)
    assert [t[: len(p)] for t, p in zip(out.texts, ["lily had", "the sun", "a"])] == ["lily had", "the sun", "a"]
    assert all(t == p + c for t, p, c in zip(out.texts, ["lily had", "the sun", "a"], out.continuations))
    assert out.nfe > 0


@pytest.mark.parametrize("which", ["ar", "mdlm"])
def test_nll_units_and_prefix(which, ar, mdlm):
    lm = {"ar": ar, "mdlm": mdlm}[which]
    kw = {} if which == "ar" else {"n_samples": 8}
    texts = ["lily had a red kite.", "the sun was warm."]
    full = lm.nll(texts, **kw)
    cond = lm.nll(texts, prefix_len=2, **kw)
    assert full.n_tokens == cond.n_tokens + 4
    assert full.nats_per_token > 0 and full.bits_per_char > 0
    assert math.isclose(full.bits_per_char, sum(full.per_text) / math.log(2) / full.n_chars)
    assert full.exact == (which == "ar") and (full.stderr == 0) == (which == "ar")


def test_bad_input(ar, mdlm):
    with pytest.raises(InputError, match="empty prompt list"):
        ar.generate([], 4)
    with pytest.raises(InputError, match="max_new_tokens"):
        mdlm.generate(["a"], 0)
    with pytest.raises(InputError, match="exceeds the context"):
        ar.generate(["the sun was warm. " * 40], 16)
    with pytest.raises(InputError, match="unknown decoder"):
        mdlm.generate(["a"], 4, decoder="greedy")
    with pytest.raises(InputError, match="no text"):
        ar.nll([])
    with pytest.raises(InputError, match="leaves nothing"):
        ar.nll(["a b"], prefix_len=10)


def test_loader_rejects_non_language_models(tmp_path, tiny_tokenizer):
    from latentlm.autoencoder import TextAutoencoder

    TextAutoencoder(vocab_size=len(tiny_tokenizer), max_seq_len=16, dim=32, encoder_depth=1,
                    decoder_depth=1).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(InputError, match="not a language model"):
        load_language_model(tmp_path)


def test_generation_is_chunked_so_memory_is_bounded(ar, mdlm, monkeypatch):
    import latentlm.eval.models as models

    prompts = ["lily had a red kite."] * 5 + ["tom."]
    monkeypatch.setattr(models, "GENERATION_CHUNK", 2)
    assert models._same_length_groups([[1]] * 5 + [[1, 2]]) == [[0, 1], [2, 3], [4], [5]]
    for lm in (ar, mdlm):
        out = lm.generate(prompts, 6, generator=torch.Generator().manual_seed(0))
        assert len(out.texts) == 6 and all(t.startswith(p) for t, p in zip(out.texts, prompts))
