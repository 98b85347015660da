"""Inverse design with the model: candidates sampled under the answer grammar, each re-solved by the oracle.

A Design request (``Design<family; E1=...; rho<=...>``) gets candidate parameter sets from the model
(:func:`domains.mechanics.decode.sample_answers`, or MCTS over the answer tokens with the oracle's
verified error as the reward); every candidate is solved by the oracle and ranked by its verified
error (:func:`design_error`). :func:`nearest_reachable` refines the best candidate by least squares
over the family's parameter box: when even that leaves the request unmet, the request is answered
``infeasible`` with the nearest design found. Every oracle call is counted (:class:`Oracle`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sciar.errors import SciarError

from domains.mechanics.grammar import Answer, Prompt, format_answer
from domains.mechanics.lattices import check_params, family_params
from domains.mechanics.metrics import design_meets
from domains.mechanics.properties import MODULI, PROPERTIES, simulate


def design_error(request: Prompt, props: dict) -> float:
    """How far properties are from a request: the largest relative miss of a requested modulus or density
    (absolute for a Poisson's ratio) and of a bound (0 when kept). A design meets the request when every
    target is within 5% and every bound is kept (:func:`domains.mechanics.metrics.design_meets`)."""
    errs = [0.0]
    for name, op, want in request.items:
        got = props[name]
        relative = name in MODULI or name == "rho"
        if op == "=":
            errs.append(abs(got / want - 1) if relative else abs(got - want))
        elif op == "<=":
            errs.append(max(0.0, got / want - 1 if relative and want > 0 else got - want))
        else:
            errs.append(max(0.0, 1 - got / want if relative and want > 0 else want - got))
    return float(max(errs))


class Oracle:
    """The frame oracle with a count of its calls (designs it refuses count too) and a memory of each design."""

    def __init__(self, request: Prompt):
        self.request = request
        self.calls = 0
        self.seen: dict[tuple, dict | None] = {}

    def __call__(self, params: dict) -> dict | None:
        key = tuple(round(float(params[q.name]), 12) for q in family_params(self.request.subject))
        if key not in self.seen:
            self.calls += 1
            try:
                self.seen[key] = simulate(self.request.subject, params).to_dict()
            except SciarError:
                self.seen[key] = None
        return self.seen[key]


def _row(request: Prompt, params: dict, props: dict | None, source: str) -> dict:
    row = {"family": request.subject, **params, "source": source}
    if props is None:
        return {**row, "error": math.inf, "meets": False, "oracle_error": "the oracle refused the design"}
    return {**row, **{k: props[k] for k in PROPERTIES}, "error": design_error(request, props),
            "meets": design_meets(request, props)}


def model_candidates(model, request: Prompt, n: int, oracle: Oracle, temperature: float = 1.0, seed: int = 0) -> list[dict]:
    """``n`` sampled answers to ``request``, each solved by the oracle (a row per answer, duplicates kept)."""
    from domains.mechanics.decode import sample_answers

    rows = []
    for rec in sample_answers(model, [request], n, temperature=temperature, seed=seed)[0]:
        params = rec["answer"].values()
        rows.append({**_row(request, params, oracle(params), "model"), "logprob": rec["logprob"]})
    return rows


def mcts_candidates(model, request: Prompt, n: int, oracle: Oracle, seed: int = 0, width: int = 5,
                    progress: bool = False) -> list[dict]:
    """MCTS over the answer's tokens (``n`` simulations), the reward falling with the oracle's verified error."""
    from mcts.engine import Evaluation, Problem, SearchConfig, search

    from domains.mechanics.decode import answer_constraint
    from domains.mechanics.grammar import format_prompt, mechanics_tokenizer, parse_answer

    tok = mechanics_tokenizer()
    prompt = tok.encode(format_prompt(request))

    def evaluate(seqs):
        out = []
        for s in seqs:
            params = parse_answer(tok.decode(s[len(prompt):]), request).values()
            props = oracle(params)
            if props is None:
                out.append(Evaluation(False, error="the oracle refused the design", info={"params": params}))
            else:  # log of the error: the sigmoid reward then tells 1% from 10% as well as 10% from 100%
                out.append(Evaluation(True, math.log10(design_error(request, props) + 1e-4), info={"params": params}))
        return out

    problem = Problem([prompt], evaluate, stop=[tok.encode("]")], constraints=[answer_constraint(request)],
                      decode=tok.decode)
    # only the grammar's forced tokens (probability exactly 1) are chained without branching: a trained model is
    # often sure of a whole answer, and chaining its confident digits would leave the search nothing to explore
    res = search(model, problem, SearchConfig(simulations=n, width=width, seed=seed, batch=4, forced=1 - 1e-6),
                 progress=progress, desc="mcts")
    rows = []
    for params in res.table["params"]:  # every completed answer, in the order the search found them
        rows.append(_row(request, params, oracle(params), "mcts"))
    return rows


def nearest_reachable(request: Prompt, start: dict, oracle: Oracle, budget: int = 60) -> dict:
    """Least squares from ``start`` over the family's box (t in log): the logs of the requested values and
    the bounds' excess, each oracle call counted; returns the best row seen."""
    from scipy.optimize import least_squares

    spec = family_params(request.subject)
    lo = np.array([math.log10(q.lo) if q.name == "t" else q.lo for q in spec])
    hi = np.array([math.log10(q.hi) if q.name == "t" else q.hi for q in spec])
    best = {"error": math.inf}
    n_items = len(request.items)

    def params_of(z):
        v = lo + np.clip(z, 0, 1) * (hi - lo)
        return {q.name: float(10 ** x if q.name == "t" else x) for q, x in zip(spec, v)}

    def residual(z):
        nonlocal best
        params = params_of(z)
        props = oracle(params)
        if props is None:
            return np.full(n_items, 10.0)
        row = _row(request, params, props, "refined")
        if row["error"] < best["error"]:
            best = row
        r = []
        for name, op, want in request.items:
            got = props[name]
            rel = name in MODULI or name == "rho"
            d = math.log10(max(got, 1e-15) / want) if rel and want > 0 else got - want
            r.append(d if op == "=" else max(0.0, d if op == "<=" else -d) * 10)
        if oracle.calls >= budget:
            raise StopIteration
        return np.array(r)

    x0 = np.array([math.log10(start[q.name]) if q.name == "t" else start[q.name] for q in spec])
    z0 = np.clip((x0 - lo) / (hi - lo), 1e-6, 1 - 1e-6)
    try:
        least_squares(residual, z0, bounds=(0, 1), diff_step=1e-3, max_nfev=budget)
    except StopIteration:
        pass
    return best


def design(model, request: Prompt, n: int = 20, search: str = "sample", temperature: float = 1.0, seed: int = 0,
           refine: bool = False, progress: bool = False, calls: int = 60) -> tuple[pd.DataFrame, int]:
    """Candidates for ``request`` ranked by verified error (best first) and the oracle calls spent. With
    ``refine``, when no candidate meets the request the best is refined by least squares until ``calls``
    oracle calls in all (the candidates' included) have been spent."""
    if request.task != "Design":
        raise SciarError(f"design takes a Design request (got {request.task})")
    oracle = Oracle(request)
    if search == "sample":
        rows = model_candidates(model, request, n, oracle, temperature, seed)
    elif search == "mcts":
        rows = mcts_candidates(model, request, n, oracle, seed, progress=progress)
    else:
        raise SciarError(f"unknown search {search!r} (sample or mcts)")
    if refine and rows:
        first = min(rows, key=lambda r: r["error"])
        if not first["meets"] and math.isfinite(first["error"]):
            rows.append(nearest_reachable(request, {q.name: first[q.name] for q in family_params(request.subject)},
                                          oracle, budget=calls))
    df = pd.DataFrame(rows).sort_values("error", kind="stable").reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return df, oracle.calls


def answer_text(request: Prompt, table: pd.DataFrame) -> str:
    """The Design answer the table supports: its best design, marked ``infeasible`` when none meets the request."""
    best = table.iloc[0]
    params = check_params(request.subject, {q.name: float(best[q.name]) for q in family_params(request.subject)})
    return format_answer(Answer(list(params.items()), infeasible=not bool(best["meets"])))
