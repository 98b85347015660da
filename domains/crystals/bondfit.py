"""Fitting a generated structure to plausible bond lengths: scale its cell, or nudge its atoms under its symmetry.

The model's least certain outputs are the cell's size and the exact place of an atom on its
Wyckoff position; CrystaLLM's bond-length check (CrystalNN neighbours, lengths within (0.68, 1.32)
of the expected ones) fails most generated structures that fail anything. ``fit_bonds`` first
scales the cell by the one factor that brings every bond into range (:func:`scale_to_bonds`);
where none does, it moves the atoms a short way with ase's FIRE under ``FixSymmetry`` (so the
space group and the Wyckoff positions stay) on a penalty for bonds out of range
(:func:`nudge_atoms`), and keeps the result only if every check then passes.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.neighborlist import neighbor_list

from domains.crystals.cif import cif_field, structure_from_cif
from domains.crystals.wyckoff import SITE_ROW, fmt4, snap_to_wyckoff
from domains.crystals.validity import (BOND_TOLERANCE, H_BOND_FACTOR, MAX_CHECK_ATOMS, bond_ratios, bonds_in_range,
                                      check_cif, crystalnn_bonds, expected_bond, is_sensible, quiet_spglib)

INNER = 0.06  # aim this far inside the window (in ratio units) when nudging atoms
MIN_PERIOD = 1.5  # angstrom: no real crystal repeats itself at a shorter distance


def fit_bonds(text: str) -> tuple[str, float, bool]:
    """(text, cell scale, atoms nudged): ``text`` fitted to plausible bond lengths where that can be done."""
    scaled, f, ok = _scale(text)
    if ok:
        return scaled, f, False
    try:
        nudged = nudge_atoms(text)
    except Exception:
        return text, 1.0, False
    if nudged is None:
        return text, 1.0, False
    nudged, _ = snap_to_wyckoff(nudged)  # special positions written exactly again
    nudged, f = scale_to_bonds(nudged)
    if check_cif(nudged)["valid"]:
        return nudged, f, True
    return text, 1.0, False


def _checkable(text: str, st) -> bool:
    """Whether fitting is worth trying: a sensible cell of at most ``MAX_CHECK_ATOMS`` atoms, none of
    them within ``MIN_PERIOD`` of its own periodic image (a needle of a cell: no crystal, and
    CrystalNN's Voronoi search on it can run for minutes). Atoms too close to each other are let
    through: lengthening the shortest bonds often clears them."""
    if not (is_sensible(text) and len(st) <= MAX_CHECK_ATOMS):
        return False
    try:
        return min(st.lattice.get_niggli_reduced_lattice().abc) >= MIN_PERIOD
    except Exception:
        return False


def scale_to_bonds(text: str, margin: float = 0.02, rounds: int = 3, most: float = 1.5) -> tuple[str, float]:
    """Scale a CIF's cell isotropically so that every CrystalNN bond passes the bond-length check.

    A cell whose bonds are all somewhat too long, or whose shortest bond is too short while the rest
    have room, becomes valid by one scale factor (angles and fractional coordinates, hence the space
    group, unchanged). The factor is the one nearest 1 that puts every bond ratio ``margin`` inside
    the window (where none does, the one that lengthens the too-short bonds); CrystalNN's neighbours
    depend on absolute distances, so they are recomputed on the scaled cell, up to ``rounds`` times.
    A cell that would need more than ``most`` times or less than 1/``most`` times its lengths is not
    a size error: it is left. Returns (text, factor); (text, 1.0) when the bonds pass already or no
    factor makes them pass.
    """
    text, f, _ = _scale(text, margin, rounds, most)
    return text, f


def _scale(text: str, margin: float = 0.02, rounds: int = 3, most: float = 1.5) -> tuple[str, float, bool]:
    """:func:`scale_to_bonds`'s (text, factor) and whether the bonds now pass."""
    try:
        st = structure_from_cif(text)
    except Exception:
        return text, 1.0, False
    if not _checkable(text, st):
        return text, 1.0, False
    lo_r, hi_r = 1 - BOND_TOLERANCE, 1 + BOND_TOLERANCE
    total = 1.0
    for k in range(rounds + 1):
        try:
            r, h = bond_ratios(st)
            empty = not len(r)
            if empty:
                # CrystalNN sees no neighbour in a cell much too large; bring each site's nearest
                # neighbour to its expected length, where it will
                r, h = _nearest_ratios(st)
        except Exception:
            return text, 1.0, False
        if not empty and bonds_in_range(r, h).all():
            break
        if k == rounds:
            return text, 1.0, False
        if empty:
            f = 1.0 / float(np.median(r))
        else:
            heavy = r[~h]
            lo = lo_r / heavy.min() * (1 + margin) if len(heavy) else 0.0
            hi = min(hi_r / heavy.max() if len(heavy) else np.inf, H_BOND_FACTOR / r[h].max() if h.any() else np.inf)
            hi *= 1 - margin
            # no factor fits every bond: lengthen the too-short ones first; a larger cell can have
            # other neighbours (a squeezed cell's second shell), which the next round sees
            f = lo if lo > hi else min(max(1.0, lo), hi)
        total *= f
        if not 1 / most <= total <= most:
            return text, 1.0, False
        st = st.copy()
        st.scale_lattice(st.volume * f ** 3)
    if total == 1.0:
        return text, 1.0, True
    for key in ("a", "b", "c"):
        text = _set_field(text, f"_cell_length_{key}", float(cif_field(text, f"_cell_length_{key}")) * total)
    text = _set_field(text, "_cell_volume", float(cif_field(text, "_cell_volume")) * total ** 3)
    return text, total, True


def _nearest_ratios(st):
    """(ratio, to_h) of each site's nearest neighbour, as :func:`~domains.crystals.validity.bond_ratios` gives them."""
    d = st.distance_matrix + np.diag(np.full(len(st), np.inf)) if len(st) > 1 else None
    ratios, to_h = [], []
    for i, site in enumerate(st):
        if d is None:  # one atom: its own image along the shortest cell vector
            j, dist = 0, min(st.lattice.abc)
        else:
            j = int(np.argmin(d[i]))
            dist = d[i, j]
        a, b = site.specie.symbol, st[j].specie.symbol
        ratios.append(dist / expected_bond(a, b))
        to_h.append("H" in (a, b))
    return np.array(ratios, float), np.array(to_h, bool)


def _set_field(text: str, key: str, value: float) -> str:
    return re.sub(rf"^{key} \S+$", f"{key} {fmt4(value)}", text, count=1, flags=re.M)


def nudge_atoms(text: str, rounds: int = 2, steps: int = 300, reach: float = 1.5):
    """The CIF with its atoms moved under its space group's symmetry until no CrystalNN bond is out of
    range and no pair is too close, or None if they could not be (or the symmetry was lost).

    The penalty: for every pair closer than ``1 - tolerance + INNER`` expected lengths, and for every
    CrystalNN bond longer than ``1 + tolerance - INNER``, the squared excess (angstrom). ase's FIRE
    minimises it with ``FixSymmetry`` (forces symmetrised, so each atom stays on its Wyckoff
    position); the cell is kept. CrystalNN's bonds are taken anew for each of ``rounds``. No atom
    may move more than ``reach`` angstrom: a structure that needs more is not a near miss.
    """
    from ase.constraints import FixSymmetry
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    st = structure_from_cif(text)
    if not _checkable(text, st):
        return None
    atoms = AseAtomsAdaptor.get_atoms(st)
    with warnings.catch_warnings(), quiet_spglib():
        warnings.simplefilter("ignore")
        atoms.set_constraint(FixSymmetry(atoms, symprec=1e-3, adjust_positions=False, adjust_cell=False))
        n_ops = len(atoms.constraints[0].rotations)
        for _ in range(rounds):
            cur = AseAtomsAdaptor.get_structure(atoms)
            atoms.calc = BondPenalty(cur)
            FIRE(atoms, logfile=None).run(fmax=1e-3, steps=steps)
            if atoms.calc.results.get("energy", 1.0) < 1e-8:
                break
        moved = AseAtomsAdaptor.get_structure(atoms)
        if np.linalg.norm(atoms.get_positions() - st.cart_coords, axis=1).max() > reach:
            return None
        if len(SpacegroupAnalyzer(moved, symprec=1e-3).get_symmetry_operations()) < n_ops:
            return None
    return _rewrite_sites(text, st, moved)


class BondPenalty(Calculator):
    """An ase calculator: half the squared excess (angstrom) of too-close pairs and too-long CrystalNN bonds
    of ``structure`` (whose bonds, by index and image, are fixed when it is made)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, structure):
        super().__init__()
        syms = sorted({s.specie.symbol for s in structure})
        self.expected = {(a, b): expected_bond(a, b) or 2.0 for a in syms for b in syms}
        self.close = 1 - BOND_TOLERANCE + INNER  # pairs nearer than this many expected lengths push apart
        self.far = 1 + BOND_TOLERANCE - INNER  # bonds longer than this pull together
        self.cutoff = self.close * max(self.expected.values())
        # one atom per orbit, weighted by the orbit's size: FixSymmetry spreads the forces over the orbit
        self.bonds = [(i, j, img, e, times) for i, j, img, _, e, times in crystalnn_bonds(structure)
                      if "H" not in (structure[i].specie.symbol, structure[j].specie.symbol)]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        syms = self.atoms.get_chemical_symbols()
        pos, cell = self.atoms.get_positions(), self.atoms.get_cell().array
        forces = np.zeros_like(pos)
        energy = 0.0
        i, j, D = neighbor_list("ijD", self.atoms, self.cutoff)  # every pair both ways
        if len(i):
            e = np.array([self.expected[(syms[a], syms[b])] for a, b in zip(i, j)])
            d = np.linalg.norm(D, axis=1)
            x = self.close * e - d
            on = x > 0
            energy += 0.25 * float((x[on] ** 2).sum())
            g = (x[on] / np.maximum(d[on], 1e-9))[:, None] * D[on] / 2  # pushes j away from i
            np.add.at(forces, j[on], g)
            np.add.at(forces, i[on], -g)
        if self.bonds:
            bi, bj, img, e, w = (np.array(v) for v in zip(*self.bonds))
            D = pos[bj] + img @ cell - pos[bi]
            d = np.linalg.norm(D, axis=1)
            x = d - self.far * e
            on = x > 0
            energy += 0.25 * float((w[on] * x[on] ** 2).sum())  # CrystalNN lists each bond from both ends
            g = (w[on] * x[on] / np.maximum(d[on], 1e-9))[:, None] * D[on] / 2  # pulls j toward i
            np.add.at(forces, bj[on], -g)
            np.add.at(forces, bi[on], g)
        self.results = {"energy": energy, "forces": forces}


def _rewrite_sites(text: str, before, after) -> str:
    """``text`` with each site row's coordinates replaced by where its atom in ``before`` is in ``after``."""
    frac = before.frac_coords

    def row(m):
        p = np.array([float(v) for v in m.group(4, 5, 6)])
        d = np.abs((frac - p + 0.5) % 1.0 - 0.5).max(axis=1)
        k = int(np.argmin(d))
        q = after[k].frac_coords % 1.0
        new = [fmt4(v) if round(v, 4) < 1.0 else "0.0000" for v in q]
        return f" {m.group(1)} {m.group(2)} {m.group(3)} {new[0]} {new[1]} {new[2]} {m.group(7)}"

    return SITE_ROW.sub(row, text)
