"""Crystal structure prediction benchmark (CDVAE / DiffCSP / CrystaLLM protocol).

For each test structure, the prompt is its cell composition (the ``data_`` formula of
its canonical CIF, as CrystaLLM prompts); a strategy proposes up to ``n`` structures:

- ``lm``: the language model alone: ``draws`` samples (grammar-constrained decoding) clustered
  with the matcher, the ``n`` most often drawn structures first (:func:`ranked_samples`);
- ``samples``: the model's first ``n`` samples as drawn (the CDVAE / CrystaLLM protocol);
- ``retrieval``: substituted training templates (:mod:`domains.crystals.retrieval`);
- ``hybrid``: both lists merged by one rule (:func:`merge_ranked`): each structure scored by the model's
  draws that gave it plus a vote that falls with its retrieval rank, the two summed where both propose it.

A candidate counts only if it passes the SMACT and structural checks (CDVAE's filter).
Match rate = matched test structures / all evaluated, with
``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)`` against the first 1 and first
``n`` candidates; RMSE = mean over matched structures of the smallest normalised RMS
distance among those candidates. ``valid_rate`` is the share of candidates passing
every validity check of :mod:`domains.crystals.validity`.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from domains.crystals.canonical import canonicalize
from domains.crystals.readers import read_inputs, structure_from_cif
from domains.crystals.matching import matcher
from sciar.errors import DataError, SciarError

STRATEGIES = ("lm", "samples", "retrieval", "hybrid")
DRAWS_PER_CANDIDATE = 2  # the lm strategy draws this many samples per candidate it returns


@dataclass
class Cand:
    structure: object
    text: str | None  # canonical CIF (generated or of a retrieved template)
    score: float  # higher is better
    source: str
    csp_ok: bool = False
    valid: bool | None = None
    extra: dict = field(default_factory=dict)


def csp_filter(structure) -> bool:
    """CDVAE's validity filter used by the benchmark: SMACT and min distance 0.5 A, volume 0.1 A^3."""
    from domains.crystals.validity import min_distance_ok, smact_valid

    try:
        return bool(min_distance_ok(structure) and smact_valid(structure.composition.reduced_formula))
    except Exception:
        return False


def load_test(path, limit: int | None, seed: int) -> pd.DataFrame:
    df = read_inputs(path)
    if limit is not None and limit < len(df):
        df = df.sample(n=limit, random_state=seed).reset_index(drop=True)
    return df


def lm_candidates(gen, compositions: list, n: int, seed: int, temperature: float, top_k: int,
                  spread: float = 0.0) -> list[list[Cand]]:
    """``n`` model samples per composition as candidates; ``spread`` > 0 spreads them over the
    model's likeliest space groups (:meth:`CrystalGenerator.sample_spread`)."""
    from domains.crystals.generate import make_prompt

    res = []
    for i, comp in enumerate(compositions):
        try:
            p = make_prompt(comp)
            samples = gen.sample_spread(p, n, spread, temperature=temperature, top_k=top_k, seed=seed + i)
        except SciarError:
            res.append([])
            continue
        res.append(sample_cands(samples))
    return res


def sample_cands(samples) -> list[Cand]:
    """The model's samples as candidates scored by log-likelihood per token (structure None if unreadable)."""
    cands = []
    for s in samples:
        try:
            st = structure_from_cif(s.text)
        except DataError:
            st = None
        cands.append(Cand(st, s.text, s.logprob / max(1, s.n_tokens), "lm", extra={"weight": s.weight}))
    return cands


def ranked_samples(cands: list[Cand], n: int, sm) -> list[Cand]:
    """The model's samples that pass the filter, clustered by the matcher; up to ``n`` representatives
    (each cluster's first sample), the structure the model draws most often first (summed sample
    weights, which are draw counts unless the draws were spread; ties: drawn first)."""
    from domains.crystals.retrieval import clusters_by_size

    ok = [c for c in cands if c.csp_ok]
    w = [c.extra.get("weight", 1.0) for c in ok]
    clusters = clusters_by_size([c.structure for c in ok], sm, w)
    return [Cand(ok[cl[0]].structure, ok[cl[0]].text, ok[cl[0]].score, "lm", csp_ok=True,
                 extra={"drawn": len(cl), "weight": sum(w[j] for j in cl)}) for cl in clusters[:n]]


def retrieval_candidates(index, comp, n: int, sm) -> list[Cand]:
    kept = index.predict(comp, n, sm)
    return [Cand(c.structure, None, -c.score, "retrieval", extra={"template": c.template}) for c in kept]


def _canon_text(c: Cand) -> str | None:
    if c.text is None and c.structure is not None:
        try:
            c.text = canonicalize(c.structure).cif
        except SciarError:
            c.text = None
    return c.text


def run_benchmark(test, train, strategy: str = "lm", **kw) -> dict:
    """Run one strategy on a test split; returns (and optionally writes) the figures."""
    return run_benchmarks(test, train, [strategy], **kw)[0]


def run_benchmarks(test, train, strategies=STRATEGIES, checkpoint: str | None = None, preset: str = "tiny",
                   n: int = 20, limit: int | None = None, seed: int = 0, temperature: float = 1.0, top_k: int = 10,
                   steps: int | None = None, bonds: bool = False, progress: bool = True, json_path=None,
                   draws: int | None = None, spread: float = 0.0) -> list[dict]:
    """Run several strategies on the same test subset, sharing the model's samples and the index.

    ``draws``: samples per test structure (default ``DRAWS_PER_CANDIDATE * n``), shared by
    ``lm``, ``samples`` (the first ``n``) and ``hybrid`` (all of them vote).
    """
    from tqdm.auto import tqdm

    from domains.crystals.validity import check_cif

    strategies = list(strategies)
    for st in strategies:
        if st not in STRATEGIES:
            raise SciarError(f"unknown strategy {st!r} (lm, samples, retrieval or hybrid)")
    if n < 1:
        raise SciarError("n must be at least 1")
    if limit is not None and limit < 1:
        raise SciarError("--limit must be at least 1 (leave it out to evaluate every test structure)")
    draws = DRAWS_PER_CANDIDATE * n if draws is None else draws
    if draws < n:
        raise SciarError(f"draws ({draws}) must be at least n ({n})")
    if spread and "samples" in strategies:
        raise SciarError("the samples strategy is the model's plain draws as drawn: run it without spread")
    t_start = time.perf_counter()
    df = load_test(test, limit, seed)
    sm = matcher()
    gen = index = None
    info = {}
    bases = set(strategies)
    if {"lm", "samples", "hybrid"} & bases:
        from domains.crystals.generate import CrystalGenerator

        if checkpoint is None:
            if train is None:
                raise SciarError("the lm strategy needs --checkpoint or --train (to train a --preset model)")
            checkpoint = train_for_benchmark(train, preset, steps, seed, progress)
        gen = CrystalGenerator(checkpoint)
        info["checkpoint"] = str(gen.path)
        info["checkpoint_data"] = gen.ck.domain.get("data")
    if {"retrieval", "hybrid"} & bases:
        if train is None:
            raise SciarError("the retrieval strategy needs --train (the template index)")
        from domains.crystals.retrieval import load_index

        index = load_index(train, progress=progress)
        info["index_size"] = len(index.structures)

    rows = {st: [] for st in strategies}
    valid_flags = {st: [] for st in strategies}
    gen_time = n_generated = 0
    warnings.simplefilter("ignore")
    for i, rec in tqdm(list(df.iterrows()), desc="benchmark", disable=not progress):
        try:
            target = structure_from_cif(rec["cif"], rebuild=False)
            comp = _prompt_composition(rec["cif"], target)
        except SciarError as e:
            for st in strategies:
                rows[st].append({"id": rec["id"], "error": str(e), "match1": False, "matchn": False})
            continue
        lm = []
        if gen is not None:
            t0 = time.perf_counter()
            lm = lm_candidates(gen, [comp], draws, seed + 1000 * i, temperature, top_k, spread)[0]
            gen_time += time.perf_counter() - t0
            n_generated += draws
            for c in lm:
                c.csp_ok = c.structure is not None and csp_filter(c.structure)
        rms_cache: dict[int, float | None] = {}
        valid_cache: dict[int, bool] = {}
        lists = {}  # the lm and retrieval lists, shared with the hybrid

        def ranked(name):
            if name not in lists:
                if name == "lm":
                    lists[name] = ranked_samples(lm, n, sm)
                else:
                    lists[name] = retrieval_candidates(index, comp, n, sm)
                    for c in lists[name]:
                        c.csp_ok = c.structure is not None and csp_filter(c.structure)
            return lists[name]

        for st in strategies:
            if st == "samples":
                cands = lm[:n]
            elif st in ("lm", "retrieval"):
                cands = ranked(st)
            else:
                cands = hybrid_candidates(ranked("lm"), ranked("retrieval"), n, sm, draws)
            rms = []
            for c in cands:
                key = id(c.structure)
                if key not in valid_cache:
                    t = c.text if c.text is not None else _canon_text(c)
                    valid_cache[key] = bool(t is not None and check_cif(t, bonds=bonds)["valid"])
                valid_flags[st].append(valid_cache[key])
                if key not in rms_cache:
                    r = None
                    if c.csp_ok:
                        try:
                            r = sm.get_rms_dist(target, c.structure)
                        except Exception:
                            r = None
                    rms_cache[key] = r[0] if r is not None else None
                rms.append(rms_cache[key])
            first = [r for r in rms[:1] if r is not None]
            alln = [r for r in rms[:n] if r is not None]
            best = int(np.argmin([r if r is not None else np.inf for r in rms])) if alln else None
            rows[st].append({"id": rec["id"], "formula": comp.formula.replace(" ", ""), "n_candidates": len(cands),
                             "match1": bool(first), "rms1": min(first) if first else None,
                             "matchn": bool(alln), "rmsn": min(alln) if alln else None,
                             "best_source": cands[best].source if best is not None else None})
    outs = []
    for st in strategies:
        res = pd.DataFrame(rows[st])
        out = {
            "strategy": st, "test": str(test), "train": str(train) if train is not None else None, "n": n,
            "count": int(len(res)), "seed": seed, "limit": limit, "draws": draws if st != "retrieval" else None,
            "spread": spread if st != "retrieval" else None,
            "match_rate": {"1": float(res["match1"].mean()), str(n): float(res["matchn"].mean())},
            "rmse": {"1": _mean(res.get("rms1")), str(n): _mean(res.get("rmsn"))},
            "valid_rate": float(np.mean(valid_flags[st])) if valid_flags[st] else 0.0,
            "valid_definition": "every check of domains.crystals.validity" + ("" if bonds else " except CrystalNN bonds"),
            "seconds_all_strategies": round(time.perf_counter() - t_start, 1), **info,
            "matched_by_source": {str(k): int(v) for k, v in res["best_source"].value_counts().items()}
            if "best_source" in res else {},
        }
        if st != "retrieval" and n_generated:
            out["generation_structures_per_s"] = round(n_generated / max(gen_time, 1e-9), 2)
        outs.append(out)
    if json_path:
        from sciar.io import write_json_atomic

        write_json_atomic(json_path, outs[0] if len(outs) == 1 else outs)
    return outs


def _mean(col) -> float | None:
    if col is None:
        return None
    v = [x for x in col if x is not None and not (isinstance(x, float) and np.isnan(x))]
    return float(np.mean(v)) if v else None


def _prompt_composition(cif_text: str, target):
    """The cell composition of the test structure's canonical CIF (its data_ formula)."""
    from pymatgen.core import Composition

    try:
        return Composition(canonicalize(target).formula)
    except SciarError:
        return target.composition


# the hybrid's ranking rule (merge_ranked), fitted on the validation splits of all three benchmarks together
# (benchmarks/crystals_hybrid.py fit: 64 MP-20, 60 perov-5 and 60 carbon-24 validation structures); the same on
# every split (README, "hybrid"). With these values a template in retrieval's first 20 outweighs a structure the
# model drew once in 40 draws, and the model's structure drawn 4 times or more outweighs retrieval's first.
HYBRID_RULE = dict(weight=0.1, decay=0.25)


def merge_ranked(lm: list, ret: list, n: int, same, share, weight: float = HYBRID_RULE["weight"],
                 decay: float = HYBRID_RULE["decay"]) -> list:
    """The hybrid's ranking: the model's ranked structures ``lm`` and retrieval's ``ret`` scored by votes.

    A structure's vote is the share of the model's draws that gave it (``share(c)``; 0 if the model did not
    propose it) plus, if retrieval proposes it at rank ``j`` (0: its first), ``weight / (1 + j) ** decay``.
    A structure both propose (``same(a, b)``: the matcher; a model structure pairs with the first retrieval
    candidate equal to it that is not paired yet) gets both votes and is kept as retrieval's copy. The ``n``
    highest votes come first; ties: a structure both propose first, then the model's order and retrieval's in
    turn, the model's first. So agreement of the two predictors counts, the model's confident structures can lead
    and its once-drawn tail does not crowd out retrieval's list.
    """
    paired, used = {}, set()
    for i, a in enumerate(lm):
        for j, b in enumerate(ret):
            if j not in used and same(a, b):
                paired[i] = j
                used.add(j)
                break

    def prior(j: int) -> float:
        return weight / (1.0 + j) ** decay

    scored = []  # (vote, proposed by both, position in turn order, candidate)
    for i, a in enumerate(lm):
        j = paired.get(i)
        if j is None:
            scored.append((share(a), 0, 2 * i, a))
        else:
            scored.append((share(a) + prior(j), 1, 2 * min(i, j), ret[j]))
    scored += [(prior(j), 0, 2 * j + 1, b) for j, b in enumerate(ret) if j not in used]
    scored.sort(key=lambda x: (-x[0], -x[1], x[2]))
    return [c for *_, c in scored[:n]]


def hybrid_candidates(lm_ranked: list[Cand], ret: list[Cand], n: int, sm, draws: int) -> list[Cand]:
    """The hybrid strategy: :func:`merge_ranked` of the model's ranked structures (:func:`ranked_samples`
    of ``draws`` samples) and retrieval's (:func:`retrieval_candidates`), duplicates found by the matcher."""

    def same(a, b) -> bool:
        if a.source == b.source:
            return False  # each list is distinct already
        try:
            return bool(sm.fit(a.structure, b.structure))
        except Exception:
            return False

    return merge_ranked(lm_ranked, ret, n, same, share=lambda c: c.extra.get("weight", 0.0) / max(draws, 1))


def train_for_benchmark(train, preset: str, steps: int | None, seed: int, progress: bool) -> Path:
    """Train (or reuse) a preset model on the train split under build/crystals/bench/."""
    from domains.crystals.canon_cache import cache_dir
    from domains.crystals.lm import train_crystal_lm
    from sciar.io import fingerprint

    key = fingerprint([Path(train), preset, str(steps), str(seed)])
    out = cache_dir() / "bench" / f"{preset}-{key}"
    if not (out / "model.safetensors").exists() or (out / "last").exists() and steps:
        train_crystal_lm(train, out, preset, steps=steps, seed=seed, progress=progress)
    return out


def format_result(r: dict) -> str:
    n = str(r["n"])
    rm1 = r["rmse"]["1"]
    rmn = r["rmse"][n]
    return (f"{r['strategy']:<9} match@1 {r['match_rate']['1']:.1%} (rmse {rm1 if rm1 is None else round(rm1, 4)})  "
            f"match@{n} {r['match_rate'][n]:.1%} (rmse {rmn if rmn is None else round(rmn, 4)})  "
            f"valid {r['valid_rate']:.1%}  count {r['count']}")


def dump(r: dict) -> str:
    return json.dumps(r, indent=1, default=str)
