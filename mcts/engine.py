"""Monte Carlo tree search over token sequences, knowing nothing of any domain.

A :class:`Problem` gives a prompt, how sequences end and an ``evaluate`` callable
that scores a batch of completed sequences (:class:`Evaluation`: valid or not, a
raw score where lower is better, the reward for an invalid one, an error). Each
simulation selects a node by PUCT (or UCT), expands one untried child (one of
the model's top-``width`` next tokens, forced tokens chained into the edge),
completes the sequence by sampling from the child's cached prefix, and backs up
the reward. Rollouts and evaluation run in batches; every completed sequence is
kept in the returned table.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mcts.rollout import Decoding, Request, extend_root, rollout_batch
from mcts.tree import Node, add_virtual_loss, backup, noisy_priors, select
from sciar.errors import SciarError, describe
from sciar.interrupt import deferred_stop
from sciar.model import LanguageModel


@dataclass
class Evaluation:
    """The verdict on one completed sequence."""

    valid: bool
    score: float = math.nan  # raw score, lower is better (e.g. formation energy per atom)
    invalid_reward: float = -1.0  # the reward when not valid, in [-1, 0]
    error: str = ""  # why it is invalid or could not be scored
    info: dict = field(default_factory=dict)  # extra columns for the results table
    cost: float = 1.0  # scorer calls this verdict spent (0 for one judged invalid before scoring, or a cached one)


@dataclass
class Problem:
    """What to search: prompts, how sequences end, and how completed sequences are judged.

    With several prompts the tree's root chooses among them (equal priors).
    """

    prompts: list[list[int]]
    evaluate: Callable[[list[list[int]]], list[Evaluation]]  # full sequences (prompt included) -> verdicts
    stop: list[list[int]] = field(default_factory=list)  # a sequence ends after any of these
    max_new_tokens: int | None = None  # default: up to the model's context
    constraints: list | None = None  # per prompt: a sciar.decode.constraints.Constraint at the prompt's end, or None
    decode: Callable[[list[int]], str] | None = None  # full sequence -> text for the table


@dataclass
class SearchConfig:
    simulations: int = 200  # budget in simulations (0: no limit, then seconds must be set)
    seconds: float | None = None  # budget in wall-clock seconds
    calls: int = 0  # budget in scorer calls (the summed Evaluation.cost; 0: no limit): what costs when scoring is slow
    width: int = 10  # children per node: the model's top-k next tokens
    c: float = 5.0  # exploration constant
    selection: str = "puct"  # puct | uct
    fpu: str = "parent"  # value of an unvisited child under PUCT: the parent's value (parent) or 0 (zero)
    backup: str = "mean"  # a node's value: mean reward below it (CrystaLLM) or the best (max)
    rollout_top_k: int | None = None  # top-k of rollout sampling (default: width, as CrystaLLM)
    temperature: float = 1.0
    # priors of each prompt node's children raised to 1/root_temperature: above 1 the first choice (for
    # CIFs the space group) spreads beyond the model's favourite, as searches flatten their root policy
    root_temperature: float = 1.0
    # Dirichlet noise mixed into the priors of each prompt node's children (AlphaZero's root noise):
    # p <- (1 - root_noise) p + root_noise Dir(root_alpha); 0 is off
    root_noise: float = 0.0
    root_alpha: float = 0.3
    # progressive widening: a node offers only its ceil((N + 1) ** widening) likeliest children (0: all width)
    widening: float = 0.0
    # the root level (prompts and each prompt node's children) tries every child once before any is deepened
    spread: bool = False
    forced: float = 0.99  # chain tokens above this probability into one edge
    batch: int = 8  # simulations whose rollouts and scoring run together
    rollouts: int = 1  # rollouts per simulation (their mean reward is backed up)
    k: float = 2.0  # reward sigmoid steepness
    cache: str = "tree"  # tree (KV segments per node) | prefill | none: the last two are slow references
    seed: int | None = 0

    def check(self):
        if self.simulations < 0 or (self.seconds is not None and self.seconds < 0):
            raise SciarError("the search budget cannot be negative")
        if self.calls < 0:
            raise SciarError("the budget in scorer calls cannot be negative")
        if self.simulations == 0 and not self.seconds and not self.calls:
            raise SciarError("the search budget is zero: give simulations > 0, scorer calls > 0 or a time limit in seconds")
        if not 0 <= self.root_noise <= 1 or self.root_alpha <= 0 or not 0 <= self.widening <= 1:
            raise SciarError("root noise must be in [0, 1], its alpha > 0, widening in [0, 1]")
        if self.width < 1:
            raise SciarError("width must be at least 1")
        if self.selection not in ("puct", "uct"):
            raise SciarError(f"unknown selection rule {self.selection!r} (puct or uct)")
        if self.backup not in ("mean", "max"):
            raise SciarError(f"unknown backup {self.backup!r} (mean or max)")
        if self.fpu not in ("parent", "zero"):
            raise SciarError(f"unknown fpu {self.fpu!r} (parent or zero)")
        if self.cache not in ("tree", "prefill", "none"):
            raise SciarError(f"unknown cache mode {self.cache!r} (tree, prefill or none)")
        if self.c < 0 or self.batch < 1 or self.rollouts < 1 or self.temperature <= 0 or self.root_temperature <= 0:
            raise SciarError("c must be >= 0, batch and rollouts >= 1, temperature and root temperature > 0")
        if not 0 < self.forced <= 1:
            raise SciarError("forced must be in (0, 1]")


class RunningSigmoidReward:
    """CrystaLLM's reward: a valid score ``s`` gets ``1 / (1 + exp(k (s - mean) / std))``.

    ``mean`` and ``std`` run over every valid score so far (this one included), so a
    score better than usual earns more than 0.5; invalid sequences get their own
    negative ``invalid_reward``.
    """

    def __init__(self, k: float = 2.0):
        self.k, self.n, self.mean, self.m2 = k, 0, 0.0, 0.0

    def __call__(self, ev: Evaluation) -> float:
        if not ev.valid:
            return float(ev.invalid_reward)
        s = float(ev.score)
        self.n += 1
        d = s - self.mean
        self.mean += d / self.n
        self.m2 += d * (s - self.mean)
        std = math.sqrt(self.m2 / self.n) if self.n > 1 else 0.0
        if std < 1e-12:
            return 0.5
        z = max(-50.0, min(50.0, self.k * (s - self.mean) / std))
        return 1.0 / (1.0 + math.exp(z))


@dataclass
class SearchResult:
    table: pd.DataFrame  # one row per completed sequence
    history: pd.DataFrame  # per simulation: best/mean reward, valid count, best score
    simulations: int
    seconds: float
    nodes: int
    config: dict
    interrupted: bool = False  # Ctrl-C ended it early; the table holds what was scored until then
    calls: float = 0.0  # scorer calls spent (the summed Evaluation.cost of new sequences)

    @property
    def best(self) -> pd.DataFrame:
        """Valid rows, lowest score first."""
        v = self.table[self.table["valid"]]
        return v.sort_values("score", kind="stable")


def _safe_evaluate(problem: Problem, seqs: list[list[int]]) -> list[Evaluation]:
    """Scorer failures become invalid verdicts with the error kept; the search goes on."""
    try:
        evs = list(problem.evaluate(seqs))
        if len(evs) != len(seqs):
            raise ValueError(f"evaluate returned {len(evs)} results for {len(seqs)} sequences")
    except Exception as e:  # a user's scorer may raise anything
        msg = f"evaluate failed: {describe(e)}"
        return [Evaluation(False, error=msg) for _ in seqs]
    out = []
    for ev in evs:
        if ev.valid and not math.isfinite(float(ev.score)):
            ev = Evaluation(False, ev.score, -1.0, ev.error or "score is not a finite number", ev.info, ev.cost)
        out.append(ev)
    return out


@torch.no_grad()
def search(model: LanguageModel, problem: Problem, config: SearchConfig | None = None,
           progress: bool = True, desc: str = "search", reward: Callable[[Evaluation], float] | None = None,
           on_batch: Callable[[dict], None] | None = None) -> SearchResult:
    """Run MCTS from ``problem.prompts``; returns every completed sequence with its reward."""
    cfg = config or SearchConfig()
    cfg.check()
    prompts = [list(p) for p in problem.prompts]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise SciarError("the search needs at least one prompt, each of at least one token")
    block = model.cfg.block_size
    limits = [block if problem.max_new_tokens is None else min(block, len(p) + problem.max_new_tokens) for p in prompts]
    for p, lim in zip(prompts, limits):
        if len(p) >= lim:
            raise SciarError(f"a prompt of {len(p)} tokens leaves no room in the model's context of {block}")
    model.eval()
    reward_fn = reward or RunningSigmoidReward(cfg.k)
    gen = torch.Generator().manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    dec = Decoding(model, limits, [list(s) for s in problem.stop], cfg.rollout_top_k or cfg.width,
                   cfg.temperature, cfg.forced, problem.constraints, cfg.cache)
    t0 = time.perf_counter()
    heads = []
    for i, p in enumerate(prompts):
        tokens, seg, probs, terminal = extend_root(dec, p, i)
        if probs is not None and cfg.root_temperature != 1.0:
            probs = probs.pow(1.0 / cfg.root_temperature)  # the node renormalises its top-width priors
        heads.append(Node(None, tokens, tokens, seg if cfg.cache == "tree" else None, probs, cfg.width, terminal,
                          prompt=i, prompt_len=len(p)))
    if all(h.terminal for h in heads):  # the prompt alone is a finished sequence: nothing to search
        raise SciarError("the prompt already ends a sequence; there is nothing to search")
    root = heads[0] if len(heads) == 1 else Node.virtual_root(heads)
    for h in {id(n): n for n in (root, *heads)}.values():
        h.spread = cfg.spread
        if cfg.root_noise > 0 and len(h.priors) > 1:
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            h.priors = noisy_priors(h.priors, cfg.root_noise, cfg.root_alpha, rng)
    n_nodes = len(heads)
    memo: dict[tuple, Evaluation] = {}
    rows: list[dict] = []
    hist: list[dict] = []
    sims, calls = 0, 0.0
    valid_count, best_score, best_reward, reward_sum, n_rewards = 0, math.inf, -math.inf, 0.0, 0
    budget = cfg.simulations if cfg.simulations > 0 else math.inf
    bar = tqdm(total=None if budget == math.inf else budget, desc=desc, unit="sim", disable=not progress, leave=False)

    costs: list[float] = []

    def score_all(seqs):
        """Verdicts of a batch; a sequence seen before reuses its verdict at no cost."""
        todo = [s for s in dict.fromkeys(map(tuple, seqs)) if s not in memo]
        spent = 0.0
        if todo:
            for s, ev in zip(todo, _safe_evaluate(problem, [list(s) for s in todo])):
                memo[s] = ev
                spent += float(ev.cost)
        costs.append(spent)
        return [memo[tuple(s)] for s in seqs]

    def record(seq, plen, prompt, ev, r, sim, stopped, dup):
        nonlocal valid_count, best_score, best_reward, reward_sum, n_rewards
        rows.append({
            "simulation": sim, "prompt": prompt,
            "sequence": problem.decode(seq) if problem.decode else " ".join(map(str, seq)),
            "reward": r, "score": float(ev.score) if ev.score is not None else math.nan,
            "valid": bool(ev.valid), "error": ev.error, "n_tokens": len(seq) - plen, "stopped": stopped,
            "duplicate": dup, "cost": 0.0 if dup else float(ev.cost), "elapsed_s": time.perf_counter() - t0, **ev.info,
        })
        valid_count += bool(ev.valid)
        if ev.valid:
            best_score = min(best_score, float(ev.score))
        best_reward = max(best_reward, r)
        reward_sum += r
        n_rewards += 1

    seen: set[tuple] = set()
    with deferred_stop() as interrupt:
        while sims < budget and not root.exhausted and not interrupt["stop"]:
            if cfg.calls and calls >= cfg.calls:
                break
            if cfg.seconds is not None and time.perf_counter() - t0 >= cfg.seconds:
                break
            expand: list[tuple[Node, int]] = []
            for _ in range(int(min(cfg.batch, budget - sims))):
                sel = select(root, cfg.c, cfg.selection, cfg.fpu, cfg.backup, cfg.widening)
                if sel is None:  # every remaining choice is pending in this batch or exhausted
                    break
                node, action = sel
                node.pending.add(action)
                add_virtual_loss(node, cfg.rollouts)
                expand.append((node, action))
            if not expand:
                break
            reqs = []
            for node, a in expand:
                segs = node.segments() if cfg.cache == "tree" else None
                reqs += [Request(node.tokens, node.prompt, node.prompt_len, segs, a)] * cfg.rollouts
            outs = rollout_batch(dec, reqs, gen)
            evs = score_all([o.sequence for o in outs])
            calls += costs.pop()
            for j, (node, a) in enumerate(expand):
                sim = sims + 1
                group = outs[j * cfg.rollouts:(j + 1) * cfg.rollouts]
                gevs = evs[j * cfg.rollouts:(j + 1) * cfg.rollouts]
                rs = []
                for o, ev in zip(group, gevs):
                    r = float(reward_fn(ev))
                    key = tuple(o.sequence)
                    record(o.sequence, node.prompt_len, node.prompt, ev, r, sim, o.stopped, key in seen)
                    seen.add(key)
                    rs.append(r)
                first = group[0]
                child = Node(node, first.edge, node.tokens + first.edge, first.edge_kv, first.child_probs,
                             cfg.width, first.child_terminal, node.prompt, node.prompt_len)
                if child.terminal:
                    child.reward = rs[0]
                node.children[a] = child
                node.pending.discard(a)
                n_nodes += 1
                add_virtual_loss(node, -cfg.rollouts)
                backup(child, sum(rs) / len(rs))
                sims += 1
                hist.append({"simulation": sims, "calls": calls, "best_reward": best_reward, "mean_reward": reward_sum / max(n_rewards, 1),
                             "valid": valid_count, "sequences": n_rewards, "best_score": best_score,
                             "elapsed_s": time.perf_counter() - t0})
            # postfix first: update() redraws the bar, so a postfix set after it shows one batch late
            bar.set_postfix(valid=valid_count, best=f"{best_score:.3f}" if best_score < math.inf else "-", refresh=False)
            bar.update(len(expand))
            if on_batch is not None:
                on_batch({"simulations": sims, "calls": calls, "valid": valid_count, "best_score": best_score, "sequences": n_rewards})
    bar.close()
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame(columns=["simulation", "prompt", "sequence", "reward", "score", "valid", "error", "n_tokens",
                                      "stopped", "duplicate", "cost", "elapsed_s"])
    return SearchResult(table, pd.DataFrame(hist), sims, time.perf_counter() - t0, n_nodes, asdict(cfg),
                        interrupted=interrupt["stop"], calls=calls)
