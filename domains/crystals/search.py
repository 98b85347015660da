"""MCTS structure search for a composition: CIF generation steered toward low formation energy.

The tree search itself is :mod:`mcts` (domain-agnostic). This module supplies the
crystal parts: the composition prompts (one per formula-unit count Z that fits,
chosen among at the tree's root), the CIF grammar of :mod:`domains.crystals.grammar`
as the search's constraint, and the evaluation of a completed CIF: CrystaLLM's
validity checks (:func:`domains.crystals.validity.check_cif`), then a formation-energy
scorer (:mod:`domains.crystals.energy`). Rewards follow CrystaLLM: an invalid CIF
gets ``-(1 - bond score)`` when only the bond-length check failed, else -1; a valid
one ``1 / (1 + exp(2 (E - mean) / std))`` over the running energies.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from domains.crystals import DEFAULT_CHECKPOINT
from sciar.errors import SciarError, one_line

if TYPE_CHECKING:
    import pandas as pd

TABLE_COLUMNS = ["simulation", "prompt", "formula", "spacegroup", "energy", "reward", "valid", "checks_valid", "reasons",
                 "bond_score", "n_atoms", "moved_sites", "cell_scale", "nudged", "error", "duplicate", "cost", "n_tokens", "stopped",
                 "elapsed_s", "cif", "relaxed_cif"]


@lru_cache(maxsize=2)
def load_generator(checkpoint: str = DEFAULT_CHECKPOINT):
    """The crystal model and tokenizer (a :class:`CrystalGenerator`), loaded once per process."""
    from domains.crystals.generate import CrystalGenerator

    return CrystalGenerator(checkpoint)


def _keep_spacegroup(symbol: str | None):
    """Build (once) and keep pymatgen's SpaceGroup for this symbol, so later checks reuse it."""
    from domains.crystals.symmetry import spacegroup

    if symbol:
        try:
            spacegroup(symbol)
        except SciarError:
            pass  # unknown symbol: the validity check reports it


def evaluate_cifs(texts: list[str], scorer) -> list:
    """Validity checks on generated CIF texts, then the scorer on the valid structures: ``[Evaluation]``.

    The checks are :func:`domains.crystals.validity.check_cif`'s; the bond-length check runs
    only on CIFs that pass every other check (the only ones whose reward depends on it).

    An invalid CIF gets CrystaLLM's reward: ``-(1 - bond score)`` when only the bond-length
    check failed, else -1. A valid one keeps its energy as the score; a scorer failure
    (exception or NaN) leaves the error in ``Evaluation.error``.
    """
    from domains.crystals.cif import SG_KEY, cif_field, header_formula
    from domains.crystals.energy import score_structures
    from domains.crystals.validity import bond_score, check_cif
    from mcts import Evaluation

    checks, fulls = [], []
    for text in texts:
        _keep_spacegroup(cif_field(text, SG_KEY))
        try:
            # the (slow) CrystalNN bond check only where every other check passed: elsewhere the reward is -1 anyway
            r = check_cif(text, bonds=False)
            if r["valid"]:
                try:
                    bs = float(bond_score(r["structure"]))
                except Exception:
                    bs = 0.0
                r.update(bond_score=bs, bonds=bs >= 1.0, valid=bs >= 1.0, reasons="" if bs >= 1.0 else "bonds")
        except Exception as e:  # a check crashing on odd text is an invalid CIF, not a failed search
            r = {"valid": False, "reasons": "check failed", "error": one_line(e), "structure": None,
                 "bond_score": math.nan}
        checks.append(r)
        fulls.append(text)  # as generated (identity symmetry loop); full_cif() rebuilds the operations on output
    valid = [i for i, r in enumerate(checks) if r["valid"]]
    energies, errors = score_structures([checks[i]["structure"] for i in valid], scorer) if valid else ([], [])
    fresh = getattr(scorer, "fresh", None)
    relaxed = getattr(scorer, "relaxed", None)
    n_valid = len(valid)
    fresh = fresh if isinstance(fresh, list) and len(fresh) == n_valid else [True] * n_valid
    relaxed = relaxed if isinstance(relaxed, list) and len(relaxed) == n_valid else [None] * n_valid
    score = dict(zip(valid, zip(energies, errors, fresh, relaxed)))
    out = []
    for i, (r, text) in enumerate(zip(checks, fulls)):
        st = r.get("structure")
        bs = r.get("bond_score")
        bs = float(bs) if bs is not None else math.nan
        info = {"formula": header_formula(text), "spacegroup": cif_field(text, SG_KEY),
                "checks_valid": bool(r["valid"]), "reasons": r.get("reasons", ""), "bond_score": bs,
                "n_atoms": len(st) if st is not None else None, "cif": text}
        if r["valid"]:
            e, err, new, rel = score[i]
            info["relaxed_cif"] = _relaxed_cif(rel)
            out.append(Evaluation(True, e, -1.0, err, info, cost=1.0 if new else 0.0))
            continue
        only_bonds = r.get("reasons") == "bonds" and math.isfinite(bs)
        reason = r.get("error") or (f"invalid: {r.get('reasons')}" if r.get("reasons") else "invalid")
        out.append(Evaluation(False, math.nan, -(1.0 - bs) if only_bonds else -1.0, reason, info, cost=0.0))
    return out


def _relaxed_cif(structure) -> str | None:
    """CIF text of a relaxed structure (its canonical symmetrised form where that works)."""
    if structure is None:
        return None
    try:
        from domains.crystals.canonical import canonicalize

        return canonicalize(structure).cif
    except Exception:
        return structure.to(fmt="cif")


def crystal_evaluator(tok, scorer, snap: bool = True, fit: bool = True):
    """``evaluate(token sequences) -> [Evaluation]`` for :class:`mcts.Problem`.

    Complete CIFs get what ``sample`` does to its output (:func:`domains.crystals.generate.finish_cif`):
    with ``snap``, sites the model placed off a position of their stated multiplicity move onto the
    nearest such Wyckoff position (``moved_sites`` counts them); with ``fit``, the cell is scaled or
    the atoms nudged under the symmetry to plausible bond lengths (``cell_scale``, ``nudged``).
    """
    from domains.crystals.generate import finish_cif

    def evaluate(seqs):
        texts, fixes = [], []
        for s in seqs:
            raw = tok.decode(s)
            text = raw.rstrip("\n") + "\n"
            fix = (0, 1.0, False)
            if raw.endswith("\n\n"):  # stopped: a complete CIF
                text, *fix = finish_cif(text, snap, fit)
            texts.append(text)
            fixes.append(fix)
        evs = evaluate_cifs(texts, scorer)
        for ev, (m, f, nudged) in zip(evs, fixes):
            ev.info.update(moved_sites=m, cell_scale=f, nudged=nudged)
        return evs

    return evaluate


@dataclass
class CrystalSearch:
    result: object  # mcts.SearchResult
    prompts: list  # domains.crystals.prompts.Prompt, one per formula-unit count searched
    composition: str
    spacegroup: str | None
    scorer: str

    @property
    def table(self) -> "pd.DataFrame":
        t = self.result.table.rename(columns={"score": "energy"})
        if "sequence" in t.columns:
            t = t.drop(columns=["sequence"])
        for c in TABLE_COLUMNS:
            if c not in t.columns:
                t[c] = None
        return t[TABLE_COLUMNS]

    def best(self, n: int = 5) -> "pd.DataFrame":
        """The ``n`` lowest-energy valid structures, one per distinct CIF."""
        t = self.table
        t = t[t["valid"].astype(bool)].sort_values("energy", kind="stable")
        return t.assign(_key=t["relaxed_cif"].fillna(t["cif"])).drop_duplicates("_key").drop(columns="_key").head(n)

    @staticmethod
    def output_cif(row) -> str:
        """The structure a user gets for a table row: the relaxed cell where the reward relaxed it, full symmetry."""
        rel = row.get("relaxed_cif")
        return _full(rel if isinstance(rel, str) else row["cif"])


def search_composition(composition: str, spacegroup: str | None = None, z: int | None = None,
                       simulations: int = 200, seconds: float | None = None, width: int = 5, c: float = 1.0,
                       scorer: str | object = "cgcnn", relax: bool = False, seed: int | None = 0,
                       checkpoint: str = DEFAULT_CHECKPOINT, batch: int = 2, selection: str = "puct",
                       rollout_top_k: int | None = None, temperature: float = 1.0, root_temperature: float = 1.0,
                       cache: str = "tree", calls: int = 0, root_noise: float = 0.0, widening: float = 0.0,
                       spread: bool = False, extra_prompts: list | None = None, dedupe: bool = False,
                       backup: str = "mean", k: float = 2.0, snap: bool = True, fit: bool = True,
                       progress: bool = True, generator=None) -> CrystalSearch:
    """MCTS over CIFs for one composition. ``scorer``: ``cgcnn``, ``chgnet`` or any callable on structures.

    ``relax``: every valid structure is relaxed by CHGNet (:class:`~domains.crystals.energy.RelaxedScorer`,
    cached by structure) and the scorer rates the relaxed one. ``calls``: a budget in scorer calls (structures
    scored, or relaxed and scored; invalid and repeated ones cost none) besides ``simulations``.
    ``dedupe`` (with ``relax``): a structure equivalent to one relaxed before is not relaxed again
    (:func:`~domains.crystals.energy.duplicate_matcher`) and costs no call.
    ``extra_prompts``: more :class:`~domains.crystals.prompts.Prompt` for the root to choose among
    (for instance the cells and space groups that template retrieval proposes, :func:`retrieval_prompts`).
    """
    from domains.crystals.energy import RelaxedScorer, duplicate_matcher, make_scorer
    from domains.crystals.generate import cif_constraint, prompts_for
    from mcts import Problem, SearchConfig, search

    cfg = SearchConfig(simulations=simulations, seconds=seconds, width=width, c=c, selection=selection,
                       rollout_top_k=rollout_top_k, temperature=temperature, root_temperature=root_temperature,
                       batch=batch, seed=seed, cache=cache, backup=backup, k=k, calls=calls, root_noise=root_noise,
                       widening=widening, spread=spread)
    cfg.check()  # a zero budget fails before any model is loaded
    prompts = prompts_for(composition, spacegroup, z)  # unknown elements, bad formulas and space groups fail here
    texts = {p.text for p in prompts}
    prompts += [p for p in extra_prompts or [] if p.text not in texts and not texts.add(p.text)]
    gen = generator or load_generator(checkpoint)
    fitting = gen.fitting(prompts)
    base = make_scorer(scorer) if isinstance(scorer, str) else scorer
    score_fn = RelaxedScorer(base, match=duplicate_matcher() if dedupe else None) if relax else base
    scorer_name = getattr(score_fn, "name", type(score_fn).__name__)
    tok = gen.tok
    nl = gen.vocab.nl
    problem = Problem(
        prompts=[tok.encode(p.text) for p in fitting],
        evaluate=crystal_evaluator(tok, score_fn, snap, fit),
        stop=[[nl, nl]],
        constraints=[cif_constraint(gen.vocab, p, gen.block) for p in fitting],
        decode=lambda s: tok.decode(s),
    )
    res = search(gen.model, problem, cfg, progress=progress, desc=f"search {composition}")
    return CrystalSearch(res, fitting, composition, spacegroup, scorer_name)


def retrieval_prompts(index, composition, n: int = 3) -> list:
    """Prompts naming the cells and space groups of template retrieval's ``n`` best candidates for a composition
    (:meth:`~domains.crystals.retrieval.RetrievalIndex.predict`), so the search can start where known crystals are."""
    from domains.crystals.canonical import canonicalize
    from domains.crystals.composition import parse_composition
    from domains.crystals.matching import matcher
    from domains.crystals.prompts import make_prompt

    comp = parse_composition(composition) if isinstance(composition, str) else composition
    out, seen = [], set()
    for cand in index.predict(comp, n, matcher()):
        try:
            can = canonicalize(cand.structure)
            p = make_prompt(can.formula, can.spacegroup)
        except SciarError:
            continue
        if p.text not in seen:
            seen.add(p.text)
            out.append(p)
    return out


# ---------------------------------------------------------------- outputs

def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))


def plot_rewards(history, path: Path, title: str = ""):
    from sciar.io import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(6.4, 4.0))
    if len(history):
        ax.plot(history["simulation"], history["best_reward"], label="best reward")
        ax.plot(history["simulation"], history["mean_reward"], label="mean reward")
    ax.set_xlabel("simulation")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def _full(text: str) -> str:
    """CIF text with the full symmetry operations of its space group (as ``sample`` writes them)."""
    from domains.crystals.validity import full_cif

    try:
        return full_cif(text)
    except Exception:
        return text


def write_search(cs: CrystalSearch, out: str | Path, top: int = 5) -> dict:
    """Write the best CIFs, the full table (CSV and parquet), the reward plot and a summary JSON."""
    from sciar.io import write_json_atomic, write_table_atomic, write_text_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = cs.table
    best = cs.best(top)
    files = []
    for rank, (_, r) in enumerate(best.iterrows(), 1):
        name = f"best_{rank:02d}_{_safe(r['formula'])}_{_safe(r['spacegroup']).replace('/', '-')}.cif"
        write_text_atomic(out / name, cs.output_cif(r))
        files.append(name)
    write_table_atomic(table, out / "results.csv")
    write_table_atomic(table, out / "results.parquet")
    plot_rewards(cs.result.history, out / "rewards.png", f"MCTS {cs.composition} ({cs.scorer})")
    summary = summarise(cs)
    summary["best_files"] = files
    write_json_atomic(out / "summary.json", summary)
    return summary


def summarise(cs: CrystalSearch) -> dict:
    t = cs.table
    v = t[t["valid"].astype(bool)]
    b = cs.best(1)
    return {
        "composition": cs.composition, "spacegroup": cs.spacegroup, "scorer": cs.scorer,
        "formulas": [p.formula for p in cs.prompts], "simulations": int(cs.result.simulations),
        "scorer_calls": int(cs.result.calls),
        "sequences": int(len(t)), "valid": int(len(v)), "valid_rate": float(len(v) / len(t)) if len(t) else 0.0,
        "best_energy": float(b["energy"].iloc[0]) if len(b) else None,
        "best_formula": b["formula"].iloc[0] if len(b) else None,
        "best_spacegroup": b["spacegroup"].iloc[0] if len(b) else None,
        "seconds": round(float(cs.result.seconds), 2), "interrupted": bool(cs.result.interrupted),
        "simulations_per_s": round(cs.result.simulations / cs.result.seconds, 3) if cs.result.seconds else None,
        "nodes": int(cs.result.nodes), "scorer_errors": int(t["error"].fillna("").str.startswith(("cgcnn", "chgnet", "scorer", "relax")).sum()),
        "config": {k: cs.result.config[k] for k in ("width", "c", "selection", "backup", "batch", "seed", "cache")},
    }


# ---------------------------------------------------------------- batch (one row per composition)

def search_row_fn(checkpoint: str = DEFAULT_CHECKPOINT, simulations: int = 200, width: int = 5, c: float = 1.0,
                  scorer: str = "cgcnn", relax: bool = False, seed: int = 0, top: int = 1, progress: bool = False):
    """For :func:`sciar.batch.run_batch`: ``fn(row) -> [result rows]`` searching the row's composition.

    Row keys: ``composition`` (required), optional ``spacegroup``, ``z``, ``simulations``,
    ``width``, ``c``, ``scorer``, ``seed``, ``n`` or ``count``. Each output row is one of the ``top`` (or the
    row's ``n``) best structures
    (``rank``, ``formula``, ``spacegroup``, ``<scorer>_formation_energy_per_atom``, ``valid``,
    ``bond_score``, ``n_atoms``, ``cif`` with full symmetry) with ``mode="search"`` and the search's
    ``search_simulations``, ``search_valid_rate``, ``search_seconds``; a search without a valid
    structure yields one row with ``valid`` False and ``cif`` empty.
    """

    from domains.crystals.sampling import row_count

    def opt(row, key, default, cast):
        v = row.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
            return default
        return cast(v)

    def fn(row: dict) -> list[dict]:
        comp = row.get("composition")
        if not isinstance(comp, str) or not comp.strip():
            raise SciarError("the row has no composition")
        want = row_count(row, top)  # a bad count fails before the search runs
        cs = search_composition(
            comp, opt(row, "spacegroup", None, str), opt(row, "z", None, int),
            simulations=opt(row, "simulations", simulations, int), width=opt(row, "width", width, int),
            c=opt(row, "c", c, float), scorer=opt(row, "scorer", scorer, str), relax=relax,
            seed=opt(row, "seed", seed, int), checkpoint=checkpoint, progress=progress,
        )
        if cs.result.interrupted:  # a cut-short search is not this row's answer; the batch keeps the rows before it
            raise KeyboardInterrupt
        s = summarise(cs)
        col = f"{s['scorer']}_formation_energy_per_atom"  # as the sampling rows of ``sciar crystal batch`` name it
        base = {"mode": "search", "search_simulations": s["simulations"], "search_valid_rate": s["valid_rate"],
                "search_seconds": s["seconds"]}
        best = cs.best(want)
        if best.empty:
            return [{**base, "rank": None, "formula": None, "spacegroup": None, col: math.nan, "valid": False, "cif": ""}]
        return [{**base, "rank": k, "formula": r["formula"], "spacegroup": r["spacegroup"], col: r["energy"],
                 "valid": True, "bond_score": r["bond_score"], "n_atoms": r["n_atoms"], "cif": cs.output_cif(r)}
                for k, (_, r) in enumerate(best.iterrows(), 1)]

    return fn


# ---------------------------------------------------------------- score / relax CIF files

def _parse(text: str):
    from domains.crystals.readers import structure_from_cif

    if text.startswith("\x00"):
        raise SciarError(text[1:])
    return structure_from_cif(text)


def score_files(paths, scorer: str = "cgcnn", relax: bool = False, progress: bool = True):
    """Formation energy per atom of CIF files: one row per file (errors in a column)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from domains.crystals.energy import make_scorer, score_structures

    from domains.crystals.canonical import structure_problem
    from domains.crystals.readers import cif_file_texts

    items = cif_file_texts(paths)
    fn = make_scorer(scorer, relax)
    rows, structs = [], []
    for name, text, err in items:
        try:
            if text is None:
                raise SciarError(err)
            s = _parse(text)
        except Exception as e:
            rows.append({"file": name, "formula": None, "n_atoms": None, "error": one_line(e)})
            structs.append(None)
            continue
        # an energy model answers for any input, however unphysical: atoms 0.06 A apart got -1.3 eV/atom
        why = structure_problem(s)
        rows.append({"file": name, "formula": s.composition.reduced_formula, "n_atoms": len(s), "error": why or ""})
        structs.append(None if why else s)
    ok = [i for i, s in enumerate(structs) if s is not None]
    col = "formation_energy_per_atom"
    for r in rows:
        r[col] = math.nan
    step = 16
    bar = tqdm(total=len(ok), desc=f"score ({scorer}{', relax' if relax else ''})", unit="cif", disable=not progress)
    for k in range(0, len(ok), step):
        idx = ok[k:k + step]
        vals, errs = score_structures([structs[i] for i in idx], fn)
        for j, (i, v, e) in enumerate(zip(idx, vals, errs)):
            rows[i][col] = v
            rows[i]["error"] = e
            if hasattr(fn, "energies") and len(fn.energies) == len(idx):
                rows[i]["energy_per_atom"] = fn.energies[j]
            if relax and hasattr(fn, "relaxed") and len(fn.relaxed) == len(idx) and fn.relaxed[j] is not None:
                rows[i]["relaxed"] = fn.relaxed[j]
        bar.update(len(idx))
    bar.close()
    df = pd.DataFrame(rows)
    first = ["file", "formula", "n_atoms", col] + (["energy_per_atom"] if "energy_per_atom" in df.columns else [])
    return df[first + [c for c in df.columns if c not in first]]


def relax_files(paths, out: str | Path | None = None, progress: bool = True):
    """Relax CIF files with CHGNet; write the relaxed CIFs into ``out``; table of energies."""
    from domains.crystals.canonical import canonical_cif
    from sciar.io import write_text_atomic

    df = score_files(paths, scorer="chgnet", relax=True, progress=progress)
    files, taken = [], set()
    for _, r in df.iterrows():
        st = r.get("relaxed")
        name = None
        if out is not None and st is not None and not (isinstance(st, float)):
            Path(out).mkdir(parents=True, exist_ok=True)
            # a.cif and a.cif.gz give a_relaxed.cif, block i of a multi-block a.cif a_i_relaxed.cif; a repeated name
            # (the same file name in two folders) gets a counter
            stem = re.sub(r"\.cif(\.gz)?(?=#|$)", "", Path(r["file"]).name, flags=re.I).replace("#", "_")
            name, k = str(Path(out) / f"{stem}_relaxed.cif"), 1
            while name in taken:
                name, k = str(Path(out) / f"{stem}_{k}_relaxed.cif"), k + 1
            taken.add(name)
            try:
                from domains.crystals.validity import full_cif

                text = full_cif(canonical_cif(st))
            except Exception:
                text = st.to(fmt="cif")
            write_text_atomic(name, text)
        files.append(name)
    df["relaxed_file"] = files
    return df.drop(columns=[c for c in ("relaxed",) if c in df.columns])


def summary_line(s: dict) -> str:
    e = s.get("best_energy")
    best = f"best {e:.4f} eV/atom ({s['best_formula']}, {s['best_spacegroup']})" if e is not None else "no valid structure"
    return (f"{s['composition']}: {s['simulations']} simulations, {s['scorer_calls']} scorer calls, "
            f"{s['valid']}/{s['sequences']} valid, {best}, "
            f"{s['seconds']} s ({s['simulations_per_s']} sim/s)")
