import pytest
import torch
from scipy.stats import chisquare

from sciar.errors import SciarError
from sciar.model import LanguageModel, ModelConfig
from sciar.decode.constraints import Constraint, GeneratorConstraint
from sciar.decode.tokens import Decoder, filter_logits, generate, row_seed


class Forbid:
    """A constraint ruling out some tokens everywhere (a boolean mask)."""

    def __init__(self, ids, vocab=8):
        self.mask = torch.ones(vocab, dtype=torch.bool)
        self.mask[list(ids)] = False

    def allowed(self):
        return self.mask

    def advance(self, token):
        assert self.mask[token]

    def copy(self):
        return self

    def rewind(self, n):
        pass


def toy_grammar():
    """Free among 1-4; a 2 forces 5 then 6; a 4 leaves 0 or 7; a 7 ends the grammar (then anything goes)."""
    while True:
        t = yield [1, 2, 3, 4]
        if t == 2:
            yield [5]
            yield [6]
        elif t == 4:
            if (yield [0, 7]) == 7:
                return


def toy():
    return GeneratorConstraint(toy_grammar)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=8, block_size=32, n_layer=2, n_head=2, n_embd=32)
    m = LanguageModel(cfg).eval()
    with torch.no_grad():
        m.trunk.wte.weight.mul_(3)  # sharper, non-uniform next-token distributions
    return m


def next_probs(model, prompt, **filt):
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0, -1]
    return filter_logits(logits, **filt).softmax(-1) if filt else logits.softmax(-1)


@pytest.mark.parametrize("filt", [{}, {"temperature": 0.7, "top_k": 4}, {"top_p": 0.8}])
def test_sampled_frequencies_match_model_probabilities(model, filt):
    prompt = [1, 2, 3]
    p = next_probs(model, prompt, **filt)
    n = 6000
    gens = generate(model, [prompt] * n, max_new_tokens=1, seed=0, **filt)
    counts = torch.bincount(torch.tensor([g.tokens[0] for g in gens]), minlength=8).double()
    support = p > 0
    assert counts[~support].sum() == 0  # filtered tokens never appear
    expected = p[support].double() / p[support].double().sum() * n
    stat = chisquare(counts[support].numpy(), expected.numpy())
    assert stat.pvalue > 1e-3, (counts, expected)


def test_constrained_top_k_frequencies_in_a_ragged_batch(model):
    """Rows of two prompt lengths in one batch, a constraint and top-k: each prompt's draws follow the
    model's distribution renormalised over what survives (scipy's chi-square test)."""
    n = 3000
    prompts = [[1, 2, 3], [4, 5]] * n
    gens = generate(model, prompts, max_new_tokens=1, seed=2, top_k=4, constraints=lambda i: Forbid([0, 1]))
    for prompt in ([1, 2, 3], [4, 5]):
        with torch.no_grad():
            logits = model(torch.tensor([prompt]))[0, -1]
        logits[[0, 1]] = float("-inf")
        p = filter_logits(logits, top_k=4).softmax(-1)
        counts = torch.bincount(torch.tensor([g.tokens[0] for g in gens if g.prompt == prompt]), minlength=8).double()
        assert counts[p == 0].sum() == 0
        expected = p[p > 0].double() / p[p > 0].double().sum() * n
        assert chisquare(counts[p > 0].numpy(), expected.numpy()).pvalue > 1e-3, (counts, expected)


def test_a_rows_output_does_not_depend_on_its_batch(model):
    prompts = [[1, 2, 3], [4], [5, 6, 7, 1, 2], [3, 3], [6]]
    cons = [toy(), None, toy(), None, toy()]
    batch = generate(model, prompts, max_new_tokens=14, seed=7, constraints=cons)
    for i, p in enumerate(prompts):
        alone = generate(model, [p], max_new_tokens=14, seed=[row_seed(7, i)], constraints=[toy() if cons[i] else None])
        assert alone[0].tokens == batch[i].tokens
        assert alone[0].logprob == pytest.approx(batch[i].logprob, abs=1e-4)


def test_constraint_copy_and_rewind_equal_a_replay():
    taken = [1, 2, 5, 6, 4, 0, 3, 2]
    c = toy()
    for t in taken[:5]:
        c.advance(t)
    fork = c.copy()
    for t in taken[5:]:
        c.advance(t)
    assert list(c.allowed()) == [5]  # after the last 2, as replayed by hand
    assert list(fork.allowed()) == [0, 7] and fork.taken == taken[:5]  # the fork kept its state
    c.rewind(4)
    assert c.taken == taken[:4] and list(c.allowed()) == [1, 2, 3, 4]
    fork.advance(7)  # the grammar ended: anything goes
    assert fork.allowed() is None
    assert isinstance(c, Constraint) and isinstance(Forbid([1]), Constraint)


def test_second_step_is_conditioned_on_the_first(model):
    gens = generate(model, [[5, 1]] * 3000, max_new_tokens=2, seed=1)
    first = torch.tensor([g.tokens[0] for g in gens])
    tok = int(torch.mode(first).values)
    seconds = torch.tensor([g.tokens[1] for g in gens])[first == tok]
    p = next_probs(model, [5, 1, tok]).double()
    counts = torch.bincount(seconds, minlength=8).double()
    keep = p * len(seconds) >= 5
    expected = p[keep] / p[keep].sum() * counts[keep].sum()
    assert chisquare(counts[keep].numpy(), expected.numpy()).pvalue > 1e-3


@pytest.mark.parametrize("constrained", [False, True])
def test_cached_and_uncached_agree_and_logprobs_are_the_models(model, constrained):
    prompts = [[1, 2, 3], [4, 5], [1, 2, 3], [7], [2, 2, 2, 2, 2, 2, 2]]
    cons = (lambda i: toy()) if constrained else None
    # forced runs of different lengths per row leave hidden slots: 24 tokens fill the cache and compact it
    a = generate(model, prompts, max_new_tokens=24, seed=3, constraints=cons)
    b = generate(model, prompts, max_new_tokens=24, seed=3, use_cache=False, constraints=cons)
    assert [g.tokens for g in a] == [g.tokens for g in b]
    if constrained:  # the grammar held: every 2 is followed by 5 6
        for g in a:
            s = g.tokens
            assert all(s[i + 1 : i + 3] == [5, 6][: len(s) - i - 1] for i, t in enumerate(s[:7]) if t == 2)
    for g in a:
        seq = torch.tensor([g.prompt + g.tokens])
        with torch.no_grad():
            lp = model(seq)[0].log_softmax(-1)
        want = sum(float(lp[len(g.prompt) - 1 + i, t]) for i, t in enumerate(g.tokens))
        assert g.logprob == pytest.approx(want, abs=1e-3)


def test_stop_sequences_constraints_and_limits(model):
    gens = generate(model, [[1]] * 50, max_new_tokens=20, seed=0, stop=[[3]])
    for g in gens:
        assert 3 not in g.tokens[:-1]
        assert g.stopped == (g.tokens[-1] == 3)
        assert len(g.tokens) <= 20

    gens = generate(model, [[1]] * 50, max_new_tokens=20, seed=0, constraints=[Forbid([3])] * 50)
    assert all(3 not in g.tokens for g in gens)
    # the context bounds generation
    gens = generate(model, [[1] * 30], max_new_tokens=100, seed=0)
    assert len(gens[0].tokens) == 2
    with pytest.raises(SciarError, match="context"):
        generate(model, [[1] * 32], max_new_tokens=1)
    with pytest.raises(SciarError, match="ruled out"):
        generate(model, [[1]], max_new_tokens=2, constraints=[Forbid(range(8))])


def test_decoder_fork_continues_a_cached_prefix(model):
    dec = Decoder(model, 1, 16)
    logits = dec.prefill(torch.tensor([[1, 2, 3]]))
    kids = dec.fork(repeat=2)
    out = kids.step(torch.tensor([4, 6]))
    with torch.no_grad():
        ref = model(torch.tensor([[1, 2, 3, 4], [1, 2, 3, 6]]))[:, -1]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[0], model(torch.tensor([[1, 2, 3]]))[0, -1].detach(), atol=1e-5, rtol=1e-4)
