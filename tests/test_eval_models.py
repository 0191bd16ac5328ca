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
    kw = {} if which == "ar" else {"num_inference_steps": 4, "decoder": "llada"}
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
    batches = models._length_buckets([[7, 8], [5]] + [[5]] * 2, 0, "cpu")
    assert [(g, x.tolist()) for g, x, _ in batches] == [([1, 2], [[5], [5]]), ([3, 0], [[0, 5], [7, 8]])]
    assert batches[0][2] is None and batches[1][2].tolist() == [[0, 1], [1, 1]]  # no mask when lengths agree
    long = models._length_buckets([[1] * 40, [1] * 20, [1] * 48, [1] * 22], 0, "cpu", size=8)
    assert [g for g, _, _ in long] == [[1, 3], [0, 2]]  # lengths more than 25% apart are not padded together
    for lm in (ar, mdlm):
        out = lm.generate(prompts, 6, generator=torch.Generator().manual_seed(0))
        assert len(out.texts) == 6 and all(t.startswith(p) for t, p in zip(out.texts, prompts))


PROMPTS = ["lily had a red kite and", "tom.", "the sun was warm. ben", ""]


def test_left_padding_changes_nothing_for_the_ar(ar):
    """Prompts of different lengths share a batch (left padding + mask): each row's logits and greedy
    continuation are those of the prompt alone (rotary attention sees relative positions only)."""
    from latentlm.baselines.autoregressive import generate

    eot, pad = ar.tokenizer.eos_token_id, ar.tokenizer.pad_token_id
    ids = [[eot] + ar.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    width = max(map(len, ids))
    x = torch.tensor([[pad] * (width - len(r)) + r for r in ids])
    m = (torch.arange(width)[None] >= torch.tensor([width - len(r) for r in ids])[:, None]).long()
    batched = ar.model(x, attention_mask=m)
    for r, row in enumerate(ids):
        alone = ar.model(torch.tensor([row]))[0]
        torch.testing.assert_close(batched[r, width - len(row):], alone, atol=1e-5, rtol=1e-4)
    together = ar.generate(PROMPTS, 8, temperature=0).continuations
    assert together == [ar.generate([p], 8, temperature=0).continuations[0] for p in PROMPTS]
    new, _ = generate(ar.model, x, 8, temperature=0, attention_mask=m)
    assert new[0].tolist() == generate(ar.model, torch.tensor([ids[0]]), 8, temperature=0)[0][0].tolist()


def test_left_padding_changes_nothing_for_mdlm(mdlm):
    """Same for MDLM: with the prompts left-padded and masked, every row's SUBS log-probabilities over
    [prompt, masks] are those of the prompt alone. (Greedy decoders are not compared: an untrained
    model's near-equal confidences make their top-k order hinge on float rounding.)"""
    mask_id, pad, n = mdlm.model.config.mask_token_id, mdlm.tokenizer.pad_token_id, 8
    ids = [mdlm.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    width = max(map(len, ids))
    x = torch.tensor([[pad] * (width - len(r)) + r + [mask_id] * n for r in ids])
    m = torch.tensor([[0] * (width - len(r)) + [1] * (len(r) + n) for r in ids])
    batched = mdlm.model(x, m)
    for r, row in enumerate(ids):
        alone = mdlm.model(torch.tensor([row + [mask_id] * n]))[0]
        torch.testing.assert_close(batched[r, width - len(row):].exp(), alone.exp(), atol=1e-5, rtol=1e-4)
    out = mdlm.generate(PROMPTS, n, decoder="llada", num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert [t[: len(p)] for t, p in zip(out.texts, PROMPTS)] == PROMPTS


def test_padded_generation_rejects_a_mask_of_the_wrong_shape(ar, mdlm):
    from latentlm.baselines.autoregressive import generate as ar_generate
    from latentlm.baselines.mdlm_decoders import generate as mdlm_generate

    x = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(InputError, match="attention_mask"):
        ar_generate(ar.model, x, 4, attention_mask=torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(InputError, match="prompt_mask"):
        mdlm_generate(mdlm.model, x, 4, prompt_mask=torch.ones(3, 3, dtype=torch.long))


def test_devices_resolve_or_fail_clearly(tmp_path, tiny_tokenizer):
    from latentlm.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad, message in (("gpu", "unknown device"), ("meta", "not supported"), ("cuda:99", "cuda")):
        with pytest.raises(InputError, match=message):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU; use --device cpu"):
            resolve_device("cuda")
    CausalLM(vocab_size=len(tiny_tokenizer), dim=32, depth=1, n_heads=4, max_seq_len=64).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    assert load_language_model(tmp_path, device="cpu").model.device.type == "cpu"



def test_every_generator_returns_one_output_type(tiny_tokenizer):
    """Pipeline and adapters give the same fields: prompt, continuation, text = both, ids cut at end-of-text."""
    from latentlm import GenerationOutput, LatentDiffusionPipeline
    from latentlm.autoencoder import TextAutoencoder
    from latentlm.diffusion import LatentDenoiser
    from latentlm.eval.models import LatentAdapter
    from latentlm.pipeline_latent_diffusion import make_scheduler

    torch.manual_seed(0)
    ae = TextAutoencoder(vocab_size=len(tiny_tokenizer), max_seq_len=32, latent_dim=8, dim=32, encoder_depth=1,
                         decoder_depth=1).eval()
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=8).eval()
    pipe = LatentDiffusionPipeline(tiny_tokenizer, ae, den, make_scheduler("ddim", den))
    ar = ARAdapter(CausalLM(vocab_size=len(tiny_tokenizer), dim=32, depth=1, n_heads=4, max_seq_len=64),
                   tiny_tokenizer)
    mdlm = MDLMAdapter(MaskedDiffusionLM(vocab_size=len(tiny_tokenizer), dim=32, depth=1, n_heads=4,
                                         max_seq_len=64), tiny_tokenizer)
    prompts = ["lily had", "tom"]
    outs = [pipe(prompts, max_new_tokens=8, num_inference_steps=2, generator=torch.Generator().manual_seed(0))]
    for lm, kw in ((LatentAdapter(pipe), {"num_inference_steps": 2}), (ar, {}), (mdlm, {"num_inference_steps": 4})):
        outs.append(lm.generate(prompts, 8, generator=torch.Generator().manual_seed(0), **kw))
    eot, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    for out in outs:
        assert isinstance(out, GenerationOutput) and out.prompts == prompts and out.nfe > 0
        assert out.texts == [p + c for p, c in zip(out.prompts, out.continuations)]
        assert out.sequences.shape == (2, 8) and not (out.sequences == eot).any()
        for ids, cont in zip(out.sequences.tolist(), out.continuations):
            assert tiny_tokenizer.decode([t for t in ids if t != pad]) == cont
    texts, conts, nfe, *_ = pipe(prompts, max_new_tokens=8, num_inference_steps=2, return_dict=False,
                                 generator=torch.Generator().manual_seed(0))
    assert texts == outs[0].texts and conts == outs[0].continuations and nfe == 2
