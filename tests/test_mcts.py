"""Tree search on a toy token task (no crystals): a tiny trained model of ``x=DD;y=DD`` lines."""

import math
import os
import signal
import time

import pytest
import torch

from mcts import Evaluation, Problem, RunningSigmoidReward, SearchConfig, search
from mcts.rollout import Decoding, Request, extend_root, rollout_batch
from mcts_toy import BOS, NL, TOK, digits, toy_evaluate, toy_score, train_toy
from sciar.decode.constraints import GeneratorConstraint
from sciar.decode.tokens import generate
from sciar.errors import SciarError


@pytest.fixture(scope="module")
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only add overhead
    yield train_toy()
    torch.set_num_threads(threads)


def problem(**kw):
    return Problem([[BOS]], toy_evaluate, stop=[NL], decode=lambda s: TOK.decode(s[1:]), **kw)


def cfg(**kw):
    base = dict(simulations=60, width=10, c=5.0, forced=0.95, batch=8, seed=0)
    base.update(kw)
    return SearchConfig(**base)


def test_ragged_cached_rollouts_match_full_recompute(model):
    """Rows of different prefix lengths in one cache (left padding masked) give the logits of plain runs."""
    prefixes = [[BOS] + TOK.encode("x="), [BOS] + TOK.encode("x=12;y="), [BOS] + TOK.encode("x=5")]
    reqs = []
    for p in prefixes:
        _, seg, _, _ = extend_root(Decoding(model, [16], [NL], forced=1.0), p, 0)
        reqs.append(Request(p, 0, 1, [seg], TOK.encode("7")[0]))
    outs = {m: rollout_batch(Decoding(model, [16], [NL], top_k=1, forced=0.95, mode=m), reqs, torch.Generator().manual_seed(0))
            for m in ("tree", "prefill", "none")}
    for i, p in enumerate(prefixes):
        g = generate(model, [p + TOK.encode("7")], max_new_tokens=16, top_k=1, stop=[NL], seed=0)[0]
        expect = p + TOK.encode("7") + g.tokens
        for m in outs:
            assert outs[m][i].sequence == expect, m
    # the child's edge is the action plus the forced punctuation after it
    assert TOK.decode(outs["tree"][2].edge) == "7;y="
    assert TOK.decode(outs["tree"][0].edge) == "7"
    assert outs["tree"][2].edge_kv[0].shape[2] == 4


def test_tree_cache_carries_primers_convolution():
    """With Primer's convolution the tree's segments carry the projections it reads: tree-cached rollouts give
    plain generation's tokens, and a tree-cached search the sequences of a re-encoding one."""
    model = train_toy(steps=60, qkv_conv=True, mlp="relu2")
    prefixes = [[BOS] + TOK.encode("x="), [BOS] + TOK.encode("x=12;y=")]
    reqs = []
    for p in prefixes:
        _, seg, _, _ = extend_root(Decoding(model, [16], [NL], forced=1.0), p, 0)
        assert len(seg) == 3
        reqs.append(Request(p, 0, 1, [seg], TOK.encode("7")[0]))
    out = rollout_batch(Decoding(model, [16], [NL], top_k=1, forced=0.95, mode="tree"), reqs, torch.Generator().manual_seed(0))
    for i, p in enumerate(prefixes):
        g = generate(model, [p + TOK.encode("7")], max_new_tokens=16, top_k=1, stop=[NL], seed=0)[0]
        assert out[i].sequence == p + TOK.encode("7") + g.tokens
    a = search(model, problem(), cfg(seed=3, simulations=30), progress=False)
    b = search(model, problem(), cfg(seed=3, simulations=30, cache="prefill"), progress=False)
    assert a.table["sequence"].tolist() == b.table["sequence"].tolist()


def test_root_chains_forced_tokens_and_table_has_every_rollout(model):
    res = search(model, problem(), cfg())
    t = res.table
    assert res.simulations == 60 and len(t) == 60
    assert sorted(t["simulation"]) == list(range(1, 61))
    assert {"sequence", "reward", "score", "valid", "error", "simulation"} <= set(t.columns)
    # every rollout completed a line of the language, rewards follow validity
    assert t["stopped"].all()
    assert all(digits(s) is not None for s in t["sequence"])
    assert (t.loc[~t["valid"], "reward"] <= 0).all() and (t.loc[t["valid"], "reward"] > 0).all()
    assert set(t.loc[~t["valid"], "reward"]) <= {-0.5, -1.0}
    for s, sc, v in zip(t["sequence"], t["score"], t["valid"]):
        if v:
            assert sc == toy_score(s)
    assert len(res.history) == 60 and res.history["best_reward"].is_monotonic_increasing
    assert res.nodes == 61


def test_same_seed_same_search_and_cache_modes_agree(model):
    a = search(model, problem(), cfg(seed=3), progress=False)
    b = search(model, problem(), cfg(seed=3), progress=False)
    assert a.table["sequence"].tolist() == b.table["sequence"].tolist()
    for mode in ("prefill", "none"):
        c = search(model, problem(), cfg(seed=3, cache=mode), progress=False)
        assert c.table["sequence"].tolist() == a.table["sequence"].tolist(), mode
    d = search(model, problem(), cfg(seed=4), progress=False)
    assert d.table["sequence"].tolist() != a.table["sequence"].tolist()


def test_search_steers_toward_low_scores(model):
    """Over several seeds MCTS's rollouts score better than plain samples of the same model and count."""
    n, mcts_mean, samp_mean, mcts_best, samp_best = 100, [], [], [], []
    for seed in range(4):
        t = search(model, problem(), cfg(simulations=n, seed=seed, c=1.0, batch=1), progress=False).table
        mcts_mean.append(t.loc[t["valid"], "score"].mean())
        mcts_best.append(t.loc[t["valid"], "score"].min())
        g = generate(model, [[BOS]] * n, max_new_tokens=15, stop=[NL], seed=seed)
        evs = [e for e in toy_evaluate([[BOS] + x.tokens for x in g]) if e.valid]
        samp_mean.append(sum(e.score for e in evs) / len(evs))
        samp_best.append(min(e.score for e in evs))
    assert sum(mcts_mean) / 4 < sum(samp_mean) / 4 - 1.0, (mcts_mean, samp_mean)
    assert sum(mcts_best) <= sum(samp_best) + 4, (mcts_best, samp_best)


def test_uct_max_backup_and_several_prompts(model):
    res = search(model, problem(), cfg(selection="uct", c=1.0), progress=False)
    assert len(res.table) == 60 and res.table["valid"].any()
    res = search(model, problem(), cfg(backup="max", c=1.0), progress=False)
    assert len(res.table) == 60 and res.table["valid"].any()
    p = Problem([[BOS], [BOS] + TOK.encode("x=7")], toy_evaluate, stop=[NL])
    t = search(model, p, cfg(simulations=40), progress=False).table
    assert set(t["prompt"]) == {0, 1}


def test_grammar_constrains_children_and_rollouts(model):
    """A grammar (generator of allowed ids, as a constraint) that forbids the digit 0 everywhere."""
    no_zero = [i for i in range(TOK.vocab_size) if i != TOK.encode("0")[0]]

    def grammar():
        while True:
            yield no_zero

    t = search(model, problem(constraints=[GeneratorConstraint(grammar)]), cfg(), progress=False).table
    assert not t["sequence"].str.contains("0").any()
    assert t["valid"].all()  # the only invalid lines end in 0


def test_root_temperature_spreads_the_first_choice():
    """A model that nearly always starts with 7: a flatter root prior sends more simulations elsewhere."""
    from mcts_toy import line

    def mostly_seven(g):
        text = line(g)
        return text if torch.rand(1, generator=g) < 0.3 else text[:2] + "7" + text[3:]

    peaked = train_toy(steps=200, make_line=mostly_seven)
    share = {}
    for t in (1.0, 8.0):
        tab = search(peaked, problem(), cfg(simulations=30, c=1.0, batch=1, root_temperature=t), progress=False).table
        share[t] = (tab["sequence"].str[2] == "7").mean()
    assert share[1.0] > 0.6 and share[8.0] < share[1.0] - 0.2, share
    with pytest.raises(SciarError, match="root temperature"):
        search(peaked, problem(), cfg(root_temperature=0.0))


def test_small_tree_is_exhausted_before_the_budget(model):
    res = search(model, problem(), cfg(simulations=10_000, width=2), progress=False)
    assert res.simulations < 100  # 2^4 lines at most, then the tree is fully searched
    assert res.table["duplicate"].any() or len(res.table) <= 16


def test_scorer_errors_and_nan_become_invalid_and_the_search_goes_on(model):
    calls = {"n": 0}

    def flaky(seqs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("scorer exploded")
        out = toy_evaluate(seqs)
        out[0] = Evaluation(True, math.nan)
        return out

    res = search(model, Problem([[BOS]], flaky, stop=[NL]), cfg(), progress=False)
    t = res.table
    assert len(t) == 60 and calls["n"] >= 3
    boom = t[t["error"].str.contains("scorer exploded")]
    assert len(boom) >= 1 and (boom["reward"] == -1.0).all() and not boom["valid"].any()
    nan = t[t["error"].str.contains("finite")]
    assert len(nan) >= 1 and (nan["reward"] == -1.0).all()
    assert t["valid"].any()


def test_budgets_and_bad_input(model):
    with pytest.raises(SciarError, match="budget is zero"):
        search(model, problem(), cfg(simulations=0))
    with pytest.raises(SciarError, match="selection"):
        search(model, problem(), cfg(selection="best"))
    with pytest.raises(SciarError, match="backup"):
        search(model, problem(), cfg(backup="median"))
    with pytest.raises(SciarError, match="no room"):
        search(model, Problem([[BOS] * 16], toy_evaluate, stop=[NL]), cfg())
    t0 = time.perf_counter()
    res = search(model, problem(), cfg(simulations=0, seconds=0.5, batch=1), progress=False)
    assert time.perf_counter() - t0 < 3.0
    assert res.simulations >= 1


def test_ctrl_c_ends_the_search_with_what_it_has_scored(model):
    def ctrl_c(state):
        if state["simulations"] >= 16:
            os.kill(os.getpid(), signal.SIGINT)

    res = search(model, problem(), cfg(simulations=200), progress=False, on_batch=ctrl_c)
    assert res.interrupted and res.simulations == 16  # the batch in flight finished, no new one started
    assert len(res.table) == 16 and len(res.history) == 16
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not search(model, problem(), cfg(simulations=8), progress=False).interrupted


def test_running_sigmoid_reward():
    r = RunningSigmoidReward(k=2.0)
    assert r(Evaluation(True, 1.0)) == 0.5  # one score: no spread yet
    assert r(Evaluation(False, invalid_reward=-0.3)) == -0.3
    hi = r(Evaluation(True, 3.0))  # worse than the mean: below 0.5
    lo = r(Evaluation(True, -5.0))  # far better: near 1
    assert hi < 0.5 < lo
    mean, std = (1 + 3 - 5) / 3, math.sqrt(((1 + 1 / 3) ** 2 + (3 + 1 / 3) ** 2 + (-5 + 1 / 3) ** 2) / 3)
    assert lo == pytest.approx(1 / (1 + math.exp(2 * (-5 - mean) / std)))


def test_progress_bar_shows_the_final_valid_count(model, monkeypatch):
    """The bar's postfix was set after update() redrew it, so what was drawn lagged one batch behind."""
    import mcts.engine as engine

    drawn = []

    class Bar:  # records what each redraw (update) would show
        def __init__(self, *a, **k):
            self.postfix = {}

        def set_postfix(self, refresh=True, **kw):
            self.postfix = kw

        def update(self, n):
            drawn.append(dict(self.postfix))

        def close(self):
            pass

    monkeypatch.setattr(engine, "tqdm", Bar)
    res = search(model, problem(), cfg(simulations=16, batch=4))
    assert drawn and drawn[-1].get("valid") == int(res.table["valid"].sum()), drawn


def test_budget_in_scorer_calls(model):
    """Only verdicts that cost a call count (here: valid lines); repeated sequences cost nothing."""
    def costly(seqs):
        evs = toy_evaluate(seqs)
        for e in evs:
            e.cost = 1.0 if e.valid else 0.0
        return evs

    res = search(model, Problem([[BOS]], costly, stop=[NL], decode=lambda s: TOK.decode(s[1:])),
                 cfg(simulations=400, calls=7, batch=2), progress=False)
    t = res.table
    fresh_valid = int((t["valid"] & ~t["duplicate"]).sum())
    assert res.calls == fresh_valid == t["cost"].sum()
    assert 7 <= res.calls <= 8  # the batch (2) that reaches the budget ends the search
    assert res.simulations < 400 and len(t) == res.simulations
    with pytest.raises(SciarError, match="negative"):
        search(model, problem(), cfg(calls=-1))
    assert search(model, problem(), cfg(simulations=0, calls=3), progress=False).calls >= 3  # calls alone is a budget


def _first_digits(res):
    return [s[2] for s in res.table.sort_values("simulation")["sequence"]]  # "x=DD;y=DD": the root's choice


def test_spread_tries_every_root_child_before_deepening(model):
    res = search(model, problem(), cfg(simulations=10, batch=1, spread=True), progress=False)
    assert len(set(_first_digits(res))) == 10  # width 10: each of the root's ten choices once


def test_progressive_widening_offers_children_as_visits_grow(model):
    # batch 1: before simulation k the root has k-1 visits and offers ceil(k ** 0.5) children,
    # so 8 simulations can use at most ceil(sqrt(8)) = 3 first digits (width 10 without widening)
    res = search(model, problem(), cfg(simulations=8, batch=1, widening=0.5), progress=False)
    assert len(set(_first_digits(res))) <= 3


def test_root_noise_mixes_a_dirichlet_draw_into_the_priors():
    import numpy as np

    from mcts.tree import noisy_priors

    p = [0.7, 0.2, 0.1]
    q = noisy_priors(p, 0.25, 0.3, np.random.default_rng(0))
    d = np.random.default_rng(0).dirichlet([0.3] * 3)  # the same draw, mixed by hand
    assert q == pytest.approx([0.75 * a + 0.25 * b for a, b in zip(p, d)])
    assert sum(q) == pytest.approx(1.0) and noisy_priors(p, 0.0, 0.3, np.random.default_rng(1)) == pytest.approx(p)
