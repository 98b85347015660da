"""The CIF vocabulary: elements, digits, CIF keywords, punctuation, and one token per space group.

Space-group symbols form a group bound to the text ``_symmetry_space_group_name_H-M ``,
so ``P6_3/mmc`` there is one token and its letters elsewhere stay element tokens.
CIFs in a corpus are joined by a blank line: a generated CIF ends at ``\\n\\n``.
"""

from __future__ import annotations

import re
from functools import lru_cache

from sciar.tokenizer import VocabTokenizer

from domains.crystals.cif import SG_KEY
from domains.crystals.composition import MAX_Z
from domains.crystals.symmetry import standard_halls

KEYWORDS = [
    "data_", "loop_",
    "_atom_type_symbol", "_atom_type_electronegativity", "_atom_type_radius", "_atom_type_ionic_radius",
    SG_KEY,
    "_cell_length_a", "_cell_length_b", "_cell_length_c",
    "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma",
    "_symmetry_Int_Tables_number", "_chemical_formula_structural", "_chemical_formula_sum",
    "_cell_volume", "_cell_formula_units_Z",
    "_symmetry_equiv_pos_site_id", "_symmetry_equiv_pos_as_xyz",
    "_atom_site_type_symbol", "_atom_site_label", "_atom_site_symmetry_multiplicity",
    "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_occupancy",
]
SYMBOLS = ["x", "y", "z", ".", "(", ")", "+", "-", "/", "'", ",", " ", "\n"]
DIGITS = list("0123456789")


@lru_cache(maxsize=1)
def element_symbols() -> list[str]:
    from pymatgen.core import Element

    return [Element.from_Z(z).symbol for z in range(1, MAX_Z + 1)]


@lru_cache(maxsize=1)
def spacegroup_symbols() -> list[str]:
    """The 230 standard-setting short symbols, as spglib (and so pymatgen's CifWriter) writes them."""
    return list(standard_halls())


def cif_tokenizer() -> VocabTokenizer:
    return VocabTokenizer(
        [
            {"name": "spacegroup", "tokens": spacegroup_symbols(), "after": SG_KEY + " "},
            {"name": "keyword", "tokens": KEYWORDS},
            {"name": "element", "tokens": element_symbols()},
            {"name": "digit", "tokens": DIGITS},
            {"name": "symbol", "tokens": SYMBOLS},
        ]
    )


def spacegroup_of_number(number: int) -> str:
    return spacegroup_symbols()[number - 1]


def normalise_spacegroup(text: str) -> str:
    """A user's space-group symbol or number as the vocabulary's symbol; SciarError if unknown."""
    from sciar.errors import SciarError

    s = str(text).strip().replace(" ", "")
    if s.isdigit():
        n = int(s)
        if 1 <= n <= 230:
            return spacegroup_of_number(n)
        raise SciarError(f"unknown space group number {n} (1 to 230)")
    syms = spacegroup_symbols()
    if s in syms:
        return s
    loose = {x.replace("_", ""): x for x in syms}  # P 21/c, P21/c -> P2_1/c
    if s.replace("_", "") in loose:
        return loose[s.replace("_", "")]
    # the cubic symbols before the 1983 tables wrote no bar on the 3 (F m 3 m, Fd3m, Ia3d, Pm3)
    barred = re.sub(r"(?<=[a-z])3", "-3", s.replace("_", ""))
    if barred in loose:
        return loose[barred]
    try:
        from pymatgen.symmetry.groups import SpaceGroup
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return spacegroup_of_number(SpaceGroup(str(text).strip()).int_number)
    except Exception:
        raise SciarError(f"unknown space group {text!r} (use a Hermann-Mauguin symbol such as Fm-3m or P2_1/c, or a number)") from None
