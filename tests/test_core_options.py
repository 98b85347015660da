"""The core's options from the literature (Primer, Lion, EMO, MEAP), each against an independent reference."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linprog

from core_tasks import TOK, ReverseTask
from sciar.checkpoint import load_model
from sciar.decode.tokens import Decoder, generate
from sciar.errors import CheckpointError, SciarError
from sciar.lion import Lion
from sciar.losses import emo_transport
from sciar.model import KVCache, LanguageModel, ModelConfig, SelfAttention
from sciar.train import TrainConfig, lion_budget, train
from test_core_sample import toy


def primer_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=8, block_size=48, n_layer=2, n_head=2, n_embd=32, mlp="relu2", qkv_conv=True, **kw)
    m = LanguageModel(cfg).eval()
    with torch.no_grad():
        m.trunk.wte.weight.mul_(3)
        for b in m.trunk.blocks:
            b.attn.conv.normal_(0, 0.5)  # a convolution far from the identity
    return m


def test_primer_convolution_is_a_depthwise_causal_conv1d():
    """The Q, K, V convolution equals torch's depthwise conv1d with two steps of left zero padding."""
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=8, block_size=16, n_layer=1, n_head=2, n_embd=8, qkv_conv=True)
    attn = SelfAttention(cfg)
    with torch.no_grad():
        attn.conv.normal_()
    u = torch.randn(2, 7, 24)
    ours = attn._causal_conv(u, None, None, 0)
    w = attn.conv.detach()
    kernel = torch.stack([w[2], w[1], 1 + w[0]], dim=-1)[:, None, :]  # [channels, 1, 3], oldest tap first
    ref = F.conv1d(F.pad(u.transpose(1, 2), (2, 0)), kernel, groups=24).transpose(1, 2)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_squared_relu_mlp():
    torch.manual_seed(2)
    m = LanguageModel(ModelConfig(vocab_size=8, block_size=8, n_layer=1, n_head=2, n_embd=8, mlp="relu2"))
    mlp = m.trunk.blocks[0].mlp
    x = torch.randn(3, 8)
    h = x @ mlp.fc.weight.T
    assert torch.allclose(mlp(x), (h.clamp(min=0) ** 2) @ mlp.proj.weight.T, atol=1e-6)


def test_primer_cached_decoding_equals_the_uncached_forward():
    m = primer_model()
    seq = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 1, 2, 3]])
    with torch.no_grad():
        full = m(seq)[0]
        dec = Decoder(m, 1, 16)
        steps = [dec.prefill(seq[:, :4])[0]] + [dec.step(seq[:, t])[0] for t in range(4, 10)]
    assert torch.allclose(torch.stack(steps), full[3:], atol=1e-5)
    # the static step (positions as a tensor, the whole buffer masked: what CUDA graphs replay)
    with torch.no_grad():
        cache = KVCache(m.cfg, 1, 16)
        m(seq[:, :4], cache=cache)
        cache.pos = torch.tensor([4])
        static = []
        for t in range(4, 10):
            cache.pos.fill_(t)
            static.append(m(seq[:, t : t + 1], cache=cache)[0, -1])
    assert torch.allclose(torch.stack(static), full[4:], atol=1e-5)


def test_primer_ragged_batch_with_forced_runs_matches_the_uncached_reference():
    """Left padding, forced runs and hidden slots in a cached ragged batch: the same tokens and log-probabilities
    as re-running every whole sequence (the convolution skips hidden slots as attention does)."""
    m = primer_model()
    prompts = [[1, 2, 3], [4], [5, 6, 7, 1, 2], [3, 3], [6]]
    cons = [toy(), None, toy(), None, toy()]
    kw = dict(max_new_tokens=30, seed=3, top_k=6)
    a = generate(m, prompts, constraints=[toy() if c else None for c in cons], **kw)
    b = generate(m, prompts, constraints=[toy() if c else None for c in cons], use_cache=False, **kw)
    for x, y in zip(a, b):
        assert x.tokens == y.tokens
        assert x.logprob == pytest.approx(y.logprob, abs=1e-4)


def test_lion_step_by_hand():
    """Two steps worked by hand from Chen et al.'s update (lr 0.1, betas 0.9/0.99, decay 0.5)."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    p.grad = torch.tensor([0.5, -0.1])
    opt.step()
    # c = 0.1 g -> sign (+, -); p - 0.1 (sign + 0.5 p) = (1 - 0.15, -2 + 0.1 + 0.1)
    assert torch.allclose(p.detach(), torch.tensor([0.85, -1.8]))
    assert torch.allclose(opt.state[p]["exp_avg"], torch.tensor([0.005, -0.001]))
    p.grad = torch.tensor([-0.01, 0.3])
    opt.step()
    # c = (0.0045 - 0.001, -0.0009 + 0.03): both +; p = (0.85 - 0.1 * 1.425, -1.8 - 0.1 * 0.1)
    assert torch.allclose(p.detach(), torch.tensor([0.7075, -1.81]))


def test_lion_budget_scales_lr_and_decay():
    b = lion_budget({"lr": 3e-3, "min_lr": 3e-4, "weight_decay": 0.1})
    assert b == pytest.approx({"lr": 1e-3, "min_lr": 1e-4, "weight_decay": 0.3, "optimizer": "lion"}) or (
        b["optimizer"] == "lion" and b["lr"] == pytest.approx(1e-3) and b["weight_decay"] == pytest.approx(0.3))
    with pytest.raises(SciarError, match="optimizer"):
        TrainConfig(optimizer="sgd")


class Interrupt(Exception):
    pass


def _reverse_model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=TOK.vocab_size, block_size=20, n_layer=1, n_head=2, n_embd=32, qkv_conv=True,
                      mlp="relu2", meap=0.15)
    return LanguageModel(cfg), cfg


def test_lion_with_primer_and_meap_resumes_exactly(tmp_path):
    """Lion's momentum and MEAP's mask draws are saved and restored: an interrupted run ends where an
    uninterrupted one does, bit for bit; resuming with AdamW or without the convolution is refused."""
    tc = TrainConfig(max_steps=12, batch_size=8, lr=1e-3, warmup_steps=2, eval_every=6, eval_batches=1,
                     save_every=6, progress=False, optimizer="lion", weight_decay=0.3)
    model, cfg = _reverse_model()
    train(model, ReverseTask(), tc, tmp_path / "a", {"model": cfg.to_dict()}, TOK, {"domain": "test"})

    def stop(step, rec):
        if step == 8:
            raise Interrupt

    model, cfg = _reverse_model()
    with pytest.raises(Interrupt):
        train(model, ReverseTask(), tc, tmp_path / "b", {"model": cfg.to_dict()}, TOK, {"domain": "test"}, callback=stop)
    model, cfg = _reverse_model()
    train(model, ReverseTask(), tc, tmp_path / "b", {"model": cfg.to_dict()}, TOK, {"domain": "test"})
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / x / "last" / "model.safetensors")) for x in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    adamw = TrainConfig(**{**tc.__dict__, "optimizer": "adamw", "max_steps": 14})
    with pytest.raises(CheckpointError, match="optimizer lion"):
        train(model, ReverseTask(), adamw, tmp_path / "b", {"model": cfg.to_dict()}, TOK, {"domain": "test"})
    plain = dict(cfg.to_dict(), qkv_conv=False)
    with pytest.raises(CheckpointError, match="qkv_conv"):
        train(model, ReverseTask(), tc, tmp_path / "b", {"model": plain}, TOK, {"domain": "test"})


def test_emo_transport_cost_is_the_earth_movers_distance_on_three_tokens():
    """Three tokens at 0, 90 and 45 degrees: the model's distribution moved onto the target by an optimal
    transport plan (scipy's linear program over the 3 x 3 plan) costs what ``emo_transport`` says; by hand,
    with target 0: q1 * 1 + q2 * (1 - 1/sqrt 2)."""
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    logits = torch.tensor([[0.3, -0.2, 1.1], [2.0, 0.1, -1.0]])
    targets = torch.tensor([0, 2])
    ours = emo_transport(logits, targets, e)
    q = logits.softmax(-1).double().numpy()
    en = e.double().numpy() / np.linalg.norm(e.double().numpy(), axis=1, keepdims=True)
    cost = 1 - en @ en.T
    for i, t in enumerate(targets.tolist()):
        target = np.eye(3)[t]
        # plan P[a, b] >= 0: rows sum to q, columns to the target
        a_eq = np.vstack([np.kron(np.eye(3), np.ones(3)), np.kron(np.ones(3), np.eye(3))])
        lp = linprog(cost.ravel(), A_eq=a_eq, b_eq=np.concatenate([q[i], target]), bounds=(0, None))
        assert float(ours[i]) == pytest.approx(lp.fun, abs=1e-6)
    assert float(ours[0]) == pytest.approx(q[0, 1] + q[0, 2] * (1 - 1 / math.sqrt(2)), abs=1e-6)


def test_emo_loss_mixes_cross_entropy_and_transport_as_the_paper():
    torch.manual_seed(3)
    m = LanguageModel(ModelConfig(vocab_size=8, block_size=8, n_layer=1, n_head=2, n_embd=16))
    idx, tgt = torch.randint(8, (2, 6)), torch.randint(8, (2, 6))
    tgt[0, :2] = -1
    with torch.no_grad():
        logits = m(idx)
        ce = F.cross_entropy(logits.reshape(-1, 8), tgt.reshape(-1), ignore_index=-1, reduction="none")
        m.emo_cost = torch.randn(8, 5)
        e = F.normalize(m.emo_cost, dim=-1)
        q = logits.reshape(-1, 8).softmax(-1)
        emd = torch.stack([sum(q[n, i] * (1 - e[i] @ e[max(int(y), 0)]) for i in range(8))
                           for n, y in enumerate(tgt.reshape(-1))])
        per = 0.5 * (ce + torch.minimum(ce / emd, torch.tensor(3.0)) * emd)
        keep = tgt.reshape(-1) >= 0
        assert float(m(idx, tgt)) == pytest.approx(float(per[keep].mean()), rel=1e-5)
        m.eval()  # EMO is a training loss: evaluation scores plain cross-entropy, comparable across options
        assert float(m(idx, tgt)) == pytest.approx(float(ce[keep].mean()), rel=1e-5)


def test_meap_masks_inputs_only_in_training():
    """A share near 1 masks (almost surely) every input: the loss is that of a sequence of mask vectors.
    In evaluation nothing is masked."""
    torch.manual_seed(4)
    m = LanguageModel(ModelConfig(vocab_size=8, block_size=8, n_layer=1, n_head=2, n_embd=16, meap=0.999999))
    idx, tgt = torch.randint(8, (3, 6)), torch.randint(8, (3, 6))
    masked = m.mask_embed.detach().expand(3, 6, 16)
    with torch.no_grad():
        want = F.cross_entropy(m.head(m.trunk(embeds=masked)).reshape(-1, 8), tgt.reshape(-1))
        plain = F.cross_entropy(m(idx).reshape(-1, 8), tgt.reshape(-1))
        m.train()
        assert float(m(idx, tgt)) == pytest.approx(float(want), rel=1e-5)
        m.eval()
        assert float(m(idx, tgt)) == pytest.approx(float(plain), rel=1e-6)


def test_an_option_the_checkpoint_was_not_trained_with_is_refused_at_load():
    with pytest.raises(CheckpointError) as e:
        load_model("crystal-small", options={"qkv_conv": True})
    msg = str(e.value)
    assert "crystal-small" in msg and "qkv_conv" in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match="mtp_heads"):
        load_model("crystal-small", options={"mtp_heads": 3})
    model, _ = load_model("crystal-small", options={"qkv_conv": False, "mlp": "gelu"})
    assert model.cfg.vocab_size == 374
