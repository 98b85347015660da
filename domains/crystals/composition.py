"""Compositions as users write them (``Na4Cl4``, ``NaCl``, ``LiFePO4``), checked at the edge."""

from __future__ import annotations

import re
import warnings

from sciar.errors import SciarError, one_line

MAX_Z = 94  # H .. Pu: the elements of the CIF vocabulary and of the training data


def parse_composition(text: str):
    """A pymatgen Composition from user text (``Na2Cl2``, ``NaCl``, ``Na2 Cl2``), integer amounts only.

    Raises SciarError naming the problem: malformed formula or unknown element.
    """
    from pymatgen.core import Composition, Element

    s = str(text).strip()
    if not s:
        raise SciarError("empty composition")
    if not re.fullmatch(r"(?:[A-Z][a-z]?\d*(?:\.\d+)?\s*)+", s.replace("(", "").replace(")", "")):
        raise SciarError(f"malformed formula {text!r} (expected something like Na2Cl2 or LiFePO4)")
    for sym in re.findall(r"[A-Z][a-z]?", s):
        if not Element.is_valid_symbol(sym):
            raise SciarError(f"unknown element {sym!r} in {text!r}")
        if Element(sym).Z > MAX_Z:
            raise SciarError(f"element {sym!r} in {text!r} is beyond Pu: the models know H to Pu only")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            comp = Composition(s)
    except Exception as e:  # pymatgen raises ValueError / CompositionError
        raise SciarError(f"malformed formula {text!r}: {one_line(e)}") from None
    if comp.num_atoms <= 0:
        raise SciarError(f"composition {text!r} has no atoms")
    for el, amt in comp.items():
        if abs(amt - round(amt)) > 1e-6:
            raise SciarError(f"composition {text!r} has a fractional amount of {el} (integer atom counts only)")
    return comp


def cell_formula(comp) -> str:
    """``data_`` formula of a cell composition: electronegativity order, every count written (``Na4Cl4``)."""
    return comp.formula.replace(" ", "")
