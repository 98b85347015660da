"""Writing generated samples: full-symmetry CIF files and a summary table with validity."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from domains.crystals.cif import cif_field, header_formula
from domains.crystals.validity import CHECKS, check_cif, full_cif
from sciar.errors import DataError
from sciar.io import write_table_atomic, write_text_atomic


def sample_rows(samples, bonds: bool = True) -> list[dict]:
    """One row per sample: formula, space group, validity, structure group and the full CIF text.

    ``group`` numbers the distinct structures among the samples (the structure matcher's clusters),
    1 being the one drawn most often; ``drawn`` is how many samples share it.
    """
    rows, structures = [], []
    for i, s in enumerate(samples):
        r = check_cif(s.text, bonds=bonds)
        st = r.pop("structure")
        structures.append(st)
        try:
            text = full_cif(s.text)
        except DataError:
            text = s.text
        rows.append({
            "index": i, "formula": header_formula(s.text), "spacegroup": cif_field(s.text, "_symmetry_space_group_name_H-M"),
            "n_atoms": len(st) if st is not None else None, "logprob": round(s.logprob, 3), "n_tokens": s.n_tokens,
            "complete": s.complete, "moved_sites": s.moved_sites,
            "cell_scale": round(s.cell_scale, 4), "nudged": s.nudged, "source": s.source, "valid": r["valid"],
            "reasons": r["reasons"],
            **{f"check_{k}": r[k] for k in CHECKS + ["smact"]}, "bond_score": r["bond_score"],
            "detected_spacegroup": r["detected_spacegroup"], "cif": text,
        })
    for r, (g, k) in zip(rows, structure_groups(structures)):
        r["group"], r["drawn"] = g, k
    return rows


def structure_groups(structures: list) -> list[tuple[int | None, int]]:
    """(group, size) per structure: matcher clusters numbered from 1 by size (ties: first seen); None unreadable."""
    from domains.crystals.benchmark import matcher
    from domains.crystals.retrieval import clusters_by_size

    idx = [i for i, st in enumerate(structures) if st is not None]
    clusters = clusters_by_size([structures[i] for i in idx], matcher())
    out: list[tuple[int | None, int]] = [(None, 0)] * len(structures)
    for g, cl in enumerate(clusters, 1):
        for j in cl:
            out[idx[j]] = (g, len(cl))
    return out


def retrieved_samples(composition: str, n: int, templates, strategy: str = "retrieval", spacegroup: str | None = None,
                      z: int | None = None, gen=None, seed: int | None = None, **kw) -> list:
    """``n`` structures for a composition from template retrieval (or the hybrid of retrieval and the model),
    as :class:`~domains.crystals.generate.Sample` s whose ``source`` names the template.

    ``templates``: corpus table(s) or CIF inputs (canonicalised and cached). The prompt's cell
    composition picks the templates (a reduced formula: the first formula-unit count that fits);
    ``spacegroup`` keeps only candidates of that space group. A cell composition (``Sr1Ti1O3``,
    ``Na4Cl4`` or ``z`` given: one prompt, as the model reads it) keeps only templates of that many atoms
    (the model's structures are prompted with that cell); a reduced formula (``SrTiO3``) takes any.
    """
    import math

    from domains.crystals.benchmark import (
        DRAWS_PER_CANDIDATE, Cand, csp_filter, hybrid_candidates, matcher, ranked_samples, sample_cands)
    from domains.crystals.canonical import canonicalize
    from domains.crystals.generate import Sample, prompts_for
    from domains.crystals.retrieval import load_index
    from domains.crystals.tokenizer import normalise_spacegroup
    from pymatgen.core import Composition
    from sciar.errors import SciarError

    if strategy not in ("retrieval", "hybrid"):
        raise SciarError(f"unknown strategy {strategy!r} (lm, retrieval or hybrid)")
    prompts = prompts_for(composition, None, z)
    sg = normalise_spacegroup(spacegroup) if spacegroup else None
    index = load_index(templates)
    comp = Composition(prompts[0].formula)
    sm = matcher()
    cell = prompts[0].composition.num_atoms if len(prompts) == 1 else None
    # room for candidates dropped below (another space group or cell size, an absurd cell)
    pool = max(n * 4, 40) if sg or cell else n * 2
    cands = [Cand(c.structure, None, -c.score, "retrieval", extra={"template": c.template})
             for c in index.predict(comp, pool, sm)]
    if strategy == "hybrid":
        if gen is None:
            raise SciarError("the hybrid strategy needs a model checkpoint")
        draws = DRAWS_PER_CANDIDATE * n  # as the benchmark's lm and hybrid draw
        lm = sample_cands(gen.sample_composition(composition, n=draws, spacegroup=spacegroup, z=z, seed=seed, **kw))
        for c in lm:
            c.csp_ok = c.structure is not None and csp_filter(c.structure)
        for c in cands:
            c.csp_ok = csp_filter(c.structure)
        cands = hybrid_candidates(ranked_samples(lm, pool, sm), cands, pool, sm, draws)
    out = []
    for c in cands:
        try:
            can = canonicalize(c.structure) if c.text is None else canonicalize(c.text)
        except SciarError:
            continue
        if sg is not None and can.spacegroup != sg:
            continue
        got = Composition(can.formula)
        if got.reduced_composition != comp.reduced_composition:
            continue  # a model sample whose atoms fell onto each other (merged when read): not this composition
        if cell is not None and c.source != "lm" and got.num_atoms != cell:
            continue  # a template of another formula-unit count than the cell asked for (the model is prompted with it)
        src = "lm" if c.source == "lm" else f"template {c.extra.get('template', c.source)}"
        out.append(Sample(prompts[0].text, can.cif, math.nan, 0, True, 0, src))
        if len(out) >= n:
            break
    if not out:
        raise SciarError(f"no template fits {composition}" + (f" in {spacegroup}" if spacegroup else ""))
    return out


def write_samples(samples, out: str | Path, bonds: bool = True) -> pd.DataFrame:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = sample_rows(samples, bonds=bonds)
    for r in rows:
        r["file"] = f"{r['formula']}_{r['index']:03d}.cif"
        write_text_atomic(out / r["file"], r["cif"])
    df = pd.DataFrame(rows)
    write_table_atomic(df.drop(columns=["cif"]), out / "summary.csv")
    return df


def row_count(row: dict, default: int) -> int:
    """How many structures a batch row asks for: its ``n`` or ``count`` column (the same thing), else ``default``."""
    import math

    given = {}
    for key in ("n", "count"):
        v = row.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip() == "":
            continue
        try:
            k = float(v)
        except ValueError:
            raise DataError(f"{key} must be a whole number >= 1, not {v!r}") from None
        if k != int(k) or k < 1:
            raise DataError(f"{key} must be a whole number >= 1, not {v!r}")
        given[key] = int(k)
    if len(set(given.values())) > 1:
        raise DataError(f"n ({given['n']}) and count ({given['count']}) disagree: give one")
    return next(iter(given.values()), default)


def batch_fn(checkpoint, n: int = 5, energy: str = "cgcnn", bonds: bool = False, temperature: float = 1.0,
             top_k: int = 10, seed: int = 0):
    """A row function for :func:`sciar.batch.run_batch`: ``composition`` (+ ``spacegroup``, ``n`` or ``count``, ``z``) in,
    one row per generated structure out (validity, energy, CIF)."""
    import math

    from domains.crystals.generate import CrystalGenerator

    gen = CrystalGenerator(checkpoint)
    scorer = None
    if energy not in ("none", "cgcnn", "chgnet"):
        from sciar.errors import SciarError

        raise SciarError(f"unknown energy model {energy!r} (cgcnn, chgnet or none)")

    def opt(row, key):
        v = row.get(key)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip() == "" else v

    def fn(row: dict) -> list[dict]:
        nonlocal scorer
        comp = opt(row, "composition")
        if comp is None:
            raise DataError("empty composition")
        k = row_count(row, n)
        z = opt(row, "z")
        samples = gen.sample_composition(str(comp), n=k, spacegroup=opt(row, "spacegroup"),
                                         z=int(z) if z is not None else None, temperature=temperature,
                                         top_k=top_k or None, seed=seed + int(row.get("row_id", 0)))
        rows = sample_rows(samples, bonds=bonds)
        if energy != "none":
            from domains.crystals.energy import make_scorer, score_structures
            from domains.crystals.readers import structure_from_cif

            if scorer is None:
                scorer = make_scorer(energy)
            structs, idx = [], []
            for i, r in enumerate(rows):
                try:
                    structs.append(structure_from_cif(r["cif"], rebuild=False))
                    idx.append(i)
                except DataError:
                    pass
            col = f"{energy}_formation_energy_per_atom"
            for r in rows:
                r[col] = float("nan")
            if structs:
                vals, errs = score_structures(structs, scorer)
                for i, v, e in zip(idx, vals, errs):
                    rows[i][col] = v
                    if e:
                        rows[i]["energy_error"] = e
        for r in rows:
            r.pop("index", None)
        return rows

    return fn
