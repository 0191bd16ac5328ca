"""Bad-input matrix with hypothesis: every call returns a result or raises one of our typed
errors with a message; never another exception, never a hang (pytest-timeout per test)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentlm import LatentDiffusionPipeline
from latentlm.autoencoder import TextAutoencoder
from latentlm.baselines import CausalLM
from latentlm.baselines.masked_diffusion import MaskedDiffusionLM
from latentlm.diffusion import LatentDenoiser
from latentlm.errors import LatentLMError
from latentlm.eval.models import ARAdapter, MDLMAdapter
from latentlm.pipeline_latent_diffusion import make_scheduler

# unicode incl. control characters and lone surrogates, very long strings, only whitespace
PROMPTS = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=200),
    st.text(alphabet=" \t\n\r\x0b\x0c", max_size=50),
    st.builds(lambda s, n: s * n, st.text(max_size=5), st.integers(0, 5000)),
    st.sampled_from(["", "\x00", "\ud800", "<eot>", "<mask><pad>", "once upon a time"]),
)
INTS = st.one_of(st.integers(-5, 40), st.sampled_from([0, -1, 10**9]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.0, -0.5, 3.0]))
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
CASES = {"n": 0}


@pytest.fixture(scope="module")
def models(tiny_tokenizer):
    torch.manual_seed(0)
    ae = TextAutoencoder(vocab_size=len(tiny_tokenizer), max_seq_len=32, latent_dim=8, dim=32, encoder_depth=1,
                         decoder_depth=1).eval()
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=8).eval()
    pipe = LatentDiffusionPipeline(tiny_tokenizer, ae, den, make_scheduler("ddim", den))
    ar = ARAdapter(CausalLM(vocab_size=len(tiny_tokenizer), dim=32, depth=1, n_heads=4, max_seq_len=64),
                   tiny_tokenizer)
    mdlm = MDLMAdapter(MaskedDiffusionLM(vocab_size=len(tiny_tokenizer), dim=32, depth=1, n_heads=4,
                                         max_seq_len=64), tiny_tokenizer)
    return pipe, ar, mdlm


def _call(fn):
    CASES["n"] += 1
    try:
        return fn()
    except LatentLMError as e:
        assert str(e), "typed errors carry a message"
        return None


@pytest.mark.timeout(300)
@SETTINGS
@given(prompt=PROMPTS, new=INTS, steps=INTS, guidance=FLOATS, samples=st.integers(-1, 3))
def test_pipeline_fuzz(models, prompt, new, steps, guidance, samples):
    pipe = models[0]
    out = _call(lambda: pipe(prompt, max_new_tokens=new, num_inference_steps=steps, guidance_scale=guidance,
                             num_samples_per_prompt=samples, generator=torch.Generator().manual_seed(0)))
    if out is not None:
        assert all(t.startswith(prompt) for t in out.texts)
        assert 0 < new and 0 < steps and guidance >= 0 and math.isfinite(guidance) and samples >= 1


@pytest.mark.timeout(300)
@SETTINGS
@given(prompt=PROMPTS, new=INTS, steps=INTS, decoder=st.sampled_from(["ancestral", "llada", "threshold",
                                                                       "anchor", "bogus"]))
def test_mdlm_fuzz(models, prompt, new, steps, decoder):
    mdlm = models[2]
    out = _call(lambda: mdlm.generate([prompt], new, decoder=decoder, num_inference_steps=steps,
                                      generator=torch.Generator().manual_seed(0)))
    if out is not None:
        assert out.texts[0].startswith(prompt)


@pytest.mark.timeout(300)
@SETTINGS
@given(prompt=PROMPTS, new=INTS, temperature=FLOATS)
def test_ar_fuzz(models, prompt, new, temperature):
    ar = models[1]
    out = _call(lambda: ar.generate([prompt], new, temperature=temperature,
                                    generator=torch.Generator().manual_seed(0)))
    if out is not None:
        assert out.texts[0].startswith(prompt)


@pytest.mark.timeout(300)
@SETTINGS
@given(text=PROMPTS, prefix=INTS)
def test_nll_fuzz(models, text, prefix):
    ar = models[1]
    _call(lambda: ar.nll([text], prefix_len=prefix))


def test_enough_cases_ran():
    """Runs last in this module: at least 1,000 generated cases went through the matrix."""
    assert CASES["n"] >= 1000, CASES
