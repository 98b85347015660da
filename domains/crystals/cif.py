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


# Names that lived here before the module was split. Modules not yet moved to the new homes
# (generate.py, bondfit.py, sampling.py) still import them from here; nothing else should.
_MOVED = {
    "MAX_Z": "composition", "parse_composition": "composition", "cell_formula": "composition",
    "atom_props_block": "canonical", "round_numbers": "canonical", "canonicalize": "canonical",
    "canonical_cif": "canonical", "structure_problem": "canonical",
    "spacegroup": "symmetry", "symmetry_operations": "symmetry", "standard_halls": "symmetry",
    "rebuild_symmetry": "symmetry", "quiet_spglib": "symmetry",
    "structure_from_cif": "readers", "read_inputs": "readers", "cif_file_texts": "readers",
    "frame_records": "readers", "cif_files_in": "readers",
    "canonicalize_records": "canon_cache", "load_canonical": "canon_cache", "cache_dir": "canon_cache",
    "reasons_table": "canon_cache", "dedup": "canon_cache",
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"domains.crystals.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
