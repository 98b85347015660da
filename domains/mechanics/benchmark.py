"""The mechanics benchmark in one run: forward baselines on held-out oracle designs and on CPShub (5-fold over
lattices), inverse baselines on requests taken from held-out designs, every proposal checked by the oracle.

JSON layout: ``forward.oracle`` and ``forward.cpshub`` with ``model`` (given a checkpoint), ``knn``, ``gbt``,
``mlp`` (``mare``, ``r2_log``; ``nu_abs_err`` on the oracle), ``inverse.oracle`` with ``model_n1``,
``model_n20``, ``search_n20``, ``model_refined_n20`` (given a checkpoint), ``knn_n1``, ``knn_n20``, ``random_n20``,
``optimiser_n20`` (shares of requests met) and ``oracle_calls``, ``inverse.cpshub`` with ``param_error``
of the model, the kNN and the mean baselines.

The model is scored on what it never trained on: the held-out oracle designs (fixed by their hash) and the
held-out fifth of CPShub's lattices (:func:`domains.mechanics.model.cpshub_held_out`); the CPShub
baselines are scored by 5-fold cross-validation over all lattices (one trained model per fold would be
the same protocol for the model: a GPU's work). Forward answers are what ``ask`` gives (each field's median over
``ask.SAMPLES`` constrained samples at temperature 1), and greedy ones beside them (``model_greedy``);
``model_n1`` is one greedy design (judged by the oracle, which the model does not consult),
``model_n20`` twenty samples at temperature 1, ``search_n20`` MCTS with 20 simulations (reward: the
oracle's verified error), ``model_refined_n20`` what ``ask`` does (``ask.SAMPLES`` samples, then least squares from
the best while the 20 oracle calls last).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sciar.io import write_json_atomic

from domains.mechanics.baselines import (Grid, forward_cpshub_baselines, forward_oracle_baselines,
                                         inverse_cpshub_baselines, inverse_oracle_baselines)
from domains.mechanics.datasets import oracle_dataset, read_cpshub, read_oracle_tables
from domains.mechanics.grammar import parse_prompt


def forward_answers(model, prompts, greedy: bool, seed: int = 0) -> list:
    """The model's answers to forward prompts: greedy under the grammar, or as ``ask`` gives them (the median of
    ``ask.SAMPLES`` samples)."""
    from domains.mechanics.ask import SAMPLES
    from domains.mechanics.decode import median_answer, sample_answers

    if greedy:
        return [r[0]["answer"] for r in sample_answers(model, prompts, 1, top_k=1)]
    return [median_answer(r) for r in sample_answers(model, prompts, SAMPLES, seed=seed)]


def model_forward_oracle(model, test, greedy: bool = False) -> dict:
    """Stiffness answers to held-out designs against the oracle's."""
    from domains.mechanics.baselines import forward_oracle_scores
    from domains.mechanics.properties import MODULI

    prompts = [parse_prompt(p) for p in test["prompt"]]
    preds = [a.values() for a in forward_answers(model, prompts, greedy)]
    y_pred = np.array([[np.log10(p[k]) for k in MODULI] + [p["nu12"], p["nu21"]] for p in preds])
    y_true = np.column_stack([np.log10(test[k].to_numpy(float)) for k in MODULI] + [test[k] for k in ("nu12", "nu21")])
    return {**forward_oracle_scores(y_true, y_pred), "rows": len(test)}


def model_cpshub(model, table) -> tuple[dict, dict]:
    """StressCurve and Thickness answers (as ``ask`` gives them) for the held-out CPShub lattices: (forward, inverse)
    scores."""
    from domains.mechanics.datasets import cpshub_tasks
    from domains.mechanics.grammar import THICKNESS_PARAMS
    from domains.mechanics.metrics import mare, r2_log
    from domains.mechanics.model import cpshub_held_out

    held = table[[cpshub_held_out(r) for r in table["run"]]].sort_values(["run", "case"]).reset_index(drop=True)
    tasks = cpshub_tasks(held)
    curves = tasks[tasks["task"] == "StressCurve"].reset_index(drop=True)
    prompts = [parse_prompt(p) for p in curves["prompt"]]
    pred = np.array([list(a.items[0][1]) for a in forward_answers(model, prompts, greedy=False)])
    true = np.array([[float(x) for x in a.split("=", 1)[1].rstrip("]").split()] for a in curves["answer"]])
    inv = tasks[tasks["task"] == "Thickness"]
    t_pred = [a.values() for a in forward_answers(model, [parse_prompt(p) for p in inv["prompt"]], greedy=False)]
    t_true = held.groupby("run")[list(THICKNESS_PARAMS)].first().loc[inv["run"]].to_numpy(float)
    t_pred = np.array([[p[k] for k in THICKNESS_PARAMS] for p in t_pred])
    lattices = int(held["run"].nunique())
    return ({"mare": mare(true, pred), "r2_log": r2_log(true, pred), "lattices": lattices},
            {"param_error": float(np.abs(t_pred - t_true).mean()), "lattices": lattices})


def model_inverse(model, requests, n: int = 20, seed: int = 0, progress: bool = True) -> dict:
    """Shares of requests met by one greedy design, by n samples, by MCTS with n simulations and by samples
    refined by least squares within n oracle calls, and the oracle calls the last three spend (distinct designs
    solved)."""
    from domains.mechanics.ask import SAMPLES
    from domains.mechanics.decode import sample_answers
    from domains.mechanics.design import design
    from domains.mechanics.metrics import verify_design

    hits = {"model_n1": 0, "model_n20": 0, "search_n20": 0, "model_refined_n20": 0}
    calls = {"model_n20": 0, "search_n20": 0, "model_refined_n20": 0}
    for i, req in enumerate(tqdm(requests, desc="inverse, model", unit="request", disable=not progress)):
        hits["model_n1"] += verify_design(req, sample_answers(model, [req], 1, top_k=1)[0][0]["answer"].values())[0]
        runs = {"model_n20": dict(n=n, search="sample"), "search_n20": dict(n=n, search="mcts"),
                # what `ask` does: its samples, then least squares from the best, within the same n oracle calls
                "model_refined_n20": dict(n=min(SAMPLES, n), search="sample", refine=True, calls=n)}
        for key, kw in runs.items():
            table, c = design(model, req, seed=seed + i, **kw)
            hits[key] += bool(table["meets"].any())
            calls[key] += c
    m = max(len(requests), 1)
    return {**{k: v / m for k, v in hits.items()}, "oracle_calls": {k: v / m for k, v in calls.items()}}


def run_benchmark(families: list[str], n: int, requests: int = 100, budget: int = 20, cpshub: Path | None = None,
                  quick: bool = False, seed: int = 0, json_out: Path | None = None, progress: bool = True,
                  checkpoint: str | None = None, held_out: int | None = None, tables: list[Path] | None = None) -> dict:
    """One run of the benchmark (module docstring); ``held_out``: score the forward task on at most this many of
    the held-out designs (a seeded draw, the same for every method), to bound the model's decoding time.
    ``tables``: oracle datasets (as ``dataset`` writes them) to take the designs from instead of drawing ``n``
    per family, for example the tables a checkpoint was trained on, so that the baselines fit the same rows."""
    t0 = time.time()
    grid = Grid(quick=quick)
    say = (lambda name, r: tqdm.write(f"  {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in r.items()
                                                                if isinstance(v, float)))) if progress else None
    data = read_oracle_tables(tables, families) if tables else oracle_dataset(families, n, seed, progress=progress)
    data = data[data["error"].isna()]
    train, test = data[data["split"] == "train"], data[data["split"] == "test"]
    if held_out is not None and held_out < len(test):
        test = test.iloc[np.sort(np.random.default_rng(seed).permutation(len(test))[:held_out])]
    res = {"settings": {"families": families, "designs_per_family": n, "train": len(train), "held_out": len(test),
                        "requests": requests, "budget": budget, "quick": quick, "seed": seed}}
    if tables:
        res["settings"].update(data=[str(t) for t in tables], designs_per_family=None)
    if progress:
        tqdm.write(f"forward, oracle: {len(train)} train, {len(test)} held-out designs")
    model = None
    if checkpoint is not None:
        from domains.mechanics.adapter import ADAPTER

        model, ck = ADAPTER.load(checkpoint)
        res["settings"]["checkpoint"] = str(ck.path)
    res["forward"] = {"oracle": forward_oracle_baselines(train, test, grid, progress=say)}
    if model is not None:
        for key, greedy in (("model", False), ("model_greedy", True)):
            res["forward"]["oracle"][key] = model_forward_oracle(model, test, greedy)
            if say:
                say(key, res["forward"]["oracle"][key])
    rng = np.random.default_rng(seed)
    chosen = test.iloc[rng.permutation(len(test))[:requests]]
    reqs = [parse_prompt(p) for p in chosen["design_prompt"]]
    res["inverse"] = {"oracle": inverse_oracle_baselines(reqs, train, n=budget, seed=seed, progress=progress)}
    if model is not None:
        mi = model_inverse(model, reqs, n=budget, seed=seed, progress=progress)
        res["inverse"]["oracle"]["oracle_calls"].update(mi.pop("oracle_calls"))
        res["inverse"]["oracle"].update(mi)
    res["inverse"]["oracle"]["with_density_bound"] = int(sum("rho<=" in p for p in chosen["design_prompt"]))
    if cpshub is not None:
        table = read_cpshub(cpshub, progress=progress)
        if progress:
            tqdm.write(f"forward, CPShub: {table['run'].nunique()} lattices x 16 load cases, 5-fold over lattices")
        res["forward"]["cpshub"] = forward_cpshub_baselines(table, grid, progress=say)
        res["inverse"]["cpshub"] = inverse_cpshub_baselines(table)
        if model is not None:
            fwd, inv = model_cpshub(model, table)
            res["forward"]["cpshub"]["model"], res["inverse"]["cpshub"]["model"] = fwd, inv
    res["settings"]["seconds"] = round(time.time() - t0, 1)
    if json_out is not None:
        write_json_atomic(json_out, res)
    return res
