import torch

from latentlm.layers import (
    Attention,
    RotaryEmbedding,
    TimestepEmbedder,
    Transformer,
    TransformerBlock,
    apply_rotary,
    build_attention_mask,
)


def test_rotary_scores_depend_only_on_relative_position():
    rot = RotaryEmbedding(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(i, j):
        ci, si = rot(torch.tensor([i]))
        cj, sj = rot(torch.tensor([j]))
        return (apply_rotary(q, ci, si) * apply_rotary(k, cj, sj)).sum()

    assert torch.allclose(score(3, 1), score(10, 8), atol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-3)


def test_causal_attention_ignores_the_future():
    torch.manual_seed(0)
    net = Transformer(32, 2, 4)
    x = torch.randn(2, 10, 32)
    y, _ = net(x, causal=True)
    x2 = x.clone()
    x2[:, 6:] = torch.randn(2, 4, 32)
    y2, _ = net(x2, causal=True)
    assert torch.allclose(y[:, :6], y2[:, :6], atol=1e-5)
    assert not torch.allclose(y[:, 6:], y2[:, 6:], atol=1e-3)


def test_padding_mask_isolates_real_tokens_and_never_nans():
    torch.manual_seed(0)
    net = Transformer(32, 2, 4)
    x = torch.randn(1, 8, 32)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    y, _ = net(x, attention_mask=mask)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 3, 32)
    y2, _ = net(x2, attention_mask=mask)
    assert torch.allclose(y[:, :5], y2[:, :5], atol=1e-5)
    left_pad = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    y3, _ = net(x, attention_mask=left_pad, causal=True)
    assert torch.isfinite(y3).all()
    m = build_attention_mask(left_pad, 8, 8, True, "cpu")
    assert m.any(-1).all()


def test_attention_weights_match_sdpa_path():
    torch.manual_seed(0)
    attn = Attention(32, 4)
    x = torch.randn(2, 6, 32)
    mask = build_attention_mask(torch.tensor([[1] * 6, [1] * 4 + [0] * 2]), 6, 6, False, "cpu")
    fast, _ = attn(x, mask=mask)
    slow, w = attn(x, mask=mask, return_weights=True)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 6), atol=1e-5)
    assert (w[1, :, :4, 4:] == 0).all()  # real queries never see padding


def test_adaln_block_starts_as_identity_and_uses_condition():
    torch.manual_seed(0)
    block = TransformerBlock(32, 4, cond_dim=16)
    x, c = torch.randn(2, 5, 32), torch.randn(2, 16)
    y, _ = block(x, cond=c)
    assert torch.allclose(y, x)
    torch.nn.init.normal_(block.ada[1].weight)
    y1, _ = block(x, cond=c)
    y2, _ = block(x, cond=c + 1)
    assert not torch.allclose(y1, y2)


def test_timestep_embedding_distinguishes_times():
    emb = TimestepEmbedder(32)
    e = emb(torch.tensor([0.0, 0.5, 1.0]))
    assert e.shape == (3, 32) and not torch.allclose(e[0], e[1])


def test_bf16_cpu_attention_matches_float32():
    """In bf16 on the CPU attention goes through the math kernel (faster there): same answer as
    float32 within bf16 precision, padding mask included."""
    from latentlm.layers import _attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 24, 16) for _ in range(3))
    mask = torch.ones(2, 1, 1, 24, dtype=torch.bool)
    mask[1, ..., 20:] = False
    ref = _attention(q, k, v, mask)
    out = _attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), ref, atol=3e-2)
    v_pad = v.clone()
    v_pad[1, :, 20:] = 1e3  # masked keys: their values must not leak in
    assert torch.allclose(_attention(q.bfloat16(), k.bfloat16(), v_pad.bfloat16(), mask).float(), ref, atol=3e-2)
