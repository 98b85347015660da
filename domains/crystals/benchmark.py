"""Crystal structure prediction benchmark (CDVAE / DiffCSP / CrystaLLM protocol).

For each test structure, the prompt is its cell composition (the ``data_`` formula of
its canonical CIF, as CrystaLLM prompts); a strategy proposes up to ``n`` structures:

- ``lm``: the language model alone: ``draws`` samples (grammar-constrained decoding) clustered
  with the matcher, the ``n`` most often drawn structures first (:func:`ranked_samples`);
- ``samples``: the model's first ``n`` samples as drawn (the CDVAE / CrystaLLM protocol);
- ``retrieval``: substituted training templates (:mod:`domains.crystals.retrieval`);
- ``hybrid``: consensus of both: the retrieval pool and the model's samples are clustered
  with the matcher and clusters ranked by their summed votes (:func:`hybrid_candidates`).

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
HYBRID_LM_WEIGHT = 1.0  # the model's samples together weigh this much against the retrieval pool's 1


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
        base, _, w = st.partition(":")
        if base not in STRATEGIES or (w and base != "hybrid"):
            raise SciarError(f"unknown strategy {st!r} (lm, samples, retrieval, hybrid or hybrid:<model vote weight>)")
        if w:
            try:
                float(w)
            except ValueError:
                raise SciarError(f"bad model vote weight in {st!r}") from None
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
    bases = {st.partition(":")[0] for st in strategies}
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
        clusters = None
        for st in strategies:
            if st == "lm":
                cands = ranked_samples(lm, n, sm)
            elif st == "samples":
                cands = lm[:n]
            elif st == "retrieval":
                cands = retrieval_candidates(index, comp, n, sm)
                for c in cands:
                    c.csp_ok = c.structure is not None and csp_filter(c.structure)
            else:
                w = st.partition(":")[2]
                if clusters is None:
                    clusters = hybrid_clusters(index, lm, comp, n, sm)
                cands = hybrid_candidates(index, lm, comp, n, sm, lm_weight=float(w) if w else HYBRID_LM_WEIGHT,
                                          clusters=clusters)
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


def hybrid_candidates(index, lm_cands: list[Cand], comp, n: int, sm, pool: int = 40, tau: float = 4.0,
                      lm_weight: float = HYBRID_LM_WEIGHT, clusters=None) -> list[Cand]:
    """Consensus of the two predictors: cluster the retrieval pool and the model's samples with the matcher.

    Each of the ``pool`` most similar templates votes with its similarity weight ``exp(-d / tau)``
    (normalised to sum 1), each model sample passing the filter with ``lm_weight`` times its share
    of the samples' weight (1 each for plain draws); clusters are ranked by their summed votes
    (then by the model's best likelihood per token), so a structure both predictors propose ranks first. Represented by their first member
    (the most similar template, else the model's sample). ``clusters``: the result of
    :func:`hybrid_clusters` for these inputs, to rank them again with another weight.
    """
    rc, clusters = clusters if clusters is not None else hybrid_clusters(index, lm_cands, comp, n, sm, pool, tau)
    ranked = sorted(clusters, key=lambda cl: (-(cl[1] + lm_weight * cl[2]), -cl[3]))
    # a quarter of the slots is kept for the model's own proposals, so that structures only the
    # model finds are not crowded out by the long tail of retrieved templates
    k_lm = n // 4
    head = ranked[: n - k_lm]
    rest = ranked[n - k_lm :]
    lm_rest = [cl for cl in rest if cl[2] > 0][:k_lm]
    others = [cl for cl in rest if not any(cl is x for x in lm_rest)]
    out = []
    for rep, r, lw, best in head + lm_rest + others:
        source = "both" if r > 0 and lw > 0 else rep.source
        out.append(Cand(rep.structure, rep.text, rep.score, source, csp_ok=rep.csp_ok, valid=rep.valid,
                        extra=dict(rep.extra, votes_retrieval=round(r, 4), votes_lm=round(lm_weight * lw, 4))))
    if len(out) < n and len(rc) > pool:
        from domains.crystals.retrieval import dedupe

        extra = [Cand(c.structure, None, -c.score, "retrieval") for c in rc[pool:]]
        out = dedupe(out + extra, n, sm)
    return out[:n]


def hybrid_clusters(index, lm_cands: list[Cand], comp, n: int, sm, pool: int = 40, tau: float = 4.0):
    """The retrieval pool and the model's filtered samples clustered by the matcher.

    Returns (retrieved candidates, clusters); a cluster is [representative, retrieval votes,
    share of the model's samples, best model score].
    """
    import math

    from domains.crystals.retrieval import cluster

    rc = index.candidates(comp, max(pool, 4 * n))
    head = rc[:pool]
    wr = [math.exp(-c.score / tau) for c in head]
    total = sum(wr) or 1.0
    items = [(Cand(c.structure, None, -c.score, "retrieval", csp_ok=csp_filter(c.structure),
                   extra={"template": c.template}), w / total, 0.0) for c, w in zip(head, wr)]
    ok = [c for c in lm_cands if c.csp_ok]
    mass = sum(c.extra.get("weight", 1.0) for c in ok)  # the sample weights of spread draws
    items += [(c, 0.0, c.extra.get("weight", 1.0) / mass) for c in ok]
    items = [it for it in items if it[0].structure is not None]
    clusters = []
    for members in cluster([c.structure for c, _, _ in items], sm):
        group = [items[j] for j in members]
        model = [c.score for c, _, _ in group if c.source == "lm"]
        clusters.append([group[0][0], sum(r for _, r, _ in group), sum(lw for _, _, lw in group),
                         max(model) if model else -np.inf])
    return rc, clusters


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
