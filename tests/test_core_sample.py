import pytest
import torch
from scipy.stats import chisquare

from sciar.errors import SciarError
from sciar.model import LanguageModel, ModelConfig
from sciar.sample import Decoder, filter_logits, generate


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


def test_cached_and_uncached_agree_and_logprobs_are_the_models(model):
    prompts = [[1, 2, 3], [4, 5], [1, 2, 3], [7]]
    a = generate(model, prompts, max_new_tokens=12, seed=3)
    b = generate(model, prompts, max_new_tokens=12, seed=3, use_cache=False)
    assert [g.tokens for g in a] == [g.tokens for g in b]
    for g in a:
        seq = torch.tensor([g.prompt + g.tokens])
        with torch.no_grad():
            lp = model(seq)[0].log_softmax(-1)
        want = sum(float(lp[len(g.prompt) - 1 + i, t]) for i, t in enumerate(g.tokens))
        assert g.logprob == pytest.approx(want, abs=1e-3)


def test_stop_sequences_processor_and_limits(model):
    gens = generate(model, [[1]] * 50, max_new_tokens=20, seed=0, stop=[[3]])
    for g in gens:
        assert 3 not in g.tokens[:-1]
        assert g.stopped == (g.tokens[-1] == 3)
        assert len(g.tokens) <= 20

    def forbid_three(seqs, logits):
        logits[:, 3] = float("-inf")
        return logits

    gens = generate(model, [[1]] * 50, max_new_tokens=20, seed=0, logits_processor=forbid_three)
    assert all(3 not in g.tokens for g in gens)
    # the context bounds generation
    gens = generate(model, [[1] * 30], max_new_tokens=100, seed=0)
    assert len(gens[0].tokens) == 2
    with pytest.raises(SciarError, match="context"):
        generate(model, [[1] * 32], max_new_tokens=1)
    with pytest.raises(SciarError, match="ruled out"):
        generate(model, [[1]], max_new_tokens=2, logits_processor=lambda s, l: l.fill_(float("-inf")))


def test_decoder_fork_continues_a_cached_prefix(model):
    dec = Decoder(model, 1, 16)
    logits = dec.prefill(torch.tensor([[1, 2, 3]]))
    kids = dec.fork(repeat=2)
    out = kids.step(torch.tensor([4, 6]))
    with torch.no_grad():
        ref = model(torch.tensor([[1, 2, 3, 4], [1, 2, 3, 6]]))[:, -1]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[0], model(torch.tensor([[1, 2, 3]]))[0, -1].detach(), atol=1e-5, rtol=1e-4)
