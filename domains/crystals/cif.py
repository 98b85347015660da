"""CIF text: its fields, and why a text is not a usable CIF.

The canonical form (CrystaLLM's) is :mod:`domains.crystals.canonical`; symmetry operations and space
groups :mod:`domains.crystals.symmetry`; reading files, tables and texts into structures
:mod:`domains.crystals.readers`; canonicalising many inputs at once, cached, :mod:`domains.crystals.canon_cache`.
"""

from __future__ import annotations

import re
import warnings

SG_KEY = "_symmetry_space_group_name_H-M"


def cif_field(text: str, key: str) -> str | None:
    m = re.search(rf"^{re.escape(key)}[ \t]+(.+?)[ \t]*$", text, flags=re.M)
    return m.group(1).strip().strip("'\"") if m else None


def header_formula(text: str) -> str | None:
    """The name of the CIF's first data block (comments may come before it: pymatgen writes one)."""
    m = re.search(r"^[ \t]*data_(\S*)", text, flags=re.M)
    return m.group(1) if m else None


def spacegroup_of(text: str) -> str | None:
    return cif_field(text, SG_KEY)


_CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha", "_cell_angle_beta",
              "_cell_angle_gamma")


def cif_syntax_problem(text: str) -> str | None:
    """Why pymatgen could not build a structure from ``text``, in words (its own messages, such as
    'integer modulo by zero' for a truncated loop, do not say); None if no reason is found."""
    from pymatgen.io.cif import CifFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = list(CifFile.from_str(text).data.values())
    except ZeroDivisionError:
        return "a loop_ names columns but holds no values (is the file cut short?)"
    except ValueError as e:
        if m := re.search(r"not a multiple of n=(\d+)", str(e)):
            return f"a loop_'s values do not fill its {m.group(1)} columns (is the file cut short?)"
        return None
    if not blocks:
        return "no data_ block: this is not CIF text"
    data = blocks[0].data
    for key in _CELL_KEYS:
        if key not in data:
            return f"{key} is missing"
        try:
            float(re.sub(r"\(\d+\)$", "", str(data[key])))
        except ValueError:
            return f"{key} is not a number ({str(data[key])[:20]!r})"
    if not any(k in data for k in ("_atom_site_fract_x", "_atom_site_Cartn_x")):
        return "no atom sites (_atom_site_fract_x/y/z or _atom_site_Cartn_x/y/z)"
    return None


def unknown_element(s) -> str | None:
    """The first symbol of ``s`` that is no element: pymatgen reads one such as 'Qq' as a dummy species,
    with only a warning."""
    from pymatgen.core.periodic_table import DummySpecies

    return next((sp.symbol for sp in s.composition.elements if isinstance(sp, DummySpecies)), None)
