"""The search benchmark's ceiling on the win rate, worked by hand on a few target-seed rows."""

import pytest


def _row(id_, search, sampling, retrieval=None):
    return {"id": id_, "best_energy_search": search, "best_energy_sampling": sampling,
            "best_energy_retrieval": retrieval}


def test_win_rate_ceiling_by_hand(benchmark_module):
    """Target A on two seeds: the lowest energy either arm found is sampling's -1.2 on seed 0, so a perfect search
    ties that pair (0.5) and wins the other (sampling's -0.9 there): 1. Target B: nothing valid, 0.5. Target C:
    sampling within 1e-4 of the minimum, a tie. With retrieval's -1.5 on A, both A pairs are wins."""
    bench = benchmark_module("mcts")
    rows = [_row("A", -1.0, -1.2, -1.5), _row("A", -1.1, -0.9), _row("B", None, None), _row("C", -2.0, -2.00005)]
    assert bench.win_rate_ceiling(rows) == pytest.approx((0.5 + 1 + 0.5 + 0.5) / 4)
    assert bench.win_rate_ceiling(rows, ("search", "sampling", "retrieval")) == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)
    # a search that only ever matched sampling's best on every pair could not beat 0.5
    assert bench.win_rate_ceiling([_row("D", -1.0, -1.0), _row("D", -1.0, -1.0)]) == 0.5
