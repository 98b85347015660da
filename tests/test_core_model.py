import pytest
import torch

from sciar.errors import SciarError
from sciar.model import KVCache, LanguageModel, ModelConfig, Transformer, with_context


def tiny(**kw):
    base = dict(vocab_size=11, block_size=48, n_layer=2, n_head=2, n_embd=32)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_kv_cache_matches_full_forward(pos):
    torch.manual_seed(0)
    cfg = tiny(pos=pos)
    m = LanguageModel(cfg).eval()
    x = torch.randint(0, 11, (3, 30))
    full = m(x)
    cache = KVCache(cfg, 3, 30)
    parts = [m(x[:, :12], cache=cache), m(x[:, 12:20], cache=cache)]
    parts += [m(x[:, t : t + 1], cache=cache) for t in range(20, 30)]
    assert cache.length == 30
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)


def test_static_cache_step_matches_dynamic():
    torch.manual_seed(1)
    cfg = tiny()
    m = LanguageModel(cfg).eval()
    x = torch.randint(0, 11, (2, 16))
    full = m(x)
    cache = KVCache(cfg, 2, 24)
    m(x[:, :10], cache=cache)
    cache.pos = torch.tensor([10])
    for t in range(10, 16):
        out = m(x[:, t : t + 1], cache=cache)
        torch.testing.assert_close(out[:, 0], full[:, t], atol=1e-5, rtol=1e-4)
        cache.pos += 1


def test_fork_copies_prefix_and_repeats_rows():
    torch.manual_seed(2)
    cfg = tiny()
    m = LanguageModel(cfg).eval()
    x = torch.randint(0, 11, (2, 9))
    cache = KVCache(cfg, 2, 20)
    m(x[:, :8], cache=cache)
    child = cache.fork(rows=[1], repeat=3)
    assert child.batch == 3 and child.length == 8
    nxt = m(x[1:2, 8:9].repeat(3, 1), cache=child)
    torch.testing.assert_close(nxt[:, 0], m(x[1:2]).expand(3, -1, -1)[:, 8], atol=1e-5, rtol=1e-4)
    assert cache.length == 8  # the parent is untouched


def test_prefix_then_tokens_and_embeds():
    torch.manual_seed(3)
    cfg = tiny()
    trunk = Transformer(cfg)
    ids = torch.randint(0, 11, (2, 5))
    prefix = torch.randn(2, 4, 32)
    h = trunk(idx=ids, prefix=prefix)
    assert h.shape == (2, 9, 32)
    h2 = trunk(embeds=torch.cat([prefix, trunk.wte(ids)], 1))
    torch.testing.assert_close(h, h2)
    # causal: the prefix's states do not depend on the tokens after it
    h3 = trunk(idx=torch.randint(0, 11, (2, 5)), prefix=prefix)
    torch.testing.assert_close(h[:, :4], h3[:, :4])


def test_bidirectional_mask_sees_the_future_and_hides_masked():
    torch.manual_seed(4)
    cfg = tiny(vocab_size=0, pos="learned")
    trunk = Transformer(cfg).eval()
    x = torch.randn(1, 6, 32)
    full = torch.ones(6, 6, dtype=torch.bool)
    h = trunk(embeds=x, mask=full)
    y = x.clone()
    y[0, 5] = torch.randn(32)  # (a constant shift would vanish in LayerNorm)
    assert not torch.allclose(trunk(embeds=y, mask=full)[0, 0], h[0, 0])  # position 0 sees position 5
    hide5 = full.clone()
    hide5[:, 5] = False
    hide5[5, 5] = True
    a, b = trunk(embeds=x, mask=hide5), trunk(embeds=y, mask=hide5)
    torch.testing.assert_close(a[0, :5], b[0, :5])  # nobody else sees position 5


def test_errors_are_clear():
    with pytest.raises(SciarError, match="multiple"):
        ModelConfig(n_embd=30, n_head=4)
    cfg = tiny()
    m = LanguageModel(cfg)
    with pytest.raises(SciarError, match="exceeds the model's context"):
        m(torch.zeros(1, 49, dtype=torch.long))
    with pytest.raises(SciarError, match="no token embedding"):
        Transformer(tiny(vocab_size=0))(idx=torch.zeros(1, 2, dtype=torch.long))


def test_tied_head_and_no_biases():
    m = LanguageModel(tiny())
    assert m.head.weight is m.trunk.wte.weight
    assert not any(n.endswith("bias") for n, _ in m.named_parameters())


def test_rope_interpolation_gives_position_p_the_angles_of_p_over_scale():
    import math

    cfg = ModelConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8, rope_scale=4.0)
    t = Transformer(cfg)
    hd = 4  # head dimension: angles p / 4 * 10000^(-2i/hd), i = 0, 1, worked out by hand
    for p in (0, 3, 15):
        for i in range(hd // 2):
            angle = p / 4.0 * 10000.0 ** (-2 * i / hd)
            assert t.rope_cos[p, i].item() == pytest.approx(math.cos(angle), abs=1e-6)
            assert t.rope_sin[p, i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    with pytest.raises(SciarError, match="rope_scale"):
        ModelConfig(vocab_size=11, rope_scale=0.5)


def test_with_context_doubles_the_context_and_keeps_the_function_at_stretched_positions():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=13, block_size=32, n_layer=2, n_head=2, n_embd=16)
    base = LanguageModel(cfg).eval()
    long = with_context(base, 64, method="linear").eval()
    assert long.cfg.block_size == 64 and long.cfg.rope_scale == 2.0
    idx = torch.randint(0, 13, (2, 20))
    p = torch.arange(20)
    with torch.no_grad():
        # position 2p of the extended model turns queries and keys by the angles of p in the original
        a = base(idx, positions=p)
        b = long(idx, positions=2 * p)
        assert torch.allclose(a, b, atol=1e-5)
        # and it accepts sequences the original refuses
        long(torch.randint(0, 13, (1, 50)))
    with pytest.raises(SciarError, match="exceeds"):
        base(torch.randint(0, 13, (1, 50)))
    with pytest.raises(SciarError, match="only grow"):
        with_context(base, 16)
    with pytest.raises(SciarError, match="rotary"):
        with_context(LanguageModel(ModelConfig(vocab_size=13, block_size=32, n_layer=1, n_head=2, n_embd=16,
                                               pos="learned")), 64)


def test_ntk_extension_keeps_the_fastest_angles_and_slows_the_slowest_by_the_factor():
    cfg = ModelConfig(vocab_size=13, block_size=32, n_layer=1, n_head=2, n_embd=16)  # head dimension 8
    base = LanguageModel(cfg)
    long = with_context(base, 96)  # s = 3
    assert long.cfg.rope_base == pytest.approx(10000.0 * 3 ** (8 / 6)) and long.cfg.rope_scale == 1.0
    a, b = base.trunk, long.trunk
    # pair 0 turns by p radians in both; the last pair (exponent 6/8) turns 3 times slower: angle(3p) = old angle(p)
    assert torch.allclose(a.rope_cos[:32, 0], b.rope_cos[:32, 0], atol=1e-6)
    for p in (1, 5, 10, 31):
        assert b.rope_cos[3 * p, -1].item() == pytest.approx(a.rope_cos[p, -1].item(), abs=1e-5)
        assert b.rope_sin[3 * p, -1].item() == pytest.approx(a.rope_sin[p, -1].item(), abs=1e-5)
    with pytest.raises(SciarError, match="unknown context extension"):
        with_context(base, 64, method="yarn")
