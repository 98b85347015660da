"""Attention modes and conditioning of the trunk, against hand-written references."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sciar.checkpoint import load_language_model
from sciar.conditioning import ClassEmbedding, drop_conditions, drop_rows
from sciar.errors import SciarError
from sciar.model import KVCache, LanguageModel, ModelConfig, Transformer

ROOT = Path(__file__).resolve().parents[1]


def tiny(**kw):
    base = dict(vocab_size=0, block_size=32, n_layer=2, n_head=2, n_embd=16, pos="learned")
    base.update(kw)
    return ModelConfig(**base)


def ref_attention(q, k, v, causal):
    """softmax(q k^T / sqrt(d)) v, written out; q, k, v: [B, H, T, D]."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        T, S = s.shape[-2:]
        s = s.masked_fill(torch.ones(T, S, dtype=torch.bool).triu(1), float("-inf"))
    return s.softmax(-1) @ v


def ref_forward(trunk: Transformer, x, causal, context=None):
    """The trunk written out from its weights (learned positions, no adaLN): an independent reference."""
    B, T, C = x.shape
    H = trunk.cfg.n_head

    def heads(t):
        return t.view(B, -1, H, C // H).transpose(1, 2)

    x = x + trunk.wpe.weight[:T]
    for blk in trunk.blocks:
        q, k, v = (blk.ln1(x) @ blk.attn.qkv.weight.T).split(C, -1)
        y = ref_attention(heads(q), heads(k), heads(v), causal).transpose(1, 2).reshape(B, T, C)
        x = x + y @ blk.attn.proj.weight.T
        if context is not None:
            q = blk.ln_x(x) @ blk.cross.q.weight.T
            k, v = (context @ blk.cross.kv.weight.T).split(C, -1)
            y = ref_attention(heads(q), heads(k), heads(v), False).transpose(1, 2).reshape(B, T, C)
            x = x + y @ blk.cross.proj.weight.T
        x = x + F.gelu(blk.ln2(x) @ blk.mlp.fc.weight.T) @ blk.mlp.proj.weight.T
    return trunk.ln_f(x)


def test_shipped_checkpoint_computes_as_before():
    """Logits of crystal-small on a fixed input, recorded by the code before conditioning (commit 34b123f)."""
    ref = load_file(ROOT / "tests/fixtures/crystal_small_logits.safetensors")
    model, _, _ = load_language_model(ROOT / "data/checkpoints/crystal-small")
    assert model.cfg.attention == "causal" and not model.cfg.cond_dim and not model.cfg.cross_dim
    with torch.no_grad():
        assert torch.equal(model(ref["ids"]), ref["logits"])


@pytest.mark.parametrize("name", ["crystal-small", "crystal-medium", "timeseries-pretrained"])
def test_shipped_checkpoints_inspect(name):
    from cli import main

    assert main(["inspect", str(ROOT / "data/checkpoints" / name)]) == 0


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_attention_modes_match_reference(attention):
    torch.manual_seed(0)
    trunk = Transformer(tiny(attention=attention)).eval()
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(trunk(embeds=x), ref_forward(trunk, x, causal=attention == "causal"), atol=1e-5, rtol=1e-4)


def test_adaln_starts_as_the_unconditioned_model():
    torch.manual_seed(1)
    plain = Transformer(tiny(vocab_size=11)).eval()
    cond = Transformer(tiny(vocab_size=11, cond_dim=5)).eval()
    missing, unexpected = cond.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".ada." in k for k in missing)
    ids = torch.randint(0, 11, (3, 9))
    c = torch.randn(3, 5)
    assert torch.equal(cond(idx=ids, cond=c), plain(idx=ids))
    with torch.no_grad():  # once trained away from zero, the condition changes the output
        for blk in cond.blocks:
            blk.ada.weight.normal_(std=0.5)
    assert not torch.allclose(cond(idx=ids, cond=c), plain(idx=ids), atol=1e-3)


def test_cross_attention_matches_reference_and_cached_kv():
    torch.manual_seed(2)
    trunk = Transformer(tiny(cross_dim=6, attention="bidirectional")).eval()
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 4, 6)
    ref = ref_forward(trunk, x, causal=False, context=ctx)
    kv = trunk.encode_context(ctx)
    torch.testing.assert_close(trunk(embeds=x, context=ctx), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(trunk(embeds=x, context=kv), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(trunk(embeds=x, context=kv), ref, atol=1e-5, rtol=1e-4)  # reused, unchanged
    # a dropped row attends to the null condition only: what it sees of the condition tokens is gone
    drop = trunk.encode_context(ctx, drop=torch.tensor([False, True]))
    null = ref_forward(trunk, x, causal=False, context=trunk.null_context.detach().expand(2, 1, 6))
    out = trunk(embeds=x, context=drop)
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[1], null[1], atol=1e-5, rtol=1e-4)


def test_cached_causal_decoding_with_cross_attention():
    torch.manual_seed(3)
    cfg = tiny(vocab_size=11, cross_dim=6, pos="rope")
    m = LanguageModel(cfg).eval()
    ids, ctx = torch.randint(0, 11, (2, 12)), torch.randn(2, 3, 6)
    full = m(ids, context=ctx)
    kv = m.trunk.encode_context(ctx)
    cache = KVCache(cfg, 2, 12)
    parts = [m(ids[:, :5], cache=cache, context=kv)] + [m(ids[:, t : t + 1], cache=cache, context=kv) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)


def test_class_dropout_rate_and_null_class():
    emb = ClassEmbedding(4, 8)
    g = torch.Generator().manual_seed(0)
    n, p = 20000, 0.1
    dropped = int(drop_rows(n, p, generator=g).sum())
    assert abs(dropped - n * p) < 5 * math.sqrt(n * p * (1 - p))
    labels = torch.arange(4).repeat(50)
    out = emb(labels, drop=drop_rows(200, 0.5, generator=g))
    is_null = (out == emb.table.weight[4]).all(-1)
    assert 60 < int(is_null.sum()) < 140  # Binomial(200, 0.5) within 5.6 sigma
    torch.testing.assert_close(out[~is_null], emb.table.weight[labels[~is_null]])
    assert torch.equal(emb(None, batch=3), emb.table.weight[4].expand(3, 8))


def test_each_condition_is_dropped_on_its_own_and_all_together_at_the_joint_rate():
    """Closed form: with joint rate q and own rates a, b, the four patterns (class lost?, context lost?) have
    probabilities (1-q)(1-a)(1-b), (1-q)a(1-b), (1-q)(1-a)b and q + (1-q)ab."""
    n, a, b, q = 20000, 0.2, 0.3, 0.1
    d = drop_conditions(n, {"class": a, "context": b}, q, generator=torch.Generator().manual_seed(0))
    want = {(False, False): (1 - q) * (1 - a) * (1 - b), (True, False): (1 - q) * a * (1 - b),
            (False, True): (1 - q) * (1 - a) * b, (True, True): q + (1 - q) * a * b}
    for (x, y), p in want.items():
        k = int(((d["class"] == x) & (d["context"] == y)).sum())
        assert abs(k - n * p) < 5 * math.sqrt(n * p * (1 - p)), (x, y, k, n * p)
    alone = drop_conditions(n, {"class": a, "context": b}, generator=torch.Generator().manual_seed(1))
    both = int((alone["class"] & alone["context"]).sum())  # no joint part: independent, a * b
    assert abs(both - n * a * b) < 5 * math.sqrt(n * a * b * (1 - a * b))


def test_conditions_a_model_was_not_trained_with():
    plain = Transformer(tiny(vocab_size=11))
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(SciarError, match="takes no condition vector"):
        plain(idx=ids, cond=torch.zeros(1, 4))
    with pytest.raises(SciarError, match="no cross-attention"):
        plain(idx=ids, context=torch.zeros(1, 2, 4))
    with pytest.raises(SciarError, match="conditioned by a vector"):
        Transformer(tiny(vocab_size=11, cond_dim=4))(idx=ids)
    with pytest.raises(SciarError, match="pass context"):
        Transformer(tiny(vocab_size=11, cross_dim=4))(idx=ids)
    with pytest.raises(SciarError, match=r"\[batch, tokens, 4\]"):
        Transformer(tiny(vocab_size=11, cross_dim=4))(idx=ids, context=torch.zeros(1, 2, 5))
    with pytest.raises(SciarError, match="class index 4 out of range"):
        ClassEmbedding(4, 8)(torch.tensor([0, 4]))
    with pytest.raises(SciarError, match="no KV cache"):
        cfg = tiny(attention="bidirectional")
        Transformer(cfg)(embeds=torch.zeros(1, 2, 16), cache=KVCache(cfg, 1, 4))
    with pytest.raises(SciarError, match="attention mode"):
        tiny(attention="sideways")
