"""Enlarge a corpus by chemically plausible element substitution on its real structures.

Hautier et al.'s data-mined substitution probabilities (pymatgen's
``SubstitutionPredictor``, Inorg. Chem. 2011) propose, for each prototype whose
oxidation states can be guessed, new sets of ions; a proposal is kept when it is
charge balanced, changes at least one element and gives a formula the corpus does
not hold. The most probable proposals (at most ``per_prototype`` from one
prototype) are built by substituting the elements and rescaling the volume by the
atoms' radii (as template retrieval does), then relaxed with CHGNet (cell
included) and labelled with CHGNet's formation energy per atom against its own
elemental references (:mod:`domains.crystals.energy`). Every generated row is
marked ``generated=True`` with its parent, substitution and probability; a
candidate that fails (relaxation blows up, no elemental reference, canonicalisation
fails) keeps its row with the reason.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import pandas as pd

from domains.crystals.readers import structure_from_cif
from sciar.errors import SciarError


@lru_cache(maxsize=4)
def _predictor(threshold: float):
    from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionPredictor

    return SubstitutionPredictor(threshold=threshold)


def _ions(structure):
    """The structure's species with the most likely oxidation states, or None if none balance."""
    from pymatgen.core import Species

    comp = structure.composition
    try:
        guesses = comp.oxi_state_guesses(max_sites=-1)  # on the reduced formula
    except ValueError:
        return None
    if not guesses:
        return None
    return [Species(str(el), guesses[0][str(el)]) for el in comp.elements]


def propose(corpus: pd.DataFrame, n: int, threshold: float = 0.01, per_prototype: int = 2, max_atoms: int = 20,
            elements: set[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """The ``n`` most probable new structures by ionic substitution on the corpus' prototypes (not relaxed).

    ``elements``: if given, proposals must use only these (e.g. those with an energy reference).
    Columns: ``parent``, ``substitution`` (``Na->K, Cl->Br``), ``probability``, ``structure``.
    """
    from tqdm.auto import tqdm

    from domains.crystals.retrieval import RetrievalIndex

    if n < 1:
        raise SciarError("the number of substituted structures must be at least 1")
    if "canonical" not in corpus.columns:
        raise SciarError("substitution needs a canonical corpus table (a 'canonical' column)")
    sp = _predictor(threshold)
    allowed = set(sp.p.species)
    known = set(corpus["reduced_formula"]) if "reduced_formula" in corpus.columns else set()
    rows = corpus[(corpus["n_atoms"] <= max_atoms)] if "n_atoms" in corpus.columns else corpus
    found: list[dict] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rec in tqdm(list(rows.itertuples()), desc="substitutions", disable=not progress):
            try:
                s = structure_from_cif(rec.canonical)
            except SciarError:
                continue
            if not 2 <= len(s.composition.elements) <= 4:
                continue
            ions = _ions(s)
            if ions is None or not set(ions) <= allowed:
                continue
            counts = {str(sp_.element): s.composition[sp_.element] for sp_ in ions}
            mine = []
            for pred in sp.list_prediction(ions, to_this_composition=False):
                sub = pred["substitutions"]
                new_els = [str(b.element) for b in sub.values()]
                if len(set(new_els)) != len(new_els) or all(a == b for a, b in sub.items()):
                    continue
                if elements is not None and not set(new_els) <= elements:
                    continue
                if abs(sum(b.oxi_state * counts[str(a.element)] for a, b in sub.items())) > 1e-6:
                    continue  # not charge balanced
                mapping = {str(a.element): str(b.element) for a, b in sub.items()}
                mine.append((pred["probability"], mapping))
            mine.sort(key=lambda x: -x[0])
            taken = 0
            for prob, mapping in mine:
                new = RetrievalIndex._substitute(s, mapping)
                formula = new.composition.reduced_formula
                if formula in known:
                    continue
                known.add(formula)
                found.append({"parent": rec.id, "substitution": ", ".join(f"{a}->{b}" for a, b in mapping.items() if a != b),
                              "probability": float(prob), "structure": new})
                taken += 1
                if taken >= per_prototype:
                    break
    found.sort(key=lambda r: -r["probability"])
    return pd.DataFrame(found[:n], columns=["parent", "substitution", "probability", "structure"])


def relax_and_label(cands: pd.DataFrame, relax: bool = True, progress: bool = True) -> pd.DataFrame:
    """CHGNet relaxation and formation energy for each proposal; canonical CIF rows marked ``generated``.

    One structure at a time so that a failure stays on its row (``reason``) and the rest goes on.
    """
    from tqdm.auto import tqdm

    from domains.crystals.canonical import canonicalize
    from domains.crystals.energy import CHGNetScorer

    scorer = CHGNetScorer(relax=relax)
    out = []
    for rec in tqdm(list(cands.itertuples()), desc="relax" if relax else "label", disable=not progress):
        row = {"id": f"sub-{rec.parent}-{rec.structure.composition.reduced_formula}", "source": "substitution",
               "parent": rec.parent, "substitution": rec.substitution, "probability": rec.probability,
               "generated": True, "relaxed": bool(relax), "formation_energy_per_atom": math.nan,
               "energy_per_atom": math.nan, "reason": None}
        e = scorer([rec.structure])[0]
        if scorer.errors[0]:
            row["reason"] = scorer.errors[0]
            out.append(row)
            continue
        final = scorer.relaxed[0] if relax else rec.structure
        row.update(formation_energy_per_atom=e, energy_per_atom=scorer.energies[0])
        try:
            c = canonicalize(final)
        except SciarError as err:
            row["reason"] = f"after relaxation: {err}"
            out.append(row)
            continue
        row.update(canonical=c.cif, formula=c.formula, reduced_formula=c.reduced_formula, spacegroup=c.spacegroup,
                   sg_number=c.sg_number, n_atoms=c.n_atoms, volume_per_fu=c.volume_per_fu)
        out.append(row)
    return pd.DataFrame(out)


def enlarge(corpus: pd.DataFrame, n: int, threshold: float = 0.01, per_prototype: int = 2, max_atoms: int = 20,
            relax: bool = True, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(corpus with the new rows appended, every generated candidate with its outcome)."""
    from domains.crystals.energy import _dcdft_names

    cands = propose(corpus, n, threshold, per_prototype, max_atoms, set(_dcdft_names()), progress)
    labelled = relax_and_label(cands, relax, progress) if len(cands) else pd.DataFrame()
    if labelled.empty:
        return corpus, labelled
    good = labelled[labelled["reason"].isna()].drop(columns=["reason"])
    good = good[~good["reduced_formula"].isin(set(corpus["reduced_formula"]))]
    good = good.drop_duplicates(["reduced_formula", "sg_number"])
    if "licence" in corpus.columns:
        good = good.assign(licence="generated by sciar from " + good["parent"].astype(str))
    return pd.concat([corpus, good], ignore_index=True), labelled
