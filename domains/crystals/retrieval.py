"""Template retrieval: a non-learning structure predictor, and the language model's yardstick.

Training cells are grouped by their per-element atom counts in the reduced formula
(``ABC3`` as the sorted counts ``(1, 1, 3)``). For a query composition, every
template of the same count pattern becomes a candidate by substituting elements of
equal count, paired in Mendeleev-number order; candidates are ranked by chemical
similarity (the summed Mendeleev-number distance of the substituted pairs, so the
same chemistry ranks first), their volume rescaled by the atoms' radii, and
duplicates removed with the structure matcher.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from sciar.errors import DataError


@lru_cache(maxsize=None)
def _mendeleev(sym: str) -> int:
    from pymatgen.core import Element

    return int(Element(sym).mendeleev_no or 0)


@lru_cache(maxsize=None)
def _radius(sym: str) -> float:
    from pymatgen.core import Element

    e = Element(sym)
    return float(e.atomic_radius or e.atomic_radius_calculated or 1.5)


def count_pattern(comp) -> tuple[int, ...]:
    red = comp.reduced_composition
    return tuple(sorted(int(round(v)) for v in red.values()))


def _by_count(comp) -> dict[int, list[str]]:
    """Reduced counts -> elements with that count, in Mendeleev order."""
    out = defaultdict(list)
    for el, n in comp.reduced_composition.items():
        out[int(round(n))].append(str(el))
    return {k: sorted(v, key=_mendeleev) for k, v in out.items()}


@dataclass
class Candidate:
    structure: object
    score: float  # lower is more similar
    template: str
    mapping: dict


class RetrievalIndex:
    """Training structures grouped by count pattern."""

    def __init__(self, structures: list, ids: list[str] | None = None):
        self.structures = structures
        self.ids = ids or [str(i) for i in range(len(structures))]
        self.groups: dict[tuple, list[int]] = defaultdict(list)
        for i, s in enumerate(structures):
            self.groups[count_pattern(s.composition)].append(i)

    @classmethod
    def from_table(cls, df: pd.DataFrame, progress: bool = False) -> "RetrievalIndex":
        """From a table with a ``cif`` column (original structures) or canonical CIFs."""
        from tqdm.auto import tqdm

        from domains.crystals.cif import structure_from_cif

        col = "cif" if "cif" in df.columns else "canonical"
        if col not in df.columns:
            raise DataError("a retrieval index needs a table with a 'cif' or 'canonical' column")
        structs, ids = [], []
        ok = df[df["reason"].isna()] if "reason" in df.columns else df
        id_col = ok["id"] if "id" in ok.columns else pd.Series(range(len(ok))).astype(str)
        for text, i in tqdm(zip(ok[col], id_col), total=len(ok), desc="index", disable=not progress):
            if not isinstance(text, str):
                continue
            try:
                structs.append(structure_from_cif(text, rebuild=col == "canonical"))
                ids.append(str(i))
            except DataError:
                continue
        if not structs:
            raise DataError("no readable structures for the retrieval index")
        return cls(structs, ids)

    def candidates(self, composition, max_candidates: int = 200) -> list[Candidate]:
        """Substituted templates for a composition, most similar first (not deduplicated)."""
        q = _by_count(composition)
        out = []
        for i in self.groups.get(count_pattern(composition), []):
            t = self.structures[i]
            tb = _by_count(t.composition)
            if sorted(tb) != sorted(q) or any(len(tb[k]) != len(q[k]) for k in q):
                continue
            mapping = {te: qe for k in q for te, qe in zip(tb[k], q[k])}
            score = sum(abs(_mendeleev(te) - _mendeleev(qe)) for te, qe in mapping.items())
            out.append((score, abs(len(t) - composition.num_atoms), i, mapping))
        out.sort(key=lambda x: (x[0], x[1], x[2]))
        res = []
        for score, _, i, mapping in out[:max_candidates]:
            res.append(Candidate(self._substitute(self.structures[i], mapping), float(score), self.ids[i], mapping))
        return res

    @staticmethod
    def _substitute(t, mapping):
        s = t.copy()
        if any(a != b for a, b in mapping.items()):
            s.replace_species({a: b for a, b in mapping.items() if a != b})
            old = sum(_radius(str(sp.specie)) ** 3 for sp in t)
            new = sum(_radius(str(sp.specie)) ** 3 for sp in s)
            if old > 0 and new > 0:
                s.scale_lattice(t.volume * new / old)
        return s

    def predict(self, composition, n: int = 20, matcher=None, pool: int = 40, tau: float = 4.0) -> list[Candidate]:
        """Up to ``n`` distinct candidates.

        The ``pool`` most similar templates are clustered with the matcher; clusters are ranked by
        their summed similarity weight ``exp(-distance / tau)`` (nearest neighbours vote), each
        represented by its most similar member; past the pool, plain similarity order.
        """
        from pymatgen.analysis.structure_matcher import StructureMatcher

        sm = matcher or StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
        cands = self.candidates(composition, max(pool, 4 * n))
        clusters = vote(cands[:pool], sm, tau)
        ranked = [c for c, _ in sorted(clusters, key=lambda cv: -cv[1])]
        if len(ranked) < n:
            ranked += dedupe(ranked + cands[pool:], n, sm)[len(ranked):]
        return ranked[:n]


def dedupe(cands: list, n: int, sm) -> list:
    """The first ``n`` candidates (in order) that the matcher finds distinct."""
    kept = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in cands:
            s = c.structure
            dup = False
            for k in kept:
                try:
                    if sm.fit(k.structure, s):
                        dup = True
                        break
                except Exception:
                    continue
            if not dup:
                kept.append(c)
                if len(kept) >= n:
                    break
    return kept


def vote(cands: list, sm, tau: float) -> list[tuple]:
    """Cluster candidates (in similarity order) with the matcher: [(representative, summed weight)]."""
    clusters: list[list] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in cands:
            w = float(np.exp(-c.score / tau))
            for cl in clusters:
                try:
                    if sm.fit(cl[0].structure, c.structure):
                        cl[1] += w
                        break
                except Exception:
                    continue
            else:
                clusters.append([c, w])
    return [(c, w) for c, w in clusters]


def volume_scaled(structure, target_per_atom: float):
    s = structure.copy()
    s.scale_lattice(target_per_atom * len(s))
    return s


__all__ = ["RetrievalIndex", "Candidate", "dedupe", "count_pattern", "np"]
