"""Prompts for a composition: CrystaLLM's ``data_<cell composition>\\n`` header, or with a space group that
line, the atom-type block and ``_symmetry_space_group_name_H-M <SG>\\n``; the formula-unit counts tried for a
reduced formula; and which space groups' Wyckoff multiplicities can hold a composition's atom counts.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from domains.crystals.canonical import atom_props_block
from domains.crystals.cif import SG_KEY
from domains.crystals.composition import cell_formula, parse_composition
from sciar.errors import SciarError

# formula-unit counts tried for a reduced formula; CrystaLLM also tries 6 and 8, but this model's
# cells of Z 6 and 8 are valid about a third as often as those of Z 1-4 (benchmarks/crystals_z.py):
# pass --z or a cell composition for them
Z_CHOICES = (1, 2, 3, 4)
MAX_ATOMS = 400
# the most tokens one site row takes (" Na Na12 192 0.1234 0.1234 0.1234 1.0\n"): a CIF's length grows by about
# this much per symmetry-distinct site, so the context bounds the distinct sites, not the atoms
SITE_ROW_TOKENS = 36


@lru_cache(maxsize=1)
def wyckoff_multiplicities() -> dict[int, list[int]]:
    """Conventional-cell Wyckoff multiplicities per space-group number (pymatgen's table)."""
    import importlib.util

    # located without importing pymatgen.analysis (slow to import)
    root = Path(list(importlib.util.find_spec("pymatgen").submodule_search_locations)[0])
    path = root / "analysis" / "prototypes" / "wyckoff-position-multiplicities.json.gz"
    with gzip.open(path, "rt") as f:
        d = json.load(f)
    return {int(k): sorted(set(v.values())) for k, v in d.items() if v}


def representable(n: int, mults: list[int]) -> bool:
    """Whether n atoms can fill sites of these multiplicities (each used any number of times)."""
    ok = [True] + [False] * n
    for i in range(1, n + 1):
        ok[i] = any(m <= i and ok[i - m] for m in mults)
    return ok[n]


@lru_cache(maxsize=None)
def fewest_orbits(count: int, mults: tuple) -> int:
    """The fewest Wyckoff orbits (sites) of these multiplicities that hold ``count`` atoms (a large number if none)."""
    best = [0] + [10**9] * count
    for i in range(1, count + 1):
        best[i] = min([best[i - m] + 1 for m in mults if m <= i] or [10**9])
    return best[count]


def fewest_sites(counts, number: int) -> int:
    """The fewest symmetry-distinct sites a cell of these atom counts needs in space group ``number``."""
    mults = tuple(wyckoff_multiplicities().get(number, []))
    return sum(fewest_orbits(int(c), mults) for c in counts) if mults else 10**9


def spacegroup_fits(number: int, counts) -> bool:
    mults = wyckoff_multiplicities().get(number, [])
    return bool(mults) and all(representable(int(c), mults) for c in counts)


def fitting_spacegroups(counts) -> list[str]:
    """The space-group symbols whose Wyckoff multiplicities can hold these atom counts (in number order)."""
    from domains.crystals.tokenizer import spacegroup_symbols

    return [s for n, s in enumerate(spacegroup_symbols(), 1) if spacegroup_fits(n, counts)]


def crystal_system(number: int) -> str:
    for hi, name in ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"),
                     (167, "trigonal"), (194, "hexagonal"), (230, "cubic")):
        if number <= hi:
            return name
    raise SciarError(f"space group number {number} outside 1 to 230")


@dataclass
class Prompt:
    text: str
    composition: object  # pymatgen Composition of the cell
    formula: str
    spacegroup: str | None


def make_prompt(composition, spacegroup: str | None = None) -> Prompt:
    comp = parse_composition(composition) if isinstance(composition, str) else composition
    formula = cell_formula(comp)
    text = f"data_{formula}\n"
    sg = None
    if spacegroup:
        from domains.crystals.tokenizer import normalise_spacegroup, spacegroup_symbols

        sg = normalise_spacegroup(spacegroup)
        num = spacegroup_symbols().index(sg) + 1
        if not spacegroup_fits(num, comp.values()):
            raise SciarError(f"space group {sg} cannot hold {formula}: its Wyckoff multiplicities "
                             f"{wyckoff_multiplicities()[num]} do not add up to the atom counts")
        text += atom_props_block(comp) + f"\n{SG_KEY} {sg}\n"
    return Prompt(text, comp, formula, sg)


def prompts_for(composition: str, spacegroup: str | None = None, z: int | None = None) -> list[Prompt]:
    """Prompts for a user's composition: as given if it is not reduced (``Na2Cl2``), if every count is
    written (``Sr1Ti1O3``, as in a ``data_`` header) or ``z`` is set; a reduced formula written the
    usual way (``NaCl``, ``SrTiO3``) gives one prompt per formula-unit count Z that fits."""
    comp = parse_composition(composition)
    red, factor = comp.get_reduced_composition_and_factor()
    # every count written (Sr1Ti1O3, as in a data_ header): a cell composition, taken as given
    explicit = bool(re.fullmatch(r"(?:[A-Z][a-z]?\d+\s*)+", str(composition).strip()))
    if z is not None:
        if z < 1:
            raise SciarError("--z must be at least 1")
        zs = [z]
        comp = red * z
    elif factor > 1 or explicit:
        return [make_prompt(comp, spacegroup)]
    else:
        zs = [zz for zz in Z_CHOICES if red.num_atoms * zz <= MAX_ATOMS]
    out, errors = [], []
    for zz in zs:
        try:
            out.append(make_prompt(red * zz, spacegroup))
        except SciarError as e:
            errors.append(str(e))
    if not out:
        raise SciarError(errors[0] if errors else f"no formula-unit count fits {composition}")
    return out
