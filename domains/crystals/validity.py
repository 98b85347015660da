"""Validity checks of generated CIFs, as CrystaLLM defines them, plus CDVAE's structural and SMACT checks.

- ``sensible``: cell lengths 0.5 to 1000 A, angles 10 to 170 degrees;
- ``formula``: the ``data_`` formula, ``_chemical_formula_sum`` and ``_chemical_formula_structural`` reduce alike;
- ``multiplicity``: per element, the summed site multiplicities equal the counts in ``_chemical_formula_sum``;
- ``bonds``: CrystalNN neighbours; expected length from average cationic + anionic radii when the
  electronegativity difference is at least 1.7, else the sum of atomic radii; a bond passes if its
  ratio lies in (0.68, 1.32) (bonds to H: below 2.5); the score (passing fraction) must be 1;
- ``spacegroup``: spglib (``SpacegroupAnalyzer(symprec=0.1)``) finds the stated space group;
- ``sites`` (ours): the structure built from the CIF has the stated composition;
- ``min_distance`` (CDVAE): no two atoms closer than 0.5 A and volume at least 0.1 A^3;
- ``smact`` (CDVAE): charge neutrality with the Pauling electronegativity test (alloys pass).

``valid`` is CrystaLLM's definition (sensible, formula, multiplicity, bonds, spacegroup) and
our structural checks (sites, min_distance); ``smact`` is recorded beside it and used by the
structure-prediction benchmark's filter, as CDVAE and CrystaLLM use it.

CIFs written by other programs (databases, ase, pymatgen without the canonical rewrite) carry some of
the fields only: each check is applied where the fields it reads exist and is ``None`` (not applicable)
where they do not, and a correct crystal passes every check that applies. The fields are read by name
(any loop column order, uncertainties such as ``5.6402(1)``); a formula sum per formula unit counts with
``_cell_formula_units_Z``; space groups are compared by number (``F m 3 m``, ``Fm-3m`` and 225 agree).
Files with partial occupancy or Cartesian coordinates are read (the latter with ase) and say so in
``kind``; the checks that need an ordered structure do not apply to a disordered one.
"""

from __future__ import annotations

import itertools
import re
import warnings
from functools import lru_cache
from math import gcd

import numpy as np
import pandas as pd

from domains.crystals.cif import SG_KEY, cif_field, cif_syntax_problem, header_formula, unknown_element
from domains.crystals.symmetry import quiet_spglib, rebuild_symmetry
from domains.crystals.tokenizer import normalise_spacegroup, spacegroup_symbols
from sciar.errors import SciarError, one_line

BOND_TOLERANCE = 0.32  # a bond passes if its length over the expected one lies in (1 - t, 1 + t)
H_BOND_FACTOR = 2.5  # bonds to H pass below this ratio
MAX_CHECK_ATOMS = 500  # larger structures get no space-group or bond check (they fail them)
CHECKS = ["sensible", "formula", "multiplicity", "sites", "min_distance", "bonds", "spacegroup"]


def is_sensible(text: str, lo=0.5, hi=1000.0, alo=10.0, ahi=170.0) -> bool:
    lengths = re.findall(r"_cell_length_[abc]\s+([\d\.]+)", text)
    angles = re.findall(r"_cell_angle_(?:alpha|beta|gamma)\s+([\d\.]+)", text)
    if len(lengths) != 3 or len(angles) != 3:
        return False
    try:
        return all(lo <= float(x) <= hi for x in lengths) and all(alo <= float(x) <= ahi for x in angles)
    except ValueError:
        return False


def _comp(s):
    from pymatgen.core import Composition

    return Composition(str(s).replace("'", ""))


def cif_items(text: str) -> dict:
    """The first data block's items by lower-case key (a loop's column as a list of strings), read by
    pymatgen's CIF reader; empty where the text is not CIF."""
    from pymatgen.io.cif import CifFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = list(CifFile.from_str(text).data.values())
    except Exception:
        return {}
    return {k.lower(): v for k, v in blocks[0].data.items()} if blocks else {}


def _column(items: dict, key: str) -> list[str] | None:
    v = items.get(key)
    return None if v is None else (list(v) if isinstance(v, list) else [v])


def cif_number(v) -> float:
    """A CIF number: ``5.6402(1)`` (a standard uncertainty in brackets) is 5.6402; ValueError if none."""
    return float(re.sub(r"\(\d*\)$", "", str(v).strip()))


def _counts_agree(have: dict, want, z) -> bool:
    """Whether atom counts per element equal a formula, or ``z`` times it (a formula per formula unit)."""
    have = {str(k): float(v) for k, v in have.items() if abs(float(v)) > 1e-9}
    want = {str(k): float(v) for k, v in want.as_dict().items()}
    scales = [1.0]
    try:
        scales.append(cif_number(z))
    except (TypeError, ValueError):
        pass
    return any(set(have) == set(want) and all(abs(have[e] - k * want[e]) < 1e-3 * max(1.0, have[e]) for e in want)
               for k in scales)


def _field_text(text: str, items: dict, key: str) -> str | None:
    v = items.get(key.lower()) if items else cif_field(text, key)
    return None if v is None or isinstance(v, list) else str(v)


def formula_check(text: str, items: dict | None = None) -> bool | None:
    """Whether the formulas a CIF states (its ``data_`` name where that is a formula, ``_chemical_formula_sum``
    and ``_chemical_formula_structural``) reduce alike; None where it states fewer than two. A block named
    by a database code (``data_9008566``, ``data_image0``) states no formula; a formula field that does not
    parse fails."""
    items = cif_items(text) if items is None else items
    comps = []
    head = header_formula(text)
    if head:
        try:
            comps.append(_comp(head).reduced_formula)
        except Exception:
            pass
    for key in ("_chemical_formula_sum", "_chemical_formula_structural"):
        v = _field_text(text, items, key)
        if v is None:
            continue
        try:
            comps.append(_comp(v).reduced_formula)
        except Exception:
            return False
    return None if len(comps) < 2 else len(set(comps)) == 1


def is_formula_consistent(text: str) -> bool:
    return formula_check(text) is True


def multiplicity_check(text: str, items: dict | None = None) -> bool | None:
    """Whether the site multiplicities (times occupancies), summed per element, equal ``_chemical_formula_sum``
    (or Z times it); None where the CIF lists no multiplicities or no formula sum."""
    items = cif_items(text) if items is None else items
    if not items:
        return False
    mult = _column(items, "_atom_site_symmetry_multiplicity")
    formula = _field_text(text, items, "_chemical_formula_sum")
    if mult is None or formula is None:
        return None
    symbols = _column(items, "_atom_site_type_symbol") or _column(items, "_atom_site_label") or []
    occupancy = _column(items, "_atom_site_occupancy") or ["1"] * len(mult)
    if not (len(symbols) == len(mult) == len(occupancy)):
        return False
    got: dict[str, float] = {}
    try:
        for sym, m, occ in zip(symbols, mult, occupancy):
            el = re.match(r"[A-Z][a-z]?", sym.strip()).group()
            got[el] = got.get(el, 0.0) + cif_number(m) * cif_number(occ)
        return bool(got) and _counts_agree(got, _comp(formula), items.get("_cell_formula_units_z"))
    except Exception:
        return False


def is_multiplicity_consistent(text: str) -> bool:
    return multiplicity_check(text) is True


def expected_bond(a: str, b: str) -> float | None:
    """CrystaLLM's expected bond length (angstrom): ionic radii if the electronegativities differ by 1.7 or
    more, else atomic radii (as the bond-length check uses); None where pymatgen has no radius."""
    return _expected_bond(*sorted((a, b)))


@lru_cache(maxsize=4096)
def _expected_bond(a: str, b: str) -> float | None:
    from pymatgen.core import Element

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ea, eb = Element(a), Element(b)
            if abs(ea.X - eb.X) >= 1.7:
                cat, an = (ea, eb) if ea.X < eb.X else (eb, ea)
                d = cat.average_cationic_radius + an.average_anionic_radius
            else:
                d = ea.atomic_radius + eb.atomic_radius
            return float(d) if d and d == d else None
        except Exception:
            return None


VORONOI_MAX_SITES = 5_000  # the most sites CrystalNN's widening Voronoi search may gather around one atom


class _SearchTooWide(Exception):
    pass


def _capped(structure):
    """``structure`` as a Structure whose sphere searches refuse radii that hold over
    VORONOI_MAX_SITES sites: CrystalNN's Voronoi search starts 7 A around an atom and, while its points
    do not make a cell (an atom alone, or on a line or plane of images), doubles the radius up to the
    cell's diagonal: minutes and many GiB in a thin 900 A cell of an undertrained model."""
    from pymatgen.core import Structure

    radius = max(14.0, (3 * VORONOI_MAX_SITES * structure.volume / len(structure) / (4 * np.pi)) ** (1 / 3))

    class CappedStructure(Structure):
        def get_sites_in_sphere(self, pt, r, *args, **kwargs):
            if r > radius:
                raise _SearchTooWide
            return super().get_sites_in_sphere(pt, r, *args, **kwargs)

    return CappedStructure.from_sites(structure.sites)


def crystalnn_bonds(structure) -> list[tuple[int, int, np.ndarray, float, float, int]]:
    """The CrystalNN bonds of one atom per symmetry orbit (spglib, 1e-3 A): (i, j, image of j, length,
    expected length, orbit size of i). Symmetry-equivalent atoms have the same bonds, so each counted
    once per atom of its orbit stands for running CrystalNN on every atom. As CrystaLLM, an atom's
    bonds to its own periodic images are left out, except where it has no other bond: an atom alone in its
    cell (ase's primitive fcc copper) is bonded only to its images, and CrystaLLM's rule would score that
    correct crystal 0. ValueError where pymatgen has no radius for a bond.

    Where CrystalNN's search would have to gather over VORONOI_MAX_SITES sites (no real crystal comes
    near), the atom's bonds are taken by distance instead (:func:`_distance_bonds`)."""
    from pymatgen.analysis.local_env import CrystalNN

    nn, out = CrystalNN(), []
    capped = _capped(structure)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, times in _orbit_representatives(structure):
            site = structure[i]
            try:
                infos = nn.get_nn_info(capped, i)
            except _SearchTooWide:
                out += [(*b, times) for b in _distance_bonds(structure, i)]
                continue
            if any(info["site_index"] != i for info in infos):
                infos = [info for info in infos if info["site_index"] != i]
            for info in infos:
                j, other = info["site_index"], info["site"]
                expected = expected_bond(site.specie.symbol, other.specie.symbol)
                if expected is None:
                    raise ValueError(f"no radius for the {site.specie.symbol}-{other.specie.symbol} bond")
                length = float(np.linalg.norm(other.coords - site.coords))  # to this image, not the nearest one
                out.append((i, j, np.array(info["image"], float), length, expected, times))
    return out


def _distance_bonds(structure, i: int):
    """Site i's bonds as (i, j, image, length, expected): the other sites within the longest plausible
    bond length of i to any element of the structure or, if none, its nearest other site (a bond too
    long whatever it is); none in a one-site cell, whose neighbours are all its own images."""
    sym, site = structure[i].specie.symbol, structure[i]
    longest = 0.0
    for e in sorted({sp.symbol for sp in structure.composition.elements}):
        expected = expected_bond(sym, e)
        if expected is None:
            raise ValueError(f"no radius for the {sym}-{e} bond")
        longest = max(longest, expected * (H_BOND_FACTOR if "H" in (sym, e) else 1 + BOND_TOLERANCE))
    close = [nb for nb in structure.get_neighbors(site, longest) if nb.index != i]
    if close:
        return [(i, nb.index, np.array(nb.image, float), float(nb.nn_distance),
                 expected_bond(sym, nb.specie.symbol)) for nb in close]
    others = [(site.distance_and_image(structure[j]), j) for j in range(len(structure)) if j != i]
    if not others:
        return []
    (length, image), j = min(others, key=lambda x: x[0][0])
    return [(i, j, np.array(image, float), float(length), expected_bond(sym, structure[j].specie.symbol))]


def bond_ratios(structure) -> tuple[np.ndarray, np.ndarray]:
    """(ratio, to_h) of every CrystalNN bond: its length over the expected length, and whether it is a bond to H."""
    ratios, to_h = [], []
    for i, j, _, length, expected, times in crystalnn_bonds(structure):
        ratios += [length / expected] * times
        to_h += ["H" in (structure[i].specie.symbol, structure[j].specie.symbol)] * times
    return np.array(ratios, float), np.array(to_h, bool)


def _orbit_representatives(structure) -> list[tuple[int, int]]:
    """(index, orbit size) of one atom per symmetry orbit; every atom alone where spglib fails."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with quiet_spglib():
            eq = np.asarray(SpacegroupAnalyzer(structure, symprec=1e-3).get_symmetry_dataset().equivalent_atoms)
    except Exception:
        return [(i, 1) for i in range(len(structure))]
    reps, counts = np.unique(eq, return_counts=True)
    return [(int(i), int(c)) for i, c in zip(reps, counts)]


def bond_score(structure, tolerance: float = BOND_TOLERANCE, h_factor: float = H_BOND_FACTOR) -> float:
    """CrystaLLM's bond-length reasonableness: the fraction of CrystalNN bonds of plausible length."""
    ratios, to_h = bond_ratios(structure)
    if not len(ratios):
        return 0.0
    return float(bonds_in_range(ratios, to_h, tolerance, h_factor).mean())


def bonds_in_range(ratios, to_h, tolerance: float = BOND_TOLERANCE, h_factor: float = H_BOND_FACTOR) -> np.ndarray:
    """Which bonds (ratios to their expected lengths, and whether each is to H) are of plausible length."""
    return np.where(to_h, ratios < h_factor, (1 - tolerance < ratios) & (ratios < 1 + tolerance))


def min_distance_ok(structure, cutoff: float = 0.5) -> bool:
    if structure.volume < 0.1:
        return False
    if len(structure) == 1:
        return min(structure.lattice.abc) >= cutoff
    d = structure.distance_matrix + np.diag([np.inf] * len(structure))
    return bool(d.min() >= cutoff)


@lru_cache(maxsize=4096)
def smact_valid(formula: str, use_pauling: bool = True, include_alloys: bool = True) -> bool:
    """CDVAE's SMACT validity of a composition (reduced counts)."""
    import smact
    from smact.screening import pauling_test

    comp = _comp(formula)
    syms = tuple(str(e) for e in comp.elements)
    counts = [int(round(comp[e])) for e in comp.elements]
    g = 0
    for c in counts:
        g = gcd(g, c)
    counts = [c // g for c in counts]
    if len(set(syms)) == 1:
        return True
    if include_alloys and all(s in smact.metals for s in syms):
        return True
    try:
        space = smact.element_dictionary(syms)
    except Exception:
        return False
    elems = [space[s] for s in syms]
    electronegs = [e.pauling_eneg for e in elems]
    threshold = max(counts)
    for ox in itertools.product(*[e.oxidation_states or [0] for e in elems]):
        res = smact.neutral_ratios(ox, stoichs=[(c,) for c in counts], threshold=threshold)
        # smact < 3 returned (exists, ratios); newer versions the list of ratios
        ok = res[0] if isinstance(res, tuple) and len(res) == 2 and isinstance(res[0], bool) else bool(res)
        if ok:
            if not use_pauling:
                return True
            try:
                if pauling_test(ox, electronegs):
                    return True
            except TypeError:
                return True
    return False


def declared_spacegroup(text: str, items: dict | None = None) -> str | None:
    """The space group a CIF states: its Hermann-Mauguin symbol (either spelling of the key), else its
    International Tables number; None where it states none."""
    items = cif_items(text) if items is None else items
    for key in (SG_KEY, "_space_group_name_H-M_alt", "_space_group_IT_number", "_symmetry_Int_Tables_number"):
        v = _field_text(text, items, key)
        if v not in (None, "?", "."):
            return v
    return None


def spacegroup_consistent(declared: str | None, detected: str) -> bool | None:
    """Whether the space group a CIF declares is the one spglib finds, compared by number (``P 21/c``,
    ``P2_1/c`` and 14 agree; ``F m 3 m``, the symbol before the bar was written, is Fm-3m); None where it
    declares none. A CIF that declares P1 declares no symmetry, and every structure has that: other
    generators and databases write P1 files of symmetric structures (every CDVAE split does)."""
    if declared is None:
        return None
    try:
        number = spacegroup_number(declared)
    except SciarError:
        return False
    return number == 1 or number == spacegroup_number(detected)


def spacegroup_number(symbol: str) -> int:
    """The International Tables number of a symbol in any spelling or setting, or of a number as text."""
    return spacegroup_symbols().index(normalise_spacegroup(symbol)) + 1  # the symbols in number order


def full_cif(text: str) -> str:
    """CIF text with the symmetry operations rebuilt when only the identity is listed."""
    if re.search(r"_symmetry_equiv_pos_as_xyz\n[ \t]*1[ \t]+'x, y, z'\n(?![ \t]*2[ \t])", text):
        return rebuild_symmetry(text)
    return text


def read_structure(text: str, items: dict):
    """(pymatgen Structure, kind) of a CIF text: pymatgen's reader (the symmetry rebuilt where only the
    identity is listed), or ase's for Cartesian coordinates, which pymatgen does not read. Raises where
    neither can."""
    from pymatgen.io.cif import CifParser

    if "_atom_site_cartn_x" in items and "_atom_site_fract_x" not in items:
        import io

        from ase.io import read
        from pymatgen.io.ase import AseAtomsAdaptor

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atoms = read(io.StringIO(text), format="cif")
        return AseAtomsAdaptor.get_structure(atoms), "Cartesian coordinates"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = CifParser.from_str(full_cif(text)).parse_structures(primitive=False)[0]
    return s, "ordered" if s.is_ordered else "partial occupancy"


def check_cif(text: str, bonds: bool = True) -> dict:
    """Every check on one CIF text: True (passed), False (failed) or None (does not apply: the CIF lacks the
    fields it reads, or the structure is disordered); ``reasons`` names the failed ones, ``kind`` says
    what was read (ordered, partial occupancy, Cartesian coordinates)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    r = {c: False for c in CHECKS}
    r.update(smact=False, bond_score=np.nan, detected_spacegroup=None, structure=None, error=None, kind=None)
    items = cif_items(text)
    r["sensible"] = is_sensible(text)
    r["formula"] = formula_check(text, items)
    r["multiplicity"] = multiplicity_check(text, items)
    try:
        s, r["kind"] = read_structure(text, items)
    except Exception as e:
        why = cif_syntax_problem(text) or one_line(e)
        r["error"] = f"unparseable: {why}"
        return _finish(r, bonds)
    if bad := unknown_element(s):
        r["error"] = f"unknown element {bad!r}"
        return _finish(r, bonds)
    r["structure"] = s
    formula = _field_text(text, items, "_chemical_formula_sum")
    if formula is None:
        r["sites"] = None
    else:
        try:
            r["sites"] = _counts_agree(s.composition.as_dict(), _comp(formula), items.get("_cell_formula_units_z"))
        except Exception:
            r["sites"] = False
    if not s.is_ordered:  # sites shared by several elements: no bonds, distances or space group of one atom each
        r.update(min_distance=None, spacegroup=None, smact=None, bonds=None)
        return _finish(r, bonds)
    r["min_distance"] = min_distance_ok(s)
    try:
        r["smact"] = smact_valid(s.composition.reduced_formula)
    except Exception:
        r["smact"] = False
    if r["sensible"] and r["min_distance"] and len(s) <= MAX_CHECK_ATOMS:
        try:
            with warnings.catch_warnings(), quiet_spglib():
                warnings.simplefilter("ignore")
                sg = SpacegroupAnalyzer(s, symprec=0.1).get_space_group_symbol()
            r["detected_spacegroup"] = sg
            r["spacegroup"] = spacegroup_consistent(declared_spacegroup(text, items), sg)
        except Exception:
            r["spacegroup"] = False
        if bonds:
            try:
                r["bond_score"] = bond_score(s)
            except Exception:
                r["bond_score"] = 0.0
            r["bonds"] = r["bond_score"] >= 1.0
    return _finish(r, bonds)


def _finish(r: dict, bonds: bool = True) -> dict:
    checks = [c for c in CHECKS if bonds or c != "bonds"]
    failed = [c for c in checks if r[c] is False]
    r["valid"] = not failed
    r["reasons"] = ", ".join(failed) if failed else ""
    return r


def evaluate_files(paths, bonds: bool = True, progress: bool = True) -> pd.DataFrame:
    """Check every .cif among files and folders (recursive); one row per data block (``path#i`` where a file
    holds several, its ``kind`` saying which block of how many)."""
    from tqdm.auto import tqdm

    from domains.crystals.readers import cif_file_texts

    items = cif_file_texts(paths)
    blocks: dict[str, int] = {}
    for name, _, _ in items:
        if "#" in name:
            blocks[name.rsplit("#", 1)[0]] = blocks.get(name.rsplit("#", 1)[0], 0) + 1
    rows = []
    for name, text, err in tqdm(items, desc="evaluate", unit="cif", disable=not progress):
        if text is None:
            rows.append({"file": name, "valid": False, "reasons": err, "error": err, "kind": "unreadable"})
            continue
        r = check_cif(text, bonds=bonds)
        r.pop("structure")
        if "#" in name and r["kind"]:
            path, i = name.rsplit("#", 1)
            r["kind"] += f", data block {int(i) + 1} of {blocks[path]}"
        if not bonds:  # not checked: no column, rather than a rate of 0
            del r["bonds"], r["bond_score"]
        rows.append({"file": name, **r})
    return pd.DataFrame(rows)


def rates(df: pd.DataFrame) -> dict:
    """The valid share over every row, and each check's pass rate over the rows it applies to (``<check>_on``:
    how many), so that a check that does not apply to a file neither passes nor fails it."""
    out = {"count": int(len(df)), "valid_rate": float(df["valid"].mean()) if len(df) else 0.0}
    for c in CHECKS + ["smact"]:
        if c in df.columns:
            applies = df[c].map(lambda v: isinstance(v, (bool, np.bool_)))
            out[f"{c}_rate"] = float(df.loc[applies, c].astype(bool).mean()) if applies.any() else float("nan")
            out[f"{c}_on"] = int(applies.sum())
    return out
