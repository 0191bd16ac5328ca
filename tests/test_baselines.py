import pytest
import torch

from latentlm.baselines.autoregressive import CausalLM, sequence_nll
from latentlm.baselines.autoregressive import generate as ar_generate
from latentlm.baselines.masked_diffusion import (
    MaskedDiffusionLM,
    _mask_tokens,
    exact_nll_by_orders,
    mdlm_loss,
    nelbo_terms,
    nll_bound,
)
from latentlm.baselines.mdlm_decoders import DECODERS, generate
from latentlm.errors import InputError


@pytest.fixture
def mdlm():
    torch.manual_seed(0)
    return MaskedDiffusionLM(vocab_size=12, dim=32, depth=2, n_heads=4, max_seq_len=64, mask_token_id=2).eval()


def test_subs_zero_mask_probability_and_carry_over(mdlm):
    x = torch.tensor([[5, 2, 7, 2, 9, 2]])
    logp = mdlm(x)
    probs = logp.exp()
    assert (probs[..., 2] == 0).all()  # never predicts the mask token
    assert torch.allclose(probs.sum(-1), torch.ones(1, 6))
    for pos in (0, 2, 4):  # unmasked tokens carried over with probability 1
        assert probs[0, pos, x[0, pos]] == 1.0


@pytest.mark.parametrize("decoder", DECODERS)
def test_revealed_tokens_never_change_and_prompt_is_clamped(mdlm, decoder):
    """Record the sequence after every network call: a revealed token keeps its value."""
    history = []
    original = mdlm.forward

    def spy(ids, *a, **k):
        history.append(ids.clone())
        return original(ids, *a, **k)

    mdlm.forward = spy
    prompt = torch.tensor([[5, 6, 7], [8, 9, 10]])
    new, nfe = generate(mdlm, prompt, 10, decoder=decoder, steps=5, generator=torch.Generator().manual_seed(0))
    del mdlm.forward
    assert new.shape == (2, 10) and (new != 2).all()
    if decoder == "ancestral":  # calls may cover only the rows that changed; NFE is the most any row saw
        assert 1 <= nfe <= len(history) and nfe <= 10
    else:
        assert nfe == len(history) and 1 <= nfe <= 5
    final = torch.cat([prompt, new], 1)
    for snap in history:
        for row in snap:  # each evaluated row is one of the batch's rows, mid-way
            revealed = row != 2
            assert any(torch.equal(row[revealed], f[revealed]) and torch.equal(row[:3], f[:3]) for f in final)


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoders_share_one_signature_and_callback(mdlm, decoder):
    """Every decoder is f(model_fn, x, mask_id, *, steps, temperature, generator, callback) -> (x, nfe) and
    calls back with the dict the latent samplers use; the callback's last state is the result."""
    fn = DECODERS[decoder]
    x = torch.tensor([[5, 6] + [2] * 6])
    seen = []
    out, nfe = fn(lambda xs, rows=None, attention=False: mdlm(xs, return_attention_layers=1) if attention else mdlm(xs),
                  x, 2, steps=3, temperature=1.0, generator=torch.Generator().manual_seed(0), callback=seen.append)
    assert {tuple(sorted(info)) for info in seen} == {("i", "t", "x", "x0")}
    assert [info["i"] for info in seen] == list(range(len(seen))) and seen[-1]["t"] == pytest.approx(1 - len(seen) / 3)
    assert torch.equal(seen[-1]["x"], out) and (out != 2).all() and torch.equal(out[:, :2], x[:, :2])
    assert seen[0]["x0"].shape == x.shape and torch.equal(x, torch.tensor([[5, 6] + [2] * 6]))  # input kept
    assert 1 <= nfe <= 3


def test_ancestral_cache_skips_calls_when_nothing_changes(mdlm):
    _, nfe = generate(mdlm, torch.tensor([[5]]), 4, decoder="ancestral", steps=200,
                      generator=torch.Generator().manual_seed(0))
    assert nfe <= 4  # at most one evaluation per revealed token, not one per step
    # per row in a batch: rows reveal at different steps, yet none is evaluated more often than alone
    rows = []
    original = mdlm.forward
    mdlm.forward = lambda ids, *a, **k: rows.append(len(ids)) or original(ids, *a, **k)
    _, nfe = generate(mdlm, torch.tensor([[5], [6], [7], [8]]), 4, decoder="ancestral", steps=200,
                      generator=torch.Generator().manual_seed(0))
    del mdlm.forward
    assert nfe <= 4 and sum(rows) <= 16 and len(rows) > 4  # separate reveals, no re-evaluation of the rest


def test_float64_sampling_is_deterministic_under_a_generator(mdlm):
    a, _ = generate(mdlm, torch.tensor([[5, 6]]), 8, decoder="llada", steps=4, generator=torch.Generator().manual_seed(3))
    b, _ = generate(mdlm, torch.tensor([[5, 6]]), 8, decoder="llada", steps=4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_bound_is_never_below_exact_nll_on_a_toy(mdlm):
    """Tiny vocabulary and length: enumerate every unmasking order for the exact likelihood."""
    torch.manual_seed(1)
    for seq in ([3, 4, 5], [7, 7, 3, 9], [4, 5]):
        x = torch.tensor([seq])
        exact, order_bound = exact_nll_by_orders(mdlm, x)
        mean, se = nll_bound(mdlm, x, n_samples=1500)
        assert order_bound >= exact - 1e-9  # Jensen: the NELBO's expectation bounds -log p(x)
        assert abs(float(mean[0]) - order_bound) < 4 * float(se[0]) + 1e-3  # MC estimates that expectation
        assert float(mean[0]) + 3 * float(se[0]) >= exact


def test_conditional_bound_scores_only_the_suffix(mdlm):
    x = torch.tensor([[3, 4, 5, 6, 7, 8]])
    full, _ = nll_bound(mdlm, x, n_samples=256)
    cond, _ = nll_bound(mdlm, x, prefix_len=3, n_samples=256)
    assert 0 < float(cond[0]) < float(full[0])
    with pytest.raises(InputError):
        nll_bound(mdlm, x, prefix_len=6)


def test_mdlm_loss_is_finite_and_learns_something(mdlm):
    batch = {"input_ids": torch.randint(3, 12, (8, 16))}
    mdlm.train()
    opt = torch.optim.Adam(mdlm.parameters(), 1e-2)
    first = None
    for _ in range(30):
        loss = mdlm_loss(mdlm, {"input_ids": batch["input_ids"][:, :1].repeat(1, 16)}).loss
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and float(loss.detach()) < first / 2


def test_the_masked_positions_loss_equals_the_full_forwards(mdlm):
    """The NELBO runs the head at masked positions only; its terms and gradients are those of the
    SUBS log-probabilities of every position (the model's forward), gathered at the masked ones."""
    ids = torch.randint(3, 12, (6, 20))
    t = torch.linspace(0.1, 0.9, 6)
    weight = (torch.arange(20) < 15).float().expand(6, 20)
    torch.manual_seed(3)
    fast = nelbo_terms(mdlm, ids, t, weight_mask=weight)
    fast_grads = torch.autograd.grad(fast.sum(), list(mdlm.parameters()))
    torch.manual_seed(3)
    xt = _mask_tokens(ids, t[:, None], mdlm.config.mask_token_id, None)
    nll = -mdlm(xt).gather(-1, ids[..., None]).squeeze(-1)
    slow = (torch.where(xt == mdlm.config.mask_token_id, nll, 0.0) * weight).sum(-1) / t
    slow_grads = torch.autograd.grad(slow.sum(), list(mdlm.parameters()))
    assert (xt == mdlm.config.mask_token_id).any() and (xt != mdlm.config.mask_token_id).any()
    torch.testing.assert_close(fast, slow)
    for a, b in zip(fast_grads, slow_grads):
        torch.testing.assert_close(a, b)


def test_decoder_bad_input(mdlm):
    p = torch.tensor([[5]])
    with pytest.raises(InputError, match="unknown decoder"):
        generate(mdlm, p, 4, decoder="beam")
    with pytest.raises(InputError, match="max_new_tokens"):
        generate(mdlm, p, 0)
    with pytest.raises(InputError, match="exceeds the context"):
        generate(mdlm, torch.ones(1, 60, dtype=torch.long), 10)
    with pytest.raises(InputError, match="steps"):
        generate(mdlm, p, 4, steps=0)


def test_ar_cached_step_equals_uncached():
    torch.manual_seed(0)
    m = CausalLM(vocab_size=20, dim=32, depth=2, n_heads=4, max_seq_len=32).eval()
    ids = torch.randint(3, 20, (2, 12))
    full = m(ids)
    cache = m.new_cache()
    steps = [m(ids[:, :5], kv_caches=cache)] + [m(ids[:, i : i + 1], kv_caches=cache) for i in range(5, 12)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_ar_generates_past_its_context_with_a_sliding_window():
    # one layer: a cached key depends on its token and position only, so the rolling cache must give what a
    # fresh pass over the last max_seq_len tokens gives (rotary attention sees only relative positions)
    torch.manual_seed(0)
    m = CausalLM(vocab_size=30, dim=32, depth=1, n_heads=4, max_seq_len=8).eval()
    prompt = torch.tensor([[1, 5, 9]])
    new, nfe = ar_generate(m, prompt, 20, temperature=0, stop_at_eot=False)
    assert new.shape == (1, 20) and nfe == 20
    seq = prompt
    for _ in range(20):
        nxt = m(seq[:, -8:])[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(new, seq[:, 3:])
    within, _ = ar_generate(m, prompt, 5, temperature=0, stop_at_eot=False)  # inside the context: unchanged
    assert torch.equal(within, new[:, :5])
    with pytest.raises(InputError, match="prompt of 9 tokens exceeds the context of 8"):
        ar_generate(m, torch.ones(1, 9, dtype=torch.long), 4)
    with pytest.raises(InputError, match="exceeds the limit of 16384 per call"):
        ar_generate(m, prompt, 10**9)  # rejected before anything is allocated


def test_ar_exact_nll_matches_chain_rule():
    torch.manual_seed(0)
    m = CausalLM(vocab_size=10, dim=16, depth=1, n_heads=2, max_seq_len=16).eval()
    x = torch.tensor([[1, 4, 5, 6, 1]])
    total = float(sequence_nll(m, x))
    manual = 0.0
    for i in range(1, 5):
        manual -= float(m(x[:, :i])[0, -1].log_softmax(-1)[x[0, i]])
    assert abs(total - manual) < 1e-4
    assert float(sequence_nll(m, x, prefix_len=2)) < total
    with pytest.raises(InputError):
        ar_generate(m, x, 0)
