"""Speculative decoding leaves the model's distribution exactly as it is (scipy's chi-square test against the
model's own probabilities of whole continuations, enumerated), with a grammar, top-k and temperature on."""

import pytest
import torch
from scipy.stats import chisquare

from sciar.checkpoint import load_model
from sciar.decode.speculative import _Depth, fit_heads, speculative_generate, with_heads
from sciar.decode.tokens import filter_logits
from sciar.errors import CheckpointError, SciarError
from sciar.model import LanguageModel, ModelConfig
from test_core_sample import toy

FILT = dict(temperature=0.8, top_k=5)
PROMPT = [1, 2, 3]
N_NEW = 3

@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    m = LanguageModel(ModelConfig(vocab_size=8, block_size=32, n_layer=2, n_head=2, n_embd=32, mtp_heads=2)).eval()
    with torch.no_grad():
        m.trunk.wte.weight.mul_(3)
        for h in m.mtp:
            h.fc.weight.normal_(0, 0.3)  # heads that are often wrong: both acceptance and rejection happen
    return m

@pytest.fixture(scope="module")
def seq_target(target):
    """The same trunk with a sequential draft head of random weights (often wrong, so both branches happen)."""
    from dataclasses import replace

    torch.manual_seed(7)
    trunk = LanguageModel(replace(target.cfg, mtp_heads=0))
    trunk.load_state_dict({k: v for k, v in target.state_dict().items() if not k.startswith("mtp.")})
    m = with_heads(trunk, 2, kind="sequential").eval()
    with torch.no_grad():
        m.mtp.fc.weight.normal_(0, 0.3)
        m.mtp.proj.weight.normal_(0, 0.3)
    return m

def exact_distribution(model) -> dict[tuple, float]:
    """Probability of every continuation of N_NEW tokens: the product of the model's next-token distributions
    under the toy grammar, temperature and top-k, enumerated prefix by prefix."""
    out = {(): 1.0}
    for _ in range(N_NEW):
        nxt = {}
        for seq, pr in out.items():
            con = toy()
            for t in seq:
                con.advance(t)
            with torch.no_grad():
                logits = model(torch.tensor([PROMPT + list(seq)]))[0, -1]
            allowed = con.allowed()
            if allowed is not None:
                keep = torch.zeros(8, dtype=torch.bool)
                keep[list(allowed)] = True
                logits = logits.masked_fill(~keep, float("-inf"))
            p = filter_logits(logits, **FILT).softmax(-1).double()
            for t in range(8):
                if p[t] > 0:
                    nxt[seq + (t,)] = pr * float(p[t])
        out = nxt
    return out

def check_frequencies(model, gens):
    exact = exact_distribution(model)
    n = len(gens)
    counts = {}
    for g in gens:
        counts[tuple(g.tokens)] = counts.get(tuple(g.tokens), 0) + 1
    assert set(counts) <= set(exact)  # nothing the grammar or top-k rules out
    big = [s for s in exact if exact[s] * n >= 5]
    obs = [counts.get(s, 0) for s in big] + [n - sum(counts.get(s, 0) for s in big)]
    exp = [exact[s] * n for s in big] + [n * (1 - sum(exact[s] for s in big))]
    assert chisquare(obs, exp).pvalue > 1e-3, (obs, exp)

def test_self_speculative_keeps_the_models_distribution(target):
    stats = {}
    gens = speculative_generate(target, [PROMPT] * 4000, max_new_tokens=N_NEW, seed=5, constraints=lambda i: toy(),
                                stats=stats, **FILT)
    assert 0 < stats["accepted"] < stats["proposed"]  # both branches of the rejection sampling were taken
    check_frequencies(target, gens)

def test_sequential_heads_keep_the_models_distribution(seq_target):
    stats = {}
    gens = speculative_generate(seq_target, [PROMPT] * 4000, max_new_tokens=N_NEW, seed=8, constraints=lambda i: toy(),
                                stats=stats, **FILT)
    assert 0 < stats["accepted"] < stats["proposed"]
    check_frequencies(seq_target, gens)

def test_draft_model_speculative_keeps_the_models_distribution(target):
    torch.manual_seed(1)
    draft = LanguageModel(ModelConfig(vocab_size=8, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    stats = {}
    gens = speculative_generate(target, [PROMPT] * 4000, max_new_tokens=N_NEW, seed=6, constraints=lambda i: toy(),
                                draft=draft, n_draft=2, stats=stats, **FILT)
    assert 0 < stats["accepted"] < stats["proposed"]
    check_frequencies(target, gens)

def test_long_ragged_runs_report_the_models_logprobs(target, seq_target):
    """Rows of different lengths, forced runs, rejections: every reported log-probability is the model's."""
    prompts = [[1, 2, 3], [4], [5, 6, 7, 1, 2], [3, 3]]
    for m, kw in ((target, {}), (seq_target, {}),
                  (target, {"draft": LanguageModel(ModelConfig(vocab_size=8, block_size=32, n_layer=1, n_head=2, n_embd=16))})):
        gens = speculative_generate(m, prompts, max_new_tokens=20, seed=3, constraints=[toy(), None, toy(), None],
                                    stop=[[0, 0]], **kw)
        for g in gens:
            assert len(g.tokens) == 20 or g.stopped
            with torch.no_grad():
                lp = torch.log_softmax(target(torch.tensor([g.prompt + g.tokens]))[0], -1)
            want = [float(lp[len(g.prompt) - 1 + j, t]) for j, t in enumerate(g.tokens)]
            assert g.token_logprobs == pytest.approx(want, abs=1e-4)

def test_heads_are_required_and_added_frozen():
    torch.manual_seed(2)
    plain = LanguageModel(ModelConfig(vocab_size=8, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(SciarError, match="multi-token heads"):
        speculative_generate(plain, [[1]], max_new_tokens=2)
    m = with_heads(plain, 2)
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["mtp.0.fc.weight", "mtp.1.fc.weight"]
    assert torch.equal(m.trunk.wte.weight, plain.trunk.wte.weight)
    with pytest.raises(CheckpointError, match="crystal-medium.*mtp_heads"):
        load_model("crystal-medium", options={"mtp_heads": 3})

def test_mtp_loss_targets_the_tokens_ahead():
    """Head i at position t is scored against the token t + 2 + i of the input (the target of t + 1 + i)."""
    torch.manual_seed(3)
    m = LanguageModel(ModelConfig(vocab_size=8, block_size=16, n_layer=1, n_head=2, n_embd=16, mtp_heads=2))
    with torch.no_grad():
        for h in m.mtp:
            h.fc.weight.normal_()
        idx = torch.randint(8, (2, 7))
        tgt = torch.randint(8, (2, 7))
        h = m.trunk(idx)
        heads = m.mtp_logits(h)  # [2, 7, 2, 8]
        ce = torch.nn.functional.cross_entropy
        want = sum(ce(heads[:, : 7 - 1 - i, i].reshape(-1, 8), tgt[:, 1 + i:].reshape(-1)) for i in range(2))
        assert float(m.mtp_loss(h, tgt)) == pytest.approx(float(want), rel=1e-5)

def test_draft_depth_follows_the_measured_acceptance():
    """Draft j is made while the product of the acceptance rates of drafts 0..j (1 before any try) reaches min_gain."""
    d = _Depth(3, 0.3)
    assert d.depth() == 3  # nothing tried yet: optimistic
    for ok in (True, True, False, False):  # draft 0 accepted 2 of 4: rate (2 + 1) / (4 + 1) = 0.6
        d.record(0, ok)
    for ok in (False, False, False):  # draft 1 accepted 0 of 3: rate 1 / 4, reach 0.6 * 0.25 = 0.15 < 0.3
        d.record(1, ok)
    assert d.depth() == 1
    assert _Depth(3, 0.0).depth() == 3

def test_fit_heads_learns_a_deterministic_sequence():
    """On a sequence that repeats 0..7, the token 2 and 3 ahead is determined: trained heads predict it, the trunk
    stays as it was."""
    from sciar.data import TokenWindows

    torch.manual_seed(4)
    base = LanguageModel(ModelConfig(vocab_size=8, block_size=16, n_layer=1, n_head=2, n_embd=32))
    m = with_heads(base, 2)
    before = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("mtp.")}
    ids = torch.arange(2000) % 8
    out = fit_heads(m, TokenWindows(ids, 16, val_ids=ids[:200]), windows=32, epochs=12, batch=4, lr=2e-2, progress=False)
    assert out["head_0_val_top1"] == 1.0 and out["head_1_val_top1"] == 1.0
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())

def test_sequential_loss_unrolls_the_draft_step_teacher_forced():
    """Step k from position t reads the true token t + k and predicts the target of t + k; a chain through a
    target of -1 is left out. Scored against the data (cross-entropy) or, with ``distill``, against the model's
    own distribution at t + k (the LM head on the trunk's state there). Written out by hand, chain by chain."""
    F = torch.nn.functional
    torch.manual_seed(9)
    base = LanguageModel(ModelConfig(vocab_size=8, block_size=16, n_layer=1, n_head=2, n_embd=16))
    m = with_heads(base, 2, kind="sequential")
    with torch.no_grad():
        m.mtp.proj.weight.normal_(0, 0.3)
        idx = torch.randint(8, (1, 6))
        tgt = torch.randint(8, (1, 6))
        tgt[0, 3] = -1
        h = m.trunk(idx)[0]
        want = {False: 0.0, True: 0.0}
        for k in (1, 2):
            ce, kl = [], []
            for t in range(6 - k):
                if any(int(tgt[0, t + i]) < 0 for i in range(k + 1)):
                    continue
                g = h[t]
                for i in range(k):
                    g = g + m.mtp.proj(F.silu(m.mtp.fc(torch.cat([g, m.trunk.wte.weight[tgt[0, t + i]]]))))
                logq = F.log_softmax(m.head(g), -1)
                ce.append(-logq[int(tgt[0, t + k])])
                kl.append(-(F.softmax(m.head(h[t + k]), -1) * logq).sum())
            want[False] += float(torch.stack(ce).mean())
            want[True] += float(torch.stack(kl).mean())
        for distill in (False, True):
            assert float(m.mtp_loss(h[None], tgt, distill)) == pytest.approx(want[distill], rel=1e-5)
        assert want[True] != pytest.approx(want[False], rel=1e-2)


def test_distilled_heads_match_the_model_and_data_trained_heads_the_data():
    """An untrained trunk's next-token distributions are far from a repeating sequence 0..7: heads fitted to the
    data learn the sequence (top-1 1.0) and overlap little with the model; distilled heads overlap with it
    (``sum min(p, q)``, the acceptance rate of their drafts) far more."""
    from sciar.data import TokenWindows

    ids = torch.arange(2000) % 8
    out = {}
    for distill in (False, True):
        torch.manual_seed(4)
        m = with_heads(LanguageModel(ModelConfig(vocab_size=8, block_size=16, n_layer=1, n_head=2, n_embd=32)), 2,
                       kind="sequential")
        out[distill] = fit_heads(m, TokenWindows(ids, 16, val_ids=ids[:200]), windows=32, epochs=12, batch=4,
                                 lr=2e-2, distill=distill, progress=False)
    assert out[False]["head_0_val_top1"] == 1.0
    assert out[True]["head_0_val_overlap"] > 0.9 > out[False]["head_0_val_overlap"] + 0.2


def test_fit_heads_trains_a_sequential_head():
    """On a sequence that repeats 0..7 the sequential head learns the tokens 2 and 3 ahead."""
    from sciar.data import TokenWindows

    torch.manual_seed(4)
    m = with_heads(LanguageModel(ModelConfig(vocab_size=8, block_size=16, n_layer=1, n_head=2, n_embd=32)), 2,
                   kind="sequential")
    ids = torch.arange(2000) % 8
    out = fit_heads(m, TokenWindows(ids, 16, val_ids=ids[:200]), windows=32, epochs=12, batch=4, lr=2e-2, progress=False)
    assert out["head_0_val_top1"] == 1.0 and out["head_1_val_top1"] == 1.0
