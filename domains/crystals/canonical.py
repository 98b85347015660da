"""Canonical CIF text as CrystaLLM writes it, and the checks an input structure must pass first.

Canonical CIF (one per structure, ending in a newline; a corpus joins them with a
blank line): pymatgen's ``CifWriter(symprec=0.1)`` text (conventional cell,
symmetrized), comments and blank lines removed, the ``data_`` header replaced by
the cell composition in pymatgen's electronegativity order (``data_Na4Cl4``), the
symmetry loop reduced to ``x, y, z`` (rebuilt from the space group after
generation: :func:`domains.crystals.symmetry.rebuild_symmetry`), an atom-type block
(electronegativity, atomic radius, average ionic radius) inserted before the
space-group line, floats rounded to 4 decimals and runs of spaces collapsed to one.

Inputs that cannot be used are reported with a reason (``unparseable``,
``partial occupancy``, ``unknown element``, ``absurd cell``, ``overlapping atoms``,
``no symmetry``).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

from domains.crystals.cif import SG_KEY, cif_field, header_formula, spacegroup_of
from domains.crystals.composition import MAX_Z
from domains.crystals.readers import structure_from_cif
from domains.crystals.symmetry import quiet_spglib
from sciar.errors import DataError, describe

MAX_VOLUME_PER_ATOM = 1000.0  # A^3; the shipped corpus and the CDVAE splits stay under 150
CANON_VERSION = 1  # bump when the canonical text changes (invalidates caches)
SYMPREC = 0.1

# CrystaLLM's fallbacks for elements pymatgen lacks values for
_NOBLE_VDW = {"He": 1.40, "Ne": 1.54, "Ar": 1.88, "Kr": 2.02, "Xe": 2.16, "Rn": 2.20}
_ALLEN_X = {"He": 4.16, "Ne": 4.79, "Ar": 3.24}


def atom_props_block(comp) -> str:
    """CrystaLLM's atom-type loop (without trailing newline)."""
    def fmt(v):
        return f"{float(v): .4f}"

    def x(el):
        v = el.X
        if (v is None or math.isnan(v)) and str(el) in _ALLEN_X:
            return fmt(_ALLEN_X[str(el)])
        return fmt(0.0 if v is None or math.isnan(v) else v)

    def radius(el):
        r = el.atomic_radius
        if r is None:
            r = _NOBLE_VDW.get(str(el), 0.0)
        return fmt(r)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = [f"  {el}  {x(el)}  {radius(el)}  {fmt(el.average_ionic_radius)}" for el in sorted(comp.elements)]
    head = ["loop_", " _atom_type_symbol", " _atom_type_electronegativity", " _atom_type_radius", " _atom_type_ionic_radius"]
    return re.sub(r"[ \t]+", " ", "\n".join(head + rows))


_FLOAT = re.compile(r"[-+]?\d*\.\d+([eE][-+]?\d+)?")


def round_numbers(text: str, places: int = 4) -> str:
    def rnd(m):
        s = m.group()
        if len(s.split(".")[1]) <= places:
            return s
        out = f"{round(float(s), places):.{places}f}"
        return "0." + "0" * places if out == "-0." + "0" * places else out

    return _FLOAT.sub(rnd, text)


def semisymmetrize(text: str) -> str:
    """Reduce the symmetry-operation loop to the identity."""
    return re.sub(r"(_symmetry_equiv_pos_as_xyz\n)(.*?)(?=\n(?:\S| \S)|\Z)", r"\1  1  'x, y, z'", text, flags=re.DOTALL)


def canonical_cif(structure, symprec: float = SYMPREC) -> str:
    """The canonical CIF text of an ordered pymatgen Structure."""
    from pymatgen.io.cif import CifWriter

    with warnings.catch_warnings(), quiet_spglib():
        warnings.simplefilter("ignore")
        raw = str(CifWriter(structure, symprec=symprec))
    lines = [ln for ln in raw.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    text = "\n".join(lines)
    m = re.search(r"^_chemical_formula_sum\s+(.+)$", text, flags=re.M)
    if not m:
        raise DataError("CifWriter wrote no _chemical_formula_sum")
    formula = m.group(1).replace("'", "").replace(" ", "")
    text = re.sub(r"^data_.*$", lambda _: f"data_{formula}", text, count=1, flags=re.M)
    text = semisymmetrize(text)
    from pymatgen.core import Composition

    block = atom_props_block(Composition(formula))
    i = text.index(SG_KEY)
    text = text[:i] + block + "\n" + text[i:]
    text = round_numbers(text)
    text = re.sub(r"[ \t]+", " ", text)
    return text.strip() + "\n"


def structure_problem(s) -> str | None:
    """Why a parsed structure cannot be used (None if it can)."""
    from pymatgen.core import Element

    if len(s) == 0:
        return "unparseable: no atoms"
    if not s.is_ordered:
        return "partial occupancy"
    for sp in s.composition.elements:
        sym = getattr(sp, "symbol", str(sp))
        if not Element.is_valid_symbol(sym) or getattr(sp, "Z", 0) <= 0:
            return f"unknown element {sym}"
        if Element(sym).Z > MAX_Z:
            return f"unknown element {sym} (beyond Pu)"
    lat = s.lattice
    if not all(0.5 <= x <= 1000 for x in lat.abc) or not all(10 <= a <= 170 for a in lat.angles):
        return f"absurd cell (a, b, c = {', '.join(f'{x:.3g}' for x in lat.abc)}; angles {', '.join(f'{a:.3g}' for a in lat.angles)})"
    if not lat.volume > 0.1 or lat.volume / len(s) < 1.0:
        return f"absurd cell (volume {lat.volume:.3g} for {len(s)} atoms)"
    if lat.volume / len(s) > MAX_VOLUME_PER_ATOM:
        return f"absurd cell ({lat.volume / len(s):.3g} A^3 per atom; solids hold under 150)"
    if len(s) > 1 and len(s) <= 500:
        import numpy as np

        d = s.distance_matrix
        np.fill_diagonal(d, np.inf)
        if d.min() < 0.5:
            return f"overlapping atoms ({d.min():.2f} A apart)"
    return None


def _strip_oxidation(s):
    if any(hasattr(sp, "oxi_state") for sp in s.composition.elements):
        s = s.copy()
        s.remove_oxidation_states()
    return s


@dataclass
class Canonical:
    cif: str
    formula: str  # cell composition as in the data_ header
    reduced_formula: str
    spacegroup: str
    sg_number: int
    n_atoms: int
    volume_per_fu: float


def canonicalize(item) -> Canonical:
    """Canonicalise CIF text or a Structure; DataError with the reason if it cannot be used."""
    from pymatgen.core import Structure

    if isinstance(item, Structure):
        s = item
    else:
        s = structure_from_cif(str(item), rebuild=False)
    s = _strip_oxidation(s)
    why = structure_problem(s)
    if why:
        raise DataError(why)
    try:
        text = canonical_cif(s)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"no symmetry: {describe(e)}") from None
    formula = header_formula(text)
    sg = spacegroup_of(text)
    num = cif_field(text, "_symmetry_Int_Tables_number")
    from pymatgen.core import Composition

    comp = Composition(formula)
    red, z = comp.get_reduced_formula_and_factor()
    vol = float(cif_field(text, "_cell_volume"))
    return Canonical(text, formula, red, sg, int(num), int(comp.num_atoms), vol / z)
