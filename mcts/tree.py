"""Search tree over token prefixes: nodes, PUCT/UCT selection, virtual loss and backup."""

from __future__ import annotations

import math

import torch

from mcts.rollout import Segment


class Node:
    """A token prefix. Its children are the model's top-``width`` next tokens with renormalised priors."""

    __slots__ = ("parent", "edge", "tokens", "prompt", "prompt_len", "kv", "actions", "priors", "children",
                 "pending", "N", "W", "M", "vloss", "terminal", "reward", "exhausted", "spread")

    def __init__(self, parent: "Node | None", edge: list[int], tokens: list[int], kv: Segment | None,
                 probs: torch.Tensor | None, width: int, terminal: bool, prompt: int = 0, prompt_len: int = 0):
        self.parent = parent
        self.prompt, self.prompt_len = prompt, prompt_len
        self.edge = edge  # tokens from the parent to this node (action + forced chain)
        self.tokens = tokens  # the full prefix, prompt included
        self.kv = kv
        self.terminal = terminal
        self.actions: list[int] = []
        self.priors: list[float] = []
        if probs is not None and not terminal:
            k = min(width, int((probs > 0).sum()))
            top = torch.topk(probs, k)
            total = float(top.values.sum())
            self.actions = [int(t) for t in top.indices]
            self.priors = [float(v) / total for v in top.values]
        self.children: dict[int, Node] = {}
        self.pending: set[int] = set()  # actions being expanded in the current batch
        self.N = 0
        self.W = 0.0  # sum of backed-up rewards
        self.M = -math.inf  # best reward below this node
        self.vloss = 0
        self.reward: float | None = None  # a terminal node's reward (its sequence is scored once)
        self.exhausted = terminal  # nothing left to expand below
        self.spread = False  # every child is tried once before any is deepened (set on the root level)

    @property
    def Q(self) -> float:
        return self.W / self.N if self.N else 0.0

    def value(self, backup: str) -> tuple[float, int]:
        """(value, visits) with pending simulations counted as visits of reward -1 (virtual loss)."""
        n = self.N + self.vloss
        if n == 0:
            return 0.0, 0
        if backup == "max":
            return (self.M * self.N - self.vloss) / n, n
        return (self.W - self.vloss) / n, n

    @classmethod
    def virtual_root(cls, children: list["Node"]) -> "Node":
        """A root over several prompts: its actions are the prompt indices, with equal priors."""
        root = cls(None, [], [], None, None, 0, False)
        root.actions = list(range(len(children)))
        root.priors = [1.0 / len(children)] * len(children)
        for i, ch in enumerate(children):
            ch.parent = root
            root.children[i] = ch
        root.update_exhausted()
        return root

    def segments(self) -> list[Segment] | None:
        """The KV segments from the prompt down to this node (None if some node has none)."""
        segs = []
        node = self
        while node is not None and node.tokens:
            if node.kv is None:
                return None
            segs.append(node.kv)
            node = node.parent
        return segs[::-1]

    def path(self) -> list["Node"]:
        out, node = [], self
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    def update_exhausted(self):
        self.exhausted = self.terminal or (
            len(self.children) == len(self.actions) and all(c.exhausted for c in self.children.values())
        )


def select(root: Node, c: float, rule: str = "puct", fpu: str = "parent", backup: str = "mean",
           widening: float = 0.0) -> tuple[Node, int] | None:
    """Walk from the root to a node and pick an action to expand.

    Returns ``(node, action)`` for a new child, or None when every choice is pending or
    exhausted. Finished sequences are not selected again (their one visit stays counted),
    so every simulation yields a new sequence. Virtual losses (each pending simulation
    counts as a visit with reward -1) spread one batch of simulations over different
    branches. ``backup``: a node's value is the mean reward below it (CrystaLLM) or the best.
    ``widening`` > 0: a node with N visits offers only its ``ceil((N + 1) ** widening)`` likeliest
    children (progressive widening). A node with ``spread`` set tries each child once first.
    """
    node = root
    while True:
        if node.terminal:
            return None
        best, best_score = None, -math.inf
        parent_q, n_parent = node.value(backup)
        offered = len(node.actions)
        if widening > 0:
            offered = min(offered, math.ceil((node.N + node.vloss + 1) ** widening))
        for a, p in zip(node.actions[:offered], node.priors[:offered]):
            if a in node.pending:
                continue
            child = node.children.get(a)
            if child is not None and child.exhausted:
                continue  # a finished sequence or a fully searched subtree: nothing new to learn there
            q, n = child.value(backup) if child is not None else (0.0, 0)
            if n == 0:
                if rule == "uct" or node.spread:
                    score = math.inf
                else:
                    q = parent_q if fpu == "parent" else 0.0
                    score = q + c * p * math.sqrt(max(n_parent, 1))
            elif rule == "uct":
                score = q + c * math.sqrt(math.log(max(n_parent, 1)) / n)
            else:
                score = q + c * p * math.sqrt(n_parent) / (1 + n)
            if score > best_score:
                best, best_score = a, score
        if best is None:
            return None
        child = node.children.get(best)
        if child is None:
            return node, best
        node = child


def noisy_priors(priors: list[float], eps: float, alpha: float, rng) -> list[float]:
    """AlphaZero's root noise: ``(1 - eps) p + eps Dir(alpha)`` (``rng``: a numpy Generator)."""
    d = rng.dirichlet([alpha] * len(priors))
    return [(1 - eps) * p + eps * float(x) for p, x in zip(priors, d)]


def add_virtual_loss(node: Node, amount: int):
    for n in node.path():
        n.vloss += amount


def backup(node: Node, reward: float):
    """Add one visit with ``reward`` on the path to the root; refresh the exhausted flags."""
    for n in node.path():
        n.N += 1
        n.W += reward
        n.M = max(n.M, reward)
        n.update_exhausted()
