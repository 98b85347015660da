"""Categorical, multi-field and regression heads (sciar.heads) against hand-computed references."""

import numpy as np
import pytest
import torch
from safetensors import safe_open
from scipy import stats

from sciar.checkpoint import load_language_model, load_weights
from sciar.errors import SciarError
from sciar.heads import CategoricalHead, MultiFieldEmbedding, MultiFieldHead, RegressionHead


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_categorical_head_loads_the_shipped_lm_head_bit_for_bit():
    model, tok, ck = load_language_model("data/checkpoints/crystal-small")
    ids = torch.tensor([tok.encode("data_")[:4]])
    want = model(ids)
    model.head = CategoricalHead(model.cfg.n_embd, model.cfg.vocab_size, weight=model.trunk.wte.weight)
    model.head.weight.data.zero_()  # tied: zeroes the embedding too, so the load must restore both
    load_weights(ck, model)
    assert model.head.weight is model.trunk.wte.weight
    assert torch.equal(model(ids), want)


def test_categorical_head_loss_and_sampling_follow_the_softmax():
    torch.manual_seed(0)
    head = CategoricalHead(4, 6)
    h, target = torch.randn(2, 5, 4), torch.randint(0, 6, (2, 5))
    target[0, 1] = -1
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    lp = _log_softmax((h.numpy() @ head.weight.detach().numpy().T).astype(np.float64))
    keep = [(b, t) for b in range(2) for t in range(5) if target[b, t] >= 0 and mask[b, t]]
    want = -np.mean([lp[b, t, target[b, t]] for b, t in keep])
    assert head.loss(h, target, mask).item() == pytest.approx(want, rel=1e-5)

    # draws from one row against softmax(logits / T) restricted to the top 3, renormalised
    row = torch.randn(1, 4) * 3
    logits = (row @ head.weight.detach().T)[0].double().numpy()
    n, T = 20_000, 0.7
    ids = head.sample(row.expand(n, 4), temperature=T, top_k=3, generator=torch.Generator().manual_seed(1))
    top = np.argsort(-logits)[:3]
    p = np.exp(logits[top] / T - (logits[top] / T).max())
    p /= p.sum()
    counts = np.bincount(ids.numpy(), minlength=6)
    assert counts.sum() == counts[top].sum()  # nothing outside the top 3
    assert stats.chisquare(counts[top], p * n).pvalue > 1e-3


def test_multi_field_embedding_reads_a_padding_row():
    torch.manual_seed(0)
    emb = MultiFieldEmbedding([3, 5], n_embd=8, field_dim=4)
    x = torch.tensor([[[2, -1], [-1, 4]]])
    t0, t1 = emb.tables[0].weight.detach(), emb.tables[1].weight.detach()
    cat = torch.stack([torch.cat([t0[2], t1[5]]), torch.cat([t0[3], t1[4]])])  # -1 -> row `size`
    want = cat @ emb.proj.weight.detach().T + emb.proj.bias.detach()
    assert torch.allclose(emb(x)[0], want, atol=1e-6)
    with pytest.raises(SciarError, match="field 1"):
        emb(torch.tensor([[[0, 5]]]))


def test_multi_field_loss_is_the_hand_computed_cross_entropy():
    torch.manual_seed(0)
    sizes = [2, 3, 4]
    head = MultiFieldHead(6, sizes)
    h = torch.randn(1, 4, 6)
    target = torch.tensor([[[1, 2, 3], [0, -1, -1], [1, 0, 2], [0, 1, 1]]])  # position 1: a separator
    mask = torch.tensor([[True, True, True, False]])
    total, count = 0.0, 0
    with torch.no_grad():
        for t in range(3):
            z = h[0, t]
            for j, n in enumerate(sizes):
                lp = _log_softmax(head.outs[j](z).double().numpy())
                if target[0, t, j] >= 0:
                    total, count = total - lp[target[0, t, j]], count + 1
                if j + 1 < len(sizes):
                    v = int(target[0, t, j])
                    z = z + head.chosen[j].weight[v if v >= 0 else n]
    assert head.loss(h, target, mask).item() == pytest.approx(total / count, rel=1e-5)
    lps = head.log_probs(h, target)
    assert [tuple(x.shape) for x in lps] == [(1, 4, 2), (1, 4, 3), (1, 4, 4)]


def test_multi_field_sampling_keeps_to_the_allowed_values():
    torch.manual_seed(0)
    sizes = [3, 5, 4]
    head = MultiFieldHead(8, sizes)
    N = 300
    h = torch.randn(N, 8)
    rule = torch.rand(N, 3, 5) < 0.5
    rule[:40, 0] = False  # rows 0..39 may use nothing in field 0

    def allowed(step, j, chosen):
        if j == 0:
            return rule[:, 0, :3]
        if j == 1:  # field 1 at most field 0's value (nothing when field 0 is padding)
            return torch.arange(5)[None, :] <= chosen[:, :1]
        return rule[:, 2, :4]

    out = head.sample(h, temperature=1.5, generator=torch.Generator().manual_seed(2), allowed=allowed)
    assert out.shape == (N, 3) and out.dtype == torch.long
    assert (out[:40, 0] == -1).all() and (out[:40, 1] == -1).all()
    for j, ok in [(0, rule[:, 0, :3]), (2, rule[:, 2, :4])]:
        any_ok = ok.any(-1)
        assert (out[~any_ok, j] == -1).all()
        assert ok[any_ok].gather(1, out[any_ok, j : j + 1]).all()
    has0 = out[:, 0] >= 0
    assert (out[has0, 1] <= out[has0, 0]).all() and (out[has0, 1] >= 0).all() and (out[~has0, 1] == -1).all()
    again = head.sample(h, temperature=1.5, generator=torch.Generator().manual_seed(2), allowed=allowed)
    assert torch.equal(out, again)


def test_multi_field_allowed_sets_may_depend_on_the_step():
    """A grammar by position: at step t field 0 may only be t % 3, and field 1 only values up to t."""
    torch.manual_seed(0)
    head = MultiFieldHead(8, [3, 5])
    h = torch.randn(64, 8)
    seen = []

    def allowed(step, j, chosen):
        seen.append((step, j))
        if j == 0:
            return (torch.arange(3) == step % 3).expand(len(chosen), 3)
        return (torch.arange(5) <= step).expand(len(chosen), 5)

    for t in range(5):
        out = head.sample(h, generator=torch.Generator().manual_seed(t), allowed=allowed, step=t)
        assert (out[:, 0] == t % 3).all() and (out[:, 1] <= t).all()
    assert seen == [(t, j) for t in range(5) for j in (0, 1)]
    assert head.sample(h[:2], allowed=allowed).shape == (2, 2) and seen[-2:] == [(0, 0), (0, 1)]  # default step 0


def test_regression_head_loss_and_quantile_fit():
    torch.manual_seed(0)
    head = RegressionHead(4, 2, quantiles=(0.9, 0.1))
    h, y = torch.randn(3, 5, 4), torch.randn(3, 5, 2)
    mask = torch.rand(3, 5) < 0.6
    with torch.no_grad():
        point = (h @ head.proj.weight.T + head.proj.bias).numpy()
        q = (h @ head.quantile_proj.weight.T + head.quantile_proj.bias).numpy().reshape(3, 5, 2, 2)
    per = ((point - y.numpy()) ** 2).mean(-1)
    for k, level in enumerate([0.1, 0.9]):  # stored ascending
        r = y.numpy() - q[..., k, :]
        per = per + np.maximum(level * r, (level - 1) * r).mean(-1) / 2
    assert head.loss(h, y, mask).item() == pytest.approx(per[mask.numpy()].mean(), rel=1e-5)

    # a short fit of N(1, 0.5^2) from a constant input: the point goes to the mean, the quantiles to the true ones
    head = RegressionHead(1, 1, quantiles=(0.1, 0.9))
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        y = 1 + 0.5 * torch.randn(1024, 1, generator=g)
        opt.zero_grad()
        head.loss(torch.ones(1024, 1), y).backward()
        opt.step()
    with torch.no_grad():
        assert head.sample(torch.ones(1, 1)).item() == pytest.approx(1.0, abs=0.06)
        got = head.quantiles(torch.ones(1, 1))[0, :, 0].numpy()
    assert got == pytest.approx(stats.norm.ppf([0.1, 0.9], 1, 0.5), abs=0.08)


def test_regression_head_takes_the_time_series_projection():
    path = "data/checkpoints/timeseries-pretrained/model.safetensors"
    with safe_open(path, "pt") as f:
        proj = {k[len("proj."):]: f.get_tensor(k) for k in f.keys() if k.startswith("proj.")}
    head = RegressionHead(128, 96, hidden=256, dropout=0.1).eval()
    head.proj.load_state_dict(proj)
    h = torch.randn(2, 128)
    want = torch.tanh(h @ proj["0.weight"].T + proj["0.bias"]) @ proj["3.weight"].T + proj["3.bias"]
    assert torch.allclose(head.sample(h), want, atol=1e-5)
    with pytest.raises(SciarError, match="without quantiles"):
        head.quantiles(h)
