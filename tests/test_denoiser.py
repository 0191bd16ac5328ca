import pytest
import torch

from latentlm.autoencoder import TextAutoencoder
from latentlm.autoencoder.modeling_autoencoder import encode_prompts, left_align
from latentlm.diffusion import LatentDenoiser
from latentlm.diffusion.losses import DenoiserLossConfig, denoiser_loss
from latentlm.errors import ConfigError, InputError


@pytest.fixture
def ae(tiny_tokenizer):
    torch.manual_seed(0)
    return TextAutoencoder(vocab_size=len(tiny_tokenizer), max_seq_len=32, latent_dim=8, dim=32, encoder_depth=1,
                           decoder_depth=1).eval()


def batch(tok, texts, seq_len=32):
    ids = torch.zeros(len(texts), seq_len, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, t in enumerate(texts):
        x = tok(t, add_special_tokens=False)["input_ids"][: seq_len - 1] + [tok.eos_token_id]
        ids[r, : len(x)] = torch.tensor(x)
        mask[r, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("param", ["x0", "eps", "v"])
def test_loss_runs_and_learns_for_every_parameterisation(ae, tiny_tokenizer, param):
    torch.manual_seed(0)
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=8, parameterisation=param)
    b = batch(tiny_tokenizer, ["lily had a red kite. the sun was warm."] * 8)
    opt = torch.optim.Adam(den.parameters(), 3e-3)
    losses = []
    for _ in range(40):
        out = denoiser_loss(den, b, autoencoder=ae, cfg=DenoiserLossConfig())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
        assert set(out.metrics) == {"x0_mse"}
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) < sum(losses[:10])


def test_x0_conversions_are_consistent():
    torch.manual_seed(0)
    z0, eps = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    t = torch.tensor([0.3, 0.8])
    for param in ("x0", "eps", "v"):
        den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, parameterisation=param)
        a, s = (v.float()[:, None, None] for v in den.schedule.alpha_sigma(t))
        z_t = a * z0 + s * eps
        target = {"x0": z0, "eps": eps, "v": a * eps - s * z0}[param]
        assert torch.allclose(den.x0_from_output(target, z_t, t), z0, atol=1e-4)


def test_left_align_and_prompt_encoding(ae, tiny_tokenizer):
    z = torch.arange(2 * 3 * 1, dtype=torch.float).reshape(2, 3, 1)
    real = torch.tensor([[True, True, False], [True, False, False]])
    out, mask = left_align(z, real)
    assert out[:, :, 0].tolist() == [[0, 0, 1], [0, 0, 3]] and mask.tolist() == [[0, 1, 1], [0, 0, 1]]
    ctx, m = encode_prompts(ae, [[5, 6, 7, 8, 9], []], 0, "cpu")
    assert ctx.shape == (2, 2, 8) and m.tolist() == [[1, 1], [0, 0]]
    assert encode_prompts(ae, [[], []], 0, "cpu") == (None, None)


def test_denoiser_bad_input():
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=4)
    with pytest.raises(InputError, match="width"):
        den(torch.zeros(1, 2, 9), torch.zeros(1))
    with pytest.raises(InputError, match="exceed"):
        den(torch.zeros(1, 5, 8), torch.zeros(1))
    with pytest.raises(ConfigError, match="parameterisation must be one of"):  # the preset key's error type
        LatentDenoiser(parameterisation="score")


def test_training_times_uniform_and_logit_normal():
    from latentlm.diffusion.losses import sample_times

    torch.manual_seed(0)
    u = sample_times(1000, DenoiserLossConfig(), "cpu")
    assert u.shape == (1000,) and 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01  # stratified: one point in each 1/1000 of [0, 1)
    ln = sample_times(1000, DenoiserLossConfig(time_sampling="logit-normal"), "cpu")
    assert 0 < float(ln.min()) and float(ln.max()) < 1
    mid = lambda t: float(((t > 0.3) & (t < 0.7)).float().mean())  # noqa: E731
    assert mid(ln) > 0.55 > 0.45 > mid(u)  # logit-normal N(0, 1): 60% of times in (0.3, 0.7), uniform 40%
    shifted = sample_times(1000, DenoiserLossConfig(time_sampling="logit-normal", time_mean=1.0), "cpu")
    assert float(shifted.median()) == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=0.01)
    for bad, match in (({"time_sampling": "lognormal"}, "time_sampling"), ({"time_std": 0.0}, "time_std"),
                       ({"time_std": float("nan")}, "time_std"), ({"time_mean": float("inf")}, "time_mean")):
        with pytest.raises(ConfigError, match=match):
            DenoiserLossConfig(**bad).validate()


def test_validation_loss_draws_uniform_times(ae, tiny_tokenizer, monkeypatch):
    """Whatever the training density, a model in eval mode (the trainer's validation) is scored at
    uniform times, so validation losses of runs with different densities compare."""
    import latentlm.diffusion.losses as losses

    seen = []
    real = losses.sample_times
    monkeypatch.setattr(losses, "sample_times", lambda b, cfg, *a: seen.append(cfg.time_sampling) or real(b, cfg, *a))
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=8)
    b = batch(tiny_tokenizer, ["lily had a red kite. the sun was warm."] * 4)
    cfg = DenoiserLossConfig(time_sampling="logit-normal", p_self_cond=0.0)
    den.train()
    denoiser_loss(den, b, autoencoder=ae, cfg=cfg)
    den.eval()
    denoiser_loss(den, b, autoencoder=ae, cfg=cfg)
    assert seen == ["logit-normal", "uniform"]


def test_a_learned_time_density_puts_its_mass_where_the_error_changes():
    """CDCD's time warping on a known error curve: a step of the error at t = 0.3 draws the times there;
    its draws, its saved description's CDF and the bins agree."""
    from latentlm.diffusion.time_density import TimeWarp, time_cdf, time_density_spec

    torch.manual_seed(0)
    warp = TimeWarp(50)
    opt = torch.optim.Adam(warp.parameters(), lr=0.05)
    for _ in range(400):
        t = torch.rand(256)
        error = torch.sigmoid((t - 0.3) / 0.03)
        loss = ((warp(t) - error) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    p = warp.density()
    near = float(p[10:20].sum())  # t in [0.2, 0.4)
    assert near > 0.6, near  # uniform: 0.2
    draws = warp.sample((torch.arange(20_000) + 0.5) / 20_000)
    spec = time_density_spec("learned", uniform_share=0.0, bins=p.tolist())
    grid = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    empirical = (draws.double()[None, :] <= grid[:, None]).double().mean(1)
    assert torch.allclose(empirical, time_cdf(spec, grid), atol=0.01)


def test_learned_times_train_the_warp_with_the_denoiser(ae, tiny_tokenizer, tmp_path):
    from latentlm.diffusion.losses import time_density_of
    from latentlm.loading import load_pipeline
    from latentlm.recipes import RunContext, get_recipe

    torch.manual_seed(0)
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=8, time_warp_bins=20).train()
    cfg = DenoiserLossConfig(time_sampling="learned", time_uniform_share=0.1, p_self_cond=0.0)
    out = denoiser_loss(den, batch(tiny_tokenizer, ["lily had a red kite. the sun was warm."] * 4), autoencoder=ae,
                        cfg=cfg)
    out.loss.backward()
    assert out.metrics["time_warp_fit"] > 0 and den.time_warp.raw.grad.abs().sum() > 0
    # with the decoder's cross-entropy the fit still trains: the terms add up
    den.zero_grad()
    torch.manual_seed(1)
    ce_cfg = DenoiserLossConfig(time_sampling="learned", time_uniform_share=0.1, p_self_cond=0.0, decoder_ce=0.5)
    both = denoiser_loss(den, batch(tiny_tokenizer, ["lily had a red kite. the sun was warm."] * 4),
                         autoencoder=ae, cfg=ce_cfg)
    both.loss.backward()
    m = both.metrics
    assert float(both.loss) == pytest.approx(m["mse"] + m["time_warp_fit"] + 0.5 * m["decoder_ce"], rel=1e-4)
    assert den.time_warp.raw.grad.abs().sum() > 0
    # the exported pipeline keeps the learned density: the coverage check and `info` read it
    ctx = RunContext(autoencoder=ae, training_times=time_density_of(cfg),
                     sampling={"sampler": "ddpm", "sampling_mode": "parallel", "window_blocks": 4})
    get_recipe("denoiser").export(den.eval(), tiny_tokenizer, ctx, tmp_path / "p")
    times = load_pipeline(tmp_path / "p").config.training_times
    assert times["sampling"] == "learned" and len(times["bins"]) == 20 and sum(times["bins"]) == pytest.approx(1)
    from latentlm.loading import describe

    info = describe(tmp_path / "p")["training_times"]  # `latentlm info`: the bins as a few times
    assert info["bins"] == 20 and 0 < info["t_at_10_50_90_percent"][0] < info["t_at_10_50_90_percent"][2] < 1
    with pytest.raises(ConfigError, match="time_uniform_share > 0"):
        DenoiserLossConfig(time_sampling="learned").validate()
    with pytest.raises(ConfigError, match="time_warp_bins"):
        LatentDenoiser(time_warp_bins=-1)


def test_split_points_at_sentence_ends(tiny_tokenizer):
    """With p_sentence_split = 1 every conditional row with a sentence end is split right after one,
    leaving a non-empty continuation; a row without one falls back to a uniform token."""
    from latentlm.data.tokenizer import sentence_end_ids
    from latentlm.diffusion.losses import split_points

    ends = torch.tensor(sentence_end_ids(tiny_tokenizer))
    assert tiny_tokenizer.convert_tokens_to_ids(".") in ends.tolist()
    assert tiny_tokenizer.eos_token_id not in ends.tolist()
    b = batch(tiny_tokenizer, ["lily had a red kite. the sun was warm. tom smiled.", "lily had a red kite"])
    ids, lengths = b["input_ids"], b["attention_mask"].sum(1)
    cfg = DenoiserLossConfig(p_sentence_split=1.0, p_unconditional=0.0)
    torch.manual_seed(0)
    seen = set()
    for _ in range(50):
        split = split_points(ids, lengths, cfg, ends)
        assert int(ids[0, split[0] - 1]) in ends.tolist() and split[0] < lengths[0]  # after a "." inside the text
        assert 1 <= split[1] < lengths[1]  # no sentence end: a uniform token
        seen.add(int(split[0]))
    assert len(seen) == 3  # the three sentence ends, the last one keeping only end-of-text after it
    assert (split_points(ids, lengths, DenoiserLossConfig(p_unconditional=1.0), ends) == 0).all()
    with pytest.raises(ConfigError, match="p_sentence_split"):
        DenoiserLossConfig(p_sentence_split=1.5).validate()
    with pytest.raises(ConfigError, match="row_lengths"):
        DenoiserLossConfig(row_lengths=3).validate()


def test_no_loss_past_the_cut_of_a_longer_document(ae, tiny_tokenizer, monkeypatch):
    """A row without end-of-text is a document cut by the row length: the latents past the cut are
    unknown text, so the denoiser's output there gets no gradient; an ended row's padding does."""
    import latentlm.diffusion.losses as losses

    monkeypatch.setattr(losses, "split_points", lambda ids, lengths, cfg, ends=None: torch.full((2,), 8))
    long_text = tiny_tokenizer("lily had a red kite. " * 12, add_special_tokens=False)["input_ids"][:32]
    cut = {"input_ids": torch.tensor([long_text]), "attention_mask": torch.ones(1, 32, dtype=torch.long)}
    # 32 real tokens, no end-of-text: what the document layout gives a longer text
    ended = batch(tiny_tokenizer, ["lily had a red kite. tom smiled."])
    b = {k: torch.cat([cut[k], ended[k]]) for k in cut}
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=8)
    out = []
    den.out.register_forward_hook(lambda mod, inp, o: o.retain_grad() or out.append(o))
    cfg = DenoiserLossConfig(p_self_cond=0.0, p_prompt_drop=0.0, min_latents_fraction=1.0)
    denoiser_loss(den, b, autoencoder=ae, cfg=cfg).loss.backward()
    g = out[-1].grad.abs().sum(-1)  # (2, 8): 8 latents of 4 tokens after the 8-token prompt
    assert (g[0, :6] > 0).all() and (g[0, 6:] == 0).all()  # 24 known tokens = 6 latents, then the cut
    assert (g[1] > 0).all()  # the ended document: end-of-text and padding are targets


def test_training_prompt_keeps_the_last_max_seq_len_tokens(ae, tiny_tokenizer, monkeypatch):
    """Rows of two autoencoder lengths (loss.row_lengths = 2): a prompt longer than its max_seq_len keeps
    its last max_seq_len tokens, as the pipeline truncates, and the continuation is at most max_seq_len."""
    import latentlm.diffusion.losses as losses

    limit = ae.config.max_seq_len  # 32
    ids = torch.tensor([tiny_tokenizer("lily had a red kite. " * 20, add_special_tokens=False)["input_ids"][: 2 * limit]])
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    monkeypatch.setattr(losses, "split_points", lambda ids, lengths, cfg, ends=None: torch.tensor([40]))
    seen = {}
    real = losses.encode_prompts
    monkeypatch.setattr(losses, "encode_prompts", lambda a, p, pad, dev: seen.update(p=p) or real(a, p, pad, dev))
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=8)
    cfg = DenoiserLossConfig(p_self_cond=0.0, min_latents_fraction=1.0)
    out = denoiser_loss(den, b, autoencoder=ae, cfg=cfg)
    assert seen["p"] == [ids[0, 40 - limit : 40].tolist()] and torch.isfinite(out.loss)


def test_continuations_and_prompts_are_the_rows_split_at_the_split_points(ae, tiny_tokenizer, monkeypatch):
    """The batched gather gives, per row, the tokens from the split to the end of the text (then
    pads) as the continuation, and the tokens before the split as the prompt, at any split."""
    import latentlm.diffusion.losses as losses

    texts = ["lily had a red kite. tom smiled.", "the sun was warm.", "a cat sat. " * 6, "ok."]
    b = batch(tiny_tokenizer, texts)
    lengths = b["attention_mask"].sum(1)
    split = torch.tensor([5, 0, 31, int(lengths[3]) - 1])  # inside, unconditional, at the row end, last token
    monkeypatch.setattr(losses, "split_points", lambda ids, lengths, cfg, ends=None: split)
    seen = {}
    real_prompts, real_encode = losses.encode_prompts, ae.encode
    monkeypatch.setattr(losses, "encode_prompts", lambda a, p, pad, dev: seen.update(p=p) or real_prompts(a, p, pad, dev))
    monkeypatch.setattr(ae, "encode", lambda x, m: seen.setdefault("cont", (x, m)) and real_encode(x, m))
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=8)
    cfg = DenoiserLossConfig(p_self_cond=0.0, min_latents_fraction=1.0)
    assert torch.isfinite(denoiser_loss(den, b, autoencoder=ae, cfg=cfg).loss)
    cont, mask = seen["cont"]
    pad = ae.config.pad_token_id
    for r in range(len(texts)):
        rest = b["input_ids"][r, split[r] : lengths[r]].tolist()
        assert cont[r, : len(rest)].tolist() == rest and (cont[r, len(rest) :] == pad).all()
        assert mask[r].tolist() == [1] * len(rest) + [0] * (cont.shape[1] - len(rest))
        assert seen["p"][r] == b["input_ids"][r, : split[r]].tolist()


def test_the_loss_with_a_latent_cache_is_the_loss_without(tiny_tokenizer):
    from latentlm.autoencoder.latent_cache import ChunkLatentCache

    torch.manual_seed(0)
    ae = TextAutoencoder(vocab_size=len(tiny_tokenizer), max_seq_len=32, latent_dim=8, dim=32, encoder_depth=1,
                         decoder_depth=1, encoder_context="chunk").eval()
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=8)
    b = batch(tiny_tokenizer, ["lily had a red kite. the sun was warm.", "tom smiled.", "a cat sat. " * 4])
    cache, cfg = ChunkLatentCache(ae), DenoiserLossConfig()
    for seed in range(3):
        torch.manual_seed(seed)
        plain = denoiser_loss(den, b, autoencoder=ae, cfg=cfg).loss
        torch.manual_seed(seed)
        cached = denoiser_loss(den, b, autoencoder=ae, cfg=cfg, latent_cache=cache).loss
        assert torch.allclose(plain, cached, atol=1e-5)
    assert cache.hits > 0


def test_the_recipe_caches_latents_of_a_chunk_encoder_only(tiny_tokenizer):
    from latentlm.autoencoder.latent_cache import ChunkLatentCache
    from latentlm.recipes import RunContext, get_recipe, resolve_run_config

    recipe = get_recipe("denoiser")
    for context, cache_latents, cached in (("chunk", True, True), ("chunk", False, False), ("sequence", True, False)):
        ae = TextAutoencoder(vocab_size=len(tiny_tokenizer), max_seq_len=32, latent_dim=8, dim=32, encoder_depth=1,
                             decoder_depth=1, encoder_context=context)
        cfg = resolve_run_config("denoiser", overrides=[f"loss.cache_latents={str(cache_latents).lower()}"])
        loss = recipe.make_loss(cfg, RunContext(autoencoder=ae))
        assert isinstance(loss.keywords["latent_cache"], ChunkLatentCache) == cached



def test_rows_grouped_by_prompt_length_run_with_their_groups_padding_only():
    from latentlm.diffusion.losses import by_prompt_length

    torch.manual_seed(0)
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=8).eval()
    for block in den.backbone.blocks:  # adaLN-Zero starts as the identity: make the blocks count
        torch.nn.init.normal_(block.ada[1].weight, std=0.1)
    torch.nn.init.normal_(den.out.weight, std=0.1)
    z_t, t = torch.randn(4, 3, 8), torch.rand(4)
    lengths = torch.tensor([5, 1, 0, 3])
    prompt_mask = (torch.arange(5)[None] >= 5 - lengths[:, None]).long()  # left-padded
    prompt = torch.randn(4, 5, 8) * prompt_mask[..., None]
    assert torch.equal(by_prompt_length(den, 1, z_t, t, prompt, prompt_mask), den(z_t, t, prompt, prompt_mask))
    grouped = by_prompt_length(den, 2, z_t, t, prompt, prompt_mask)
    short, long = [1, 2], [0, 3]  # prompt lengths (1, 0) and (5, 3)
    expected = torch.empty_like(grouped)
    expected[short] = den(z_t[short], t[short], prompt[short, -1:], prompt_mask[short, -1:])  # cut to 1 slot
    expected[long] = den(z_t[long], t[long], prompt[long], prompt_mask[long])
    assert torch.allclose(grouped, expected, atol=1e-6)
    assert not torch.allclose(grouped[short], den(z_t, t, prompt, prompt_mask)[short], atol=1e-4)  # less padding
    with pytest.raises(ConfigError, match="prompt_groups"):
        DenoiserLossConfig(prompt_groups=0).validate()


# ----------------------------------------------------------------------------- the loss in two steps

# denoiser_loss of each case before it was split into batch preparation and the diffusion loss, float32
# on CPU; within rtol 1e-5 on any machine (the sums differ by a few ulps between kernel sets)
LOSS_BEFORE_THE_SPLIT = {
    'x0, seed 0': 1.7182092666625977,
    'x0, seed 1': 1.8400371074676514,
    'x0, seed 2': 1.8778969049453735,
    'eps, logit-normal, sentence splits, seed 0': 0.8717789053916931,
    'eps, logit-normal, sentence splits, seed 1': 1.520081639289856,
    'eps, logit-normal, sentence splits, seed 2': 1.3622722625732422,
    'v, decoder CE, self-conditioning always, seed 0': 7.710169315338135,
    'v, decoder CE, self-conditioning always, seed 1': 7.540833473205566,
    'v, decoder CE, self-conditioning always, seed 2': 7.548854827880859,
    'blocks of 2, mix, seed 0': 1.7778733968734741,
    'blocks of 2, mix, seed 1': 1.8629428148269653,
    'blocks of 2, mix, seed 2': 1.926666498184204,
}


def _loss_cases(ae, tok):
    """(name, loss) of fixed-seed batches under several settings (every branch of the loss)."""
    from latentlm.data.tokenizer import sentence_end_ids
    texts = ["lily had a red kite. the sun was warm. she ran to the park.", "tom smiled.",
             "a cat sat on the mat. " * 4, "the dog barked at the big red ball and ran. " * 8]
    b = batch(tok, texts)
    long = tok(texts[3], add_special_tokens=False)["input_ids"][:32]
    b["input_ids"][3], b["attention_mask"][3] = torch.tensor(long), 1  # a document cut by the row: no end-of-text
    ends = torch.tensor(sentence_end_ids(tok))
    settings = {
        "x0": ({}, {}),
        "eps, logit-normal, sentence splits": (dict(parameterisation="eps"),
                                               dict(time_sampling="logit-normal", time_mean=0.25, time_std=0.15,
                                                    p_sentence_split=0.5)),
        "v, decoder CE, self-conditioning always": (dict(parameterisation="v"), dict(decoder_ce=1.0, p_self_cond=1.0)),
        "blocks of 2, mix": (dict(block_size=2, max_latents=8), dict(prompt_groups=2)),
    }
    out = []
    for name, (model_kw, loss_kw) in settings.items():
        torch.manual_seed(0)
        den = _randomised(LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, **{"max_latents": 8, **model_kw}))
        den.train()
        for seed in range(3):
            torch.manual_seed(seed)
            out.append((f"{name}, seed {seed}", float(denoiser_loss(den, b, autoencoder=ae, cfg=DenoiserLossConfig(**loss_kw),
                                                               sentence_ends=ends).loss.detach())))
    return out


def test_the_split_loss_gives_the_loss_of_before_for_the_same_seed(ae, tiny_tokenizer):
    got = dict(_loss_cases(ae, tiny_tokenizer))
    assert got.keys() == LOSS_BEFORE_THE_SPLIT.keys()
    for name, value in LOSS_BEFORE_THE_SPLIT.items():
        assert got[name] == pytest.approx(value, rel=1e-5), name


# ----------------------------------------------------------------------------- block-causal


def _randomised(den):
    for name, p in den.named_parameters():  # leave the zero init (adaLN-Zero): outputs depend on inputs
        if name.startswith("out.") or ".ada." in name:
            torch.nn.init.normal_(p, std=0.1)
    return den.eval()


# Saved outputs are compared within float32 rounding, never bit for bit: kernel sets (AVX2, AVX512) and
# machines that report the same set (microarchitecture, oneDNN path, threads, alignment) sum in other
# orders. The two stored kernel sets differ by at most 3.6e-7 on outputs of magnitude up to 1.43 (3 ulps);
# 1e-5 is 28x that, while a code change shows at 1e-3 and above (asserted below).
SAVED_OUTPUT_ATOL = 1e-5


def test_block_size_none_reproduces_the_saved_outputs():
    from pathlib import Path

    from safetensors.torch import load_file

    # Outputs of the denoiser before block_size existed, made on an AVX2 and an AVX512 machine. Every
    # reference must hold on every CPU: no branch on the kernels this machine reports.
    # Inputs are cloned: kernels may sum in another order on memory aligned otherwise (as loaded from a file).
    ref = {k: v.clone() for k, v in load_file(Path(__file__).parent / "data" / "denoiser_reference.safetensors").items()}
    den = LatentDenoiser(latent_dim=8, dim=32, depth=2, n_heads=4, max_latents=16).eval()
    den.load_state_dict({k[len("weight."):]: v for k, v in ref.items() if k.startswith("weight.")})
    inputs = (ref["in.z_t"], ref["in.t"], ref["in.prompt"], ref["in.prompt_mask"], ref["in.self_cond"])
    with torch.no_grad():
        out, alone = den(*inputs), den(ref["in.z_t"], ref["in.t"])
    assert den.config.block_size is None
    kernel_sets = {k.split(".")[1] for k in ref if k.startswith("out.")}
    assert kernel_sets == {"AVX2", "AVX512"}
    for ks in kernel_sets:
        torch.testing.assert_close(out, ref[f"out.{ks}.with_prompt"], atol=SAVED_OUTPUT_ATOL, rtol=0)
        torch.testing.assert_close(alone, ref[f"out.{ks}.no_prompt"], atol=SAVED_OUTPUT_ATOL, rtol=0)
    # the references themselves agree within the tolerance, and a real change does not
    torch.testing.assert_close(ref["out.AVX2.with_prompt"], ref["out.AVX512.with_prompt"], atol=SAVED_OUTPUT_ATOL, rtol=0)
    with torch.no_grad():
        den.out.bias.add_(1e-3)
        changed = den(*inputs)
    assert (changed - ref["out.AVX2.with_prompt"]).abs().max() > 100 * SAVED_OUTPUT_ATOL


@pytest.fixture
def block_den():
    torch.manual_seed(0)
    return _randomised(LatentDenoiser(latent_dim=8, dim=32, depth=2, n_heads=4, max_latents=12, block_size=2))


@pytest.mark.parametrize("with_clean", [False, True])
def test_a_later_block_changes_nothing_in_an_earlier_one(block_den, with_clean):
    g = torch.Generator().manual_seed(0)
    z, prompt = torch.randn(2, 6, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    clean = torch.randn(2, 6, 8, generator=g) if with_clean else None
    t = torch.tensor([[0.2, 0.5, 0.9], [0.7, 0.1, 0.4]])
    with torch.no_grad():
        a = block_den(z, t, prompt, torch.tensor([[1, 1, 1], [0, 1, 1]]), clean=clean)
        z2 = z.clone()
        z2[:, 4:] += 1.0  # the last block, noisy
        t2 = t.clone()
        t2[:, 2] = 0.05
        c2 = None if clean is None else clean.clone()
        if c2 is not None:
            c2[:, 4:] -= 1.0
        b = block_den(z2, t2, prompt, torch.tensor([[1, 1, 1], [0, 1, 1]]), clean=c2)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)  # blocks 0 and 1 untouched
    assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-3)  # the changed block did change
    with torch.no_grad():  # inside a block attention is bidirectional: its first latent sees its second
        z3 = z.clone()
        z3[:, 1] += 1.0
        c = block_den(z3, t, prompt, torch.tensor([[1, 1, 1], [0, 1, 1]]), clean=clean)
    assert not torch.allclose(a[:, 0], c[:, 0], atol=1e-4)


def test_with_clean_blocks_a_noisy_block_sees_clean_history_not_noisy(block_den):
    g = torch.Generator().manual_seed(1)
    z, clean = torch.randn(1, 4, 8, generator=g), torch.randn(1, 4, 8, generator=g)
    t = torch.tensor([[0.5, 0.5]])
    with torch.no_grad():
        a = block_den(z, t, clean=clean)
        z2 = z.clone()
        z2[:, :2] += 1.0  # the first block's noisy copy: the second block reads the clean copy instead
        b = block_den(z2, t, clean=clean)
        c2 = clean.clone()
        c2[:, :2] += 1.0
        c = block_den(z, t, clean=c2)
    assert torch.allclose(a[:, 2:], b[:, 2:], atol=1e-6)
    assert not torch.allclose(a[:, 2:], c[:, 2:], atol=1e-4)


def test_kv_cache_step_equals_the_uncached_computation(block_den):
    g = torch.Generator().manual_seed(2)
    prompt, pm = torch.randn(2, 3, 8, generator=g), torch.tensor([[1, 1, 1], [0, 0, 1]])
    committed, z = torch.randn(2, 4, 8, generator=g), torch.randn(2, 2, 8, generator=g)
    t = torch.tensor([0.6, 0.3])
    with torch.no_grad():
        # uncached: the committed blocks are part of the prompt (they are clean context)
        full = block_den(z, t, torch.cat([torch.nn.functional.pad(prompt, (0, 0, 1, 0)), committed], 1),
                         torch.cat([torch.nn.functional.pad(pm, (1, 0)), torch.ones(2, 4, dtype=torch.long)], 1))
        cache = block_den.start_cache(prompt, pm)
        before = cache.length
        block_den.extend_cache(cache, committed)
        assert cache.length == before + 4
        step = block_den(z, t, kv_cache=cache)
        assert cache.length == before + 4  # a denoising step leaves the cache as it was
        again = block_den(z, t, kv_cache=cache)
    assert torch.allclose(step, full, atol=1e-5)
    assert torch.equal(step, again)
    with torch.no_grad():  # several noisy blocks against the cache: block-causal among themselves
        two = block_den(torch.randn(2, 4, 8, generator=g), torch.tensor([[0.5, 0.9], [0.2, 0.4]]), kv_cache=cache)
    assert two.shape == (2, 4, 8)


def test_block_causal_save_load_and_determinism(block_den, tmp_path):
    block_den.save_pretrained(tmp_path)
    loaded = LatentDenoiser.from_pretrained(tmp_path).eval()
    assert loaded.config.block_size == 2
    g = torch.Generator().manual_seed(3)
    z, t = torch.randn(1, 4, 8, generator=g), torch.tensor([[0.3, 0.7]])
    with torch.no_grad():
        assert torch.equal(block_den(z, t), loaded(z, t)) and torch.equal(block_den(z, t), block_den(z, t))
    x0 = loaded.predict_x0(z, t)  # one time per block through the parameterisations too
    assert x0.shape == (1, 4, 8)
    v = _randomised(LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=12, block_size=2,
                                   parameterisation="v"))
    with torch.no_grad():
        per_block = v.predict_x0(z, torch.tensor([[0.3, 0.3]]))
        shared = v.predict_x0(z, torch.tensor([0.3]))
    assert torch.allclose(per_block, shared, atol=1e-6)


def test_block_causal_bad_input_is_a_typed_error(block_den):
    with pytest.raises(ConfigError, match="must divide the window"):
        LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=12, block_size=5)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="block_size must be a positive"):
            LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=12, block_size=bad)
    with pytest.raises(InputError, match="not whole blocks"):
        block_den(torch.zeros(1, 3, 8), torch.zeros(1))
    with pytest.raises(InputError, match="one time per block"):
        block_den(torch.zeros(1, 4, 8), torch.zeros(1, 3))
    plain = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=12)
    with pytest.raises(InputError, match="block_size=None"):
        plain(torch.zeros(1, 4, 8), torch.zeros(1), clean=torch.zeros(1, 4, 8))
    with pytest.raises(InputError, match="needs a block-causal denoiser"):
        plain.start_cache(batch=1)
    cache = block_den.start_cache(batch=1)
    with pytest.raises(InputError, match="pass neither prompt nor clean"):
        block_den(torch.zeros(1, 2, 8), torch.zeros(1), torch.zeros(1, 2, 8), kv_cache=cache)


def test_a_block_causal_denoiser_trains_samples_and_bounds_in_whole_blocks(ae, tiny_tokenizer):
    from latentlm.diffusion.likelihood import pipeline_nll_bound
    from latentlm.pipeline_latent_diffusion import LatentDiffusionPipeline, make_scheduler

    torch.manual_seed(0)
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=ae.n_latents, block_size=4)
    b = batch(tiny_tokenizer, ["lily had a red kite. she ran to the park.", "tom saw a big dog near the farm."] * 2)
    seen = []
    real_forward = den.forward
    den.forward = lambda z, *a, **k: seen.append(z.shape[1]) or real_forward(z, *a, **k)
    for seed in range(6):  # the continuation length is drawn per batch: always whole blocks
        torch.manual_seed(seed)
        assert torch.isfinite(denoiser_loss(den, b, autoencoder=ae, cfg=DenoiserLossConfig()).loss)
    del den.forward
    assert seen and all(n % 4 == 0 for n in seen)
    pipe = LatentDiffusionPipeline(tiny_tokenizer, ae, den.eval(), make_scheduler("ddpm", den))
    out = pipe("lily had", max_new_tokens=10, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert out.latents.shape == (1, 4, 8) and out.sequences.shape == (1, 10)  # 3 latents rounded up to a block
    calls = []
    den.forward = lambda z, t, *a, **k: calls.append((tuple(t.shape), k.get("clean") is not None)) or real_forward(
        z, t, *a, **k)
    text = "lily had a red kite. she ran to the park. tom saw a big dog."
    nats, ses, counts = pipeline_nll_bound(pipe, [text], n_samples=4)
    del den.forward
    assert nats[0] > 0 and counts[0] > 0
    # the chain rule over blocks: one time per block, each block reading the clean blocks before it; the 4
    # draws in one call, which gives the bound of one draw a call
    n_latents = -(-counts[0] // ae.config.tokens_per_latent)
    assert calls and all(shape == (4, -(-n_latents // 4)) and clean for shape, clean in calls)
    one_by_one = pipeline_nll_bound(pipe, [text], n_samples=4, samples_per_call=1)
    assert one_by_one[0][0] == pytest.approx(nats[0], rel=1e-4) and one_by_one[1][0] == pytest.approx(ses[0], rel=1e-3)


@pytest.mark.parametrize("regime", ["row", "independent", "clean-prefix", "mix"])
def test_block_regimes_give_the_denoiser_the_inputs_they_name(ae, tiny_tokenizer, regime):
    torch.manual_seed(0)
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=ae.n_latents, block_size=2,
                         self_conditioning=False)
    b = batch(tiny_tokenizer, ["lily had a red kite. she ran to the park.", "tom saw a big dog near the farm."] * 2)
    calls = []
    real_forward = den.forward
    den.forward = lambda z, t, *a, **k: calls.append((z.shape, t.shape, "clean" in k)) or real_forward(z, t, *a, **k)
    for seed in range(4):
        torch.manual_seed(seed)
        out = denoiser_loss(den, b, autoencoder=ae, cfg=DenoiserLossConfig(block_regime=regime, p_self_cond=0.0))
        out.loss.backward()
        assert torch.isfinite(out.loss)
    del den.forward
    for z_shape, t_shape, clean in calls:
        n_blocks = z_shape[1] // 2
        assert t_shape == ((z_shape[0],) if regime == "row" else (z_shape[0], n_blocks))
        if regime in ("row", "independent"):
            assert not clean
        if regime == "clean-prefix":
            assert clean
    if regime == "mix":
        assert {c for _, _, c in calls} == {True, False}  # both layouts over the four batches
    with pytest.raises(ConfigError, match="block_regime"):
        DenoiserLossConfig(block_regime="diagonal").validate()


def test_padding_weight_and_min_snr_weighting_follow_their_formulas(ae, tiny_tokenizer):
    from latentlm.diffusion.losses import diffusion_loss, prepare_denoiser_batch, sample_times

    texts = ["lily had a red kite.", "tom smiled.", "a cat sat on the mat. " * 4]
    torch.manual_seed(0)
    x = prepare_denoiser_batch(batch(tiny_tokenizer, texts), autoencoder=ae, cfg=DenoiserLossConfig(p_unconditional=1.0))
    pad = x.padding
    assert pad.any() and not pad[2].any()  # short stories end early; the long one fills its row
    assert torch.equal(pad, x.known & ~x.token_mask.reshape(3, x.z0.shape[1], -1).bool().any(-1))
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=8, self_conditioning=False).train()
    err = (x.z0 ** 2).mean(-1)  # the zero-initialised output head estimates x0 = 0
    for cfg in (DenoiserLossConfig(latent_pad_weight=0.0), DenoiserLossConfig(latent_pad_weight=0.3),
                DenoiserLossConfig(time_weighting="min-snr", min_snr_gamma=2.0)):
        torch.manual_seed(1)
        loss = diffusion_loss(den, x, cfg).loss
        torch.manual_seed(1)
        alpha, sigma = den.schedule.alpha_sigma(sample_times(3, cfg, "cpu"))
        w = x.known.float() * torch.where(pad, cfg.latent_pad_weight, 1.0)
        weight_t = (alpha / sigma).pow(2).clamp(max=cfg.min_snr_gamma)[:, None] if cfg.time_weighting != "none" else 1
        assert float(loss) == pytest.approx(float((err * weight_t * w).sum() / w.sum()), rel=1e-5), cfg
    for bad, match in (({"latent_pad_weight": 2.0}, "latent_pad_weight"), ({"time_weighting": "snr"}, "time_weighting"),
                       ({"min_snr_gamma": 0.0}, "min_snr_gamma")):
        with pytest.raises(ConfigError, match=match):
            DenoiserLossConfig(**bad).validate()


@pytest.mark.parametrize("block_size", [None, 2])
def test_decoder_adaptation_feeds_the_estimate_block_ar_sampling_makes(ae, tiny_tokenizer, block_size):
    """The adapted decoder learns from estimates made as the sampler makes them: one time per row for a
    full-attention denoiser; for a block-causal one a time per block, each block seeing the clean blocks
    before it (block-AR sampling), at times up to ``time_max``."""
    from latentlm.diffusion.decoder_adaptation import (
        DecoderAdaptationConfig,
        decoder_adaptation_loss,
    )

    torch.manual_seed(0)
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=ae.n_latents, block_size=block_size)
    b = batch(tiny_tokenizer, ["lily had a red kite. she ran to the park.", "tom saw a big dog near the farm."] * 2)
    calls = []
    real_forward = den.forward
    den.forward = lambda z, t, *a, **k: calls.append((z.shape, t.clone(), k.get("clean"))) or real_forward(z, t, *a, **k)
    out = decoder_adaptation_loss(ae, b, denoiser=den, cfg=DecoderAdaptationConfig(time_max=0.3),
                                  split_cfg=DenoiserLossConfig())
    del den.forward
    assert torch.isfinite(out.loss) and len(calls) == 2  # the second call: self-conditioned on the first
    for z_shape, t, clean in calls:
        assert 0 < t.min() and t.max() <= 0.3
        if block_size is None:
            assert t.shape == (z_shape[0],) and clean is None
        else:
            assert t.shape == (z_shape[0], z_shape[1] // 2) and clean is not None and clean.shape == z_shape
