"""Space groups and their symmetry operations: pymatgen's groups kept alive, spglib's tables, the
symmetry loop of a canonical CIF rebuilt from its space group."""

from __future__ import annotations

import functools
import os
import re
from contextlib import contextmanager

from domains.crystals.cif import spacegroup_of
from sciar.errors import DataError


@contextmanager
def quiet_spglib():
    """spglib prints to stderr when it cannot refine a tight symmetry; where that is expected and handled, it should not."""
    before = os.environ.get("SPGLIB_WARNING")
    os.environ["SPGLIB_WARNING"] = "OFF"
    try:
        yield
    finally:
        if before is None:
            del os.environ["SPGLIB_WARNING"]
        else:
            os.environ["SPGLIB_WARNING"] = before


@functools.lru_cache(maxsize=None)
def spacegroup(symbol: str):
    """pymatgen's SpaceGroup for a symbol, kept alive: pymatgen's own instance cache is weak, so
    without a reference every CIF rebuilds the group's operations (about a second for cubic groups)."""
    import warnings

    from pymatgen.symmetry.groups import SpaceGroup

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return SpaceGroup(symbol)
    except Exception:
        raise DataError(f"unknown space group {symbol!r}") from None


@functools.lru_cache(maxsize=1)
def standard_halls() -> dict[str, int]:
    """Short symbol -> spglib Hall number of the standard setting (the first of its number), in number order."""
    import spglib

    first: dict[int, tuple[str, int]] = {}
    for hall in range(1, 531):
        t = spglib.get_spacegroup_type(hall)
        first.setdefault(t.number, (t.international_short, hall))
    return dict(first[n] for n in sorted(first))


@functools.lru_cache(maxsize=256)
def symmetry_operations(symbol: str):
    """(rotations [n, 3, 3], translations [n, 3]) of a space group's operations, identity first.

    From spglib's database for the 230 standard symbols: the same set as pymatgen's
    ``SpaceGroup(symbol).symmetry_ops`` (tested), which builds them by closure and takes a second for Fm-3m;
    other symbols (full symbols, other settings) go through pymatgen. DataError for an unknown symbol.
    """
    import numpy as np

    hall = standard_halls().get(symbol)
    if hall is not None:
        import spglib

        d = spglib.get_symmetry_from_database(hall)
        return d["rotations"].astype(float), np.asarray(d["translations"], float)
    ops = spacegroup(symbol).symmetry_ops
    return np.array([o.rotation_matrix for o in ops]), np.array([o.translation_vector for o in ops])


@functools.lru_cache(maxsize=None)
def _symmetry_rows(symbol: str) -> str:
    from pymatgen.core.operations import SymmOp

    rots, trans = symmetry_operations(symbol)
    return "\n".join(f" {i} '{SymmOp.from_rotation_and_translation(r, t).as_xyz_str()}'"
                     for i, (r, t) in enumerate(zip(rots, trans), 1))


def rebuild_symmetry(text: str) -> str:
    """Replace the identity-only symmetry loop by the full operations of the stated space group."""
    sg = spacegroup_of(text)
    if not sg:
        raise DataError("no space group in the CIF")
    rows = _symmetry_rows(sg)
    pat = re.compile(r"(_symmetry_equiv_pos_as_xyz\n)[ \t]*1[ \t]+'x, y, z'")
    if not pat.search(text):
        raise DataError("the CIF has no identity-only symmetry loop to rebuild")
    return pat.sub(lambda m: m.group(1) + rows, text, count=1)
