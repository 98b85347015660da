"""The mechanics benchmark in one run: forward baselines on held-out oracle designs and on CPShub (5-fold over
lattices), inverse baselines on requests taken from held-out designs, every proposal checked by the oracle.

JSON layout (the model's entries join when the model exists): ``forward.oracle`` and ``forward.cpshub``
with ``knn``, ``gbt``, ``mlp`` (``mare``, ``r2_log``; ``nu_abs_err`` on the oracle), ``inverse.oracle``
with ``knn_n1``, ``knn_n20``, ``random_n20``, ``optimiser_n20`` (shares of requests met) and
``oracle_calls``, ``inverse.cpshub`` with ``param_error`` of the kNN and mean baselines.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sciar.io import write_json_atomic

from domains.mechanics.baselines import (Grid, forward_cpshub_baselines, forward_oracle_baselines,
                                         inverse_cpshub_baselines, inverse_oracle_baselines)
from domains.mechanics.datasets import oracle_dataset, read_cpshub
from domains.mechanics.grammar import parse_prompt


def run_benchmark(families: list[str], n: int, requests: int = 100, budget: int = 20, cpshub: Path | None = None,
                  quick: bool = False, seed: int = 0, json_out: Path | None = None, progress: bool = True) -> dict:
    t0 = time.time()
    grid = Grid(quick=quick)
    say = (lambda name, r: tqdm.write(f"  {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in r.items()
                                                                if isinstance(v, float)))) if progress else None
    data = oracle_dataset(families, n, seed, progress=progress)
    data = data[data["error"].isna()]
    train, test = data[data["split"] == "train"], data[data["split"] == "test"]
    res = {"settings": {"families": families, "designs_per_family": n, "train": len(train), "held_out": len(test),
                        "requests": requests, "budget": budget, "quick": quick, "seed": seed}}
    if progress:
        tqdm.write(f"forward, oracle: {len(train)} train, {len(test)} held-out designs")
    res["forward"] = {"oracle": forward_oracle_baselines(train, test, grid, progress=say)}
    rng = np.random.default_rng(seed)
    chosen = test.iloc[rng.permutation(len(test))[:requests]]
    reqs = [parse_prompt(p) for p in chosen["design_prompt"]]
    res["inverse"] = {"oracle": inverse_oracle_baselines(reqs, train, n=budget, seed=seed, progress=progress)}
    res["inverse"]["oracle"]["with_density_bound"] = int(sum("rho<=" in p for p in chosen["design_prompt"]))
    if cpshub is not None:
        table = read_cpshub(cpshub, progress=progress)
        if progress:
            tqdm.write(f"forward, CPShub: {table['run'].nunique()} lattices x 16 load cases, 5-fold over lattices")
        res["forward"]["cpshub"] = forward_cpshub_baselines(table, grid, progress=say)
        res["inverse"]["cpshub"] = inverse_cpshub_baselines(table)
    res["settings"]["seconds"] = round(time.time() - t0, 1)
    if json_out is not None:
        write_json_atomic(json_out, res)
    return res
