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

    def __init__(self, structures: list, ids: list[str] | None = None, n_atoms: list[int] | None = None):
        self.structures = structures
        self.ids = ids or [str(i) for i in range(len(structures))]
        # atoms in each template's canonical (conventional) cell: prompts name that cell, and a
        # training file may hold the same crystal in its primitive cell
        self.n_atoms = list(n_atoms) if n_atoms is not None else [len(s) for s in structures]
        self._votes: dict[tuple, list] = {}
        self.groups: dict[tuple, list[int]] = defaultdict(list)
        for i, s in enumerate(structures):
            self.groups[count_pattern(s.composition)].append(i)

    @classmethod
    def from_table(cls, df: pd.DataFrame, progress: bool = False) -> "RetrievalIndex":
        """From a table with a ``cif`` column (original structures) or canonical CIFs.

        With the ``n_atoms`` column of :func:`~domains.crystals.canon_cache.load_canonical`, templates are
        matched to a prompt by the atom count of their canonical cell.
        """
        from tqdm.auto import tqdm

        from domains.crystals.readers import structure_from_cif

        if "cif" not in df.columns and "canonical" not in df.columns:
            raise DataError("a retrieval index needs a table with a 'cif' or 'canonical' column")
        structs, ids, counts = [], [], []
        ok = df[df["reason"].isna()] if "reason" in df.columns else df
        id_col = ok["id"] if "id" in ok.columns else pd.Series(range(len(ok))).astype(str)
        n_col = ok["n_atoms"] if "n_atoms" in ok.columns else [None] * len(ok)
        none = [None] * len(ok)
        # per row: the original CIF where there is one, else the canonical text (a canonical corpus
        # table joined with CIF splits has only the latter on its rows)
        cifs = ok["cif"] if "cif" in ok.columns else none
        canon = ok["canonical"] if "canonical" in ok.columns else none
        for cif, can, i, n in tqdm(zip(cifs, canon, id_col, n_col), total=len(ok), desc="index", disable=not progress):
            rebuild = not isinstance(cif, str)
            text = can if rebuild else cif
            if not isinstance(text, str):
                continue
            try:
                s = structure_from_cif(text, rebuild=rebuild)
            except DataError:
                continue
            structs.append(s)
            ids.append(str(i))
            counts.append(int(n) if n is not None and n == n else len(s))
        if not structs:
            raise DataError("no readable structures for the retrieval index")
        return cls(structs, ids, counts)

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
            out.append((score, abs(self.n_atoms[i] - composition.num_atoms), i, mapping))
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
        from domains.crystals.matching import matcher as default_matcher

        sm = matcher or default_matcher()
        cands = self.candidates(composition, max(pool, 4 * n))
        # a pool of the same templates under the same substitution clusters the same way (every
        # pure-carbon prompt of one cell size draws the same pool): cluster it once
        key = (tuple((c.template, tuple(sorted(c.mapping.items()))) for c in cands[:pool]), tau,
               sm.ltol, sm.stol, sm.angle_tol)
        if key not in self._votes:
            self._votes[key] = vote(cands[:pool], sm, tau)
        clusters = [(cands[j], w) for j, w in self._votes[key]]
        ranked = [c for c, _ in sorted(clusters, key=lambda cv: -cv[1])]
        if len(ranked) < n:
            ranked += dedupe(ranked + cands[pool:], n, sm)[len(ranked):]
        return ranked[:n]


INDEX_VERSION = 2  # 2: rows of canonical tables joined with CIF tables are no longer dropped


def load_index(paths, progress: bool = False) -> RetrievalIndex:
    """The retrieval index of structure inputs (corpus tables, CDVAE splits, CIF folders).

    Parsing thousands of CIFs takes a while (16 s for the shipped corpus), so the parsed
    structures of file inputs are cached by content under ``build/crystals`` as gzipped
    pymatgen JSON (no pickle); a cache that cannot be read is rebuilt.
    """
    import gzip
    import json
    from pathlib import Path

    from pymatgen.core import Structure

    from domains.crystals.canon_cache import cache_dir, load_canonical
    from sciar.io import atomic_path, fingerprint

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files = [Path(p) for p in paths if Path(p).is_file()]
    key = fingerprint([*files, *(str(Path(p).resolve()) for p in paths if not Path(p).is_file()),
                       f"index-v{INDEX_VERSION}"]) if len(files) == len(paths) else None
    cached = cache_dir() / f"index-{key}.json.gz" if key else None
    if cached is not None and cached.is_file():
        try:
            with gzip.open(cached, "rt") as f:
                d = json.load(f)
            structs = [Structure.from_dict(x) for x in d["structures"]]
            return RetrievalIndex(structs, d["ids"], d["n_atoms"])
        except (OSError, ValueError, KeyError):
            pass  # rebuilt below
    index = RetrievalIndex.from_table(load_canonical(paths, progress=progress), progress=progress)
    if cached is not None:
        try:
            with atomic_path(cached) as tmp, gzip.open(tmp, "wt") as f:
                json.dump({"ids": index.ids, "n_atoms": index.n_atoms,
                           "structures": [st.as_dict() for st in index.structures]}, f)
        except OSError:
            pass  # a read-only tree still works, only slower
    return index


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


def cluster(structures: list, sm) -> list[list[int]]:
    """Greedy clustering in order with the matcher: member indices per cluster, the first is its representative."""
    clusters: list[list[int]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for j, s in enumerate(structures):
            for cl in clusters:
                try:
                    if sm.fit(structures[cl[0]], s):
                        cl.append(j)
                        break
                except Exception:
                    continue
            else:
                clusters.append([j])
    return clusters


def clusters_by_size(structures: list, sm, weights: list[float] | None = None) -> list[list[int]]:
    """:func:`cluster`, the largest cluster first (its members' summed ``weights``, else their count;
    ties: the one seen first)."""
    size = len if weights is None else (lambda cl: round(sum(weights[j] for j in cl), 9))
    return sorted(cluster(structures, sm), key=lambda cl: (-size(cl), cl[0]))


def vote(cands: list, sm, tau: float) -> list[tuple[int, float]]:
    """Cluster candidates (in similarity order) with the matcher: [(index of the representative, summed weight)]."""
    return [(cl[0], float(sum(np.exp(-cands[j].score / tau) for j in cl)))
            for cl in cluster([c.structure for c in cands], sm)]
