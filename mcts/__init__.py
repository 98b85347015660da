"""Monte Carlo tree search over token sequences with pluggable scorers (domain-agnostic).

``search(model, Problem(prompt, evaluate, stop), SearchConfig(...)) -> SearchResult``;
see :mod:`mcts.engine`. Rollouts reuse each node's cached keys and values
(:mod:`mcts.rollout`), the tree lives in :mod:`mcts.tree`.
"""

from mcts.engine import Evaluation, Problem, RunningSigmoidReward, SearchConfig, SearchResult, search

__all__ = ["Evaluation", "Problem", "RunningSigmoidReward", "SearchConfig", "SearchResult", "search"]
