"""The CIF grammar: a constraint (:mod:`sciar.decode.constraints`) that keeps a generated CIF consistent.

Per row, :func:`cif_grammar` (a Python generator that yields the allowed next tokens and receives the token
taken; :func:`cif_constraint` wraps it in the core's protocol) forces what the composition determines
(atom-type block, formulas, Z, the space group number, the cell volume, loop headers, site labels,
occupancies), keeps the lattice parameters consistent with the crystal system of the chosen space group,
only lets space groups whose Wyckoff multiplicities can hold the composition be chosen, and only lets a
site take an element and a multiplicity that the remaining atom counts allow. :class:`WyckoffSlots` keeps
a site off a fixed Wyckoff position already taken, :class:`SiteClash` steers a site's z coordinate clear
of the sites placed before it and of its own images. The model chooses the space group, the lattice, the
sites and their coordinates.
"""

from __future__ import annotations

import math

from domains.crystals.canonical import atom_props_block
from domains.crystals.cif import SG_KEY
from domains.crystals.symmetry import symmetry_operations
from domains.crystals.prompts import (
    SITE_ROW_TOKENS, Prompt, crystal_system, fewest_orbits, fewest_sites, fitting_spacegroups, representable,
    wyckoff_multiplicities)
from domains.crystals.wyckoff import CLOSEST, _clear_points, _orbit, _wyckoff_slots, fmt4

SITE_HEADER = ("loop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n 1 'x, y, z'\n"
               "loop_\n _atom_site_type_symbol\n _atom_site_label\n _atom_site_symmetry_multiplicity\n"
               " _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n _atom_site_occupancy\n")


def cell_volume(a, b, c, al, be, ga) -> float:
    ca, cb, cg = (math.cos(math.radians(x)) for x in (al, be, ga))
    return a * b * c * math.sqrt(max(0.0, 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg))


class Vocab:
    """Token ids the grammar needs, from the CIF tokenizer."""

    def __init__(self, tok):
        self.tok = tok
        self.digit = {d: tok.token_id(d, "digit") for d in "0123456789"}
        self.dot = tok.token_id(".", "symbol")
        self.nl = tok.token_id("\n", "symbol")
        self.element = {e: i for e, i in tok._ids["element"].items()}
        self.sg = dict(tok._ids["spacegroup"])
        self.sg_by_id = {i: s for s, i in self.sg.items()}
        self.id_to_digit = {i: d for d, i in self.digit.items()}

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)


def _force(v: Vocab, text: str):
    for i in v.encode(text):
        got = yield [i]
        if got != i:
            raise RuntimeError("grammar: a forced token was not taken")


def _number(v: Vocab, int_digits: tuple[int, int], lead: list[str] | None = None, decimals=None):
    """Free decimal ``\\d{lo,hi}\\.\\d{4}``; returns the text. ``lead`` limits the first digit;
    ``decimals(text so far) -> digits`` the next decimal digits (None: any)."""
    lo, hi = int_digits
    s = ""
    while True:
        n = len(s)
        allowed = []
        if n < hi:
            digs = lead if (n == 0 and lead) else list("0123456789")
            if n == 1 and s == "0":
                digs = []  # no leading zeros
            allowed += [v.digit[d] for d in digs]
        if n >= lo:
            allowed.append(v.dot)
        got = yield allowed
        if got == v.dot:
            break
        s += v.id_to_digit[got]
    s += "."
    for _ in range(4):
        digs = decimals(s) if decimals is not None else None
        got = yield [v.digit[d] for d in digs] if digs else list(v.digit.values())
        s += v.id_to_digit[got]
    return s


def _choose_int(v: Vocab, options: list[int]):
    """A free integer from ``options``, digit by digit; returns it."""
    strs = [str(o) for o in options]
    s = ""
    while True:
        nxt = sorted({x[len(s)] for x in strs if x.startswith(s) and len(x) > len(s)})
        allowed = [v.digit[d] for d in nxt]
        if s in strs:
            allowed.append(None)  # may end here: the caller forces the separator
        if allowed == [None]:
            return int(s)
        ids = [a for a in allowed if a is not None]
        got = yield ids + ([v.tok.token_id(" ", "symbol")] if None in allowed else [])
        if got in v.id_to_digit:
            s += v.id_to_digit[got]
        else:
            return int(s), got  # the separator was taken already


class SiteClash:
    """Keeps a generated site's z coordinate from putting it closer to the sites already placed, or to
    its own symmetry images, than ``CLOSEST`` times their expected bond length, and from giving its
    orbit another size than the multiplicity it states: too-short bonds and sites that overlap their
    own images are what most often makes a generated structure invalid."""

    CLOSEST = CLOSEST  # in expected bond lengths (shared with the snapping)
    SAME = 0.3  # images closer than this (angstrom) are one point that the snap will merge

    def __init__(self, sg: str, a, b, c, alpha, beta, gamma):
        from pymatgen.core import Lattice

        self.rots, self.trans = symmetry_operations(sg)
        self.matrix = Lattice.from_parameters(a, b, c, alpha, beta, gamma).matrix
        self.frac: list = []  # (element, orbit [k, 3])

    def place(self, el: str, xyz):
        import numpy as np

        self.frac.append((el, _orbit(np.asarray(xyz, float), self.rots, self.trans)))

    def _ok(self, el: str, pts, m: int | None = None):
        """For candidate points [n, 3]: does none come too close to a placed site? (The operations are
        isometries, so a point's distance to a placed orbit is also that of each of its images.) With
        ``m``: is the point's orbit also of size m, its distinct images far enough apart?"""
        import numpy as np

        from domains.crystals.validity import expected_bond

        placed = np.concatenate([o for _, o in self.frac]) if self.frac else np.zeros((0, 3))
        thr = np.concatenate([np.full(len(o), self.CLOSEST * (expected_bond(el, other) or 0.0))
                              for other, o in self.frac]) if self.frac else np.zeros(0)
        d0 = expected_bond(el, el)
        return _clear_points(pts, self.matrix, placed, thr, self.rots, self.trans, m if d0 else None,
                             self.CLOSEST * (d0 or 0.0), same=self.SAME)

    def z_digits(self, el: str, xy, text: str, m: int | None = None) -> list[str] | None:
        """The next decimal digits of z ("0." or "0.d" so far) that leave room for a site clear of the placed
        ones and (with its multiplicity ``m``) of its own images; None (no restriction) past the second
        decimal or where every digit fails."""
        import numpy as np

        done = text[2:]
        if (not self.frac and not m) or len(done) > 1:
            return None
        base = float("0." + done) if done else 0.0
        step = 0.1 ** (len(done) + 1)
        sub = np.arange(10) * step / 10 + step / 20 if not done else np.array([step / 2])
        zs = base + np.arange(10)[:, None] * step + sub[None, :]  # [digit, points within its interval]
        pts = np.column_stack([np.full(zs.size, xy[0]), np.full(zs.size, xy[1]), zs.ravel()])
        ok = self._ok(el, pts, m).reshape(zs.shape).any(axis=1)
        return [str(d) for d in range(10) if ok[d]] or None


class WyckoffSlots:
    """Which Wyckoff positions are still free: a position with free parameters holds any number of sites,
    one without (a fixed point orbit, such as 3a in R-3m) holds one. Keeps a site from restating a
    fixed position already taken, and spells out the coordinates of an untaken one."""

    def __init__(self, number: int):
        self.free, self.fixed = _wyckoff_slots(number)
        self.used: set = set()  # (multiplicity, index) of fixed positions taken

    def available(self, m: int) -> bool:
        return m in self.free or any((m, i) not in self.used for i in range(len(self.fixed.get(m, []))))

    def points(self, m: int) -> list[tuple[str, str, str]] | None:
        """The coordinate strings a site of multiplicity m may take; None where it may take any."""
        if m in self.free:
            return None
        return [tuple(fmt4(v) if round(v, 4) < 1.0 else "0.0000" for v in q)
                for i, orbit in enumerate(self.fixed.get(m, [])) if (m, i) not in self.used for q in orbit]

    def take(self, m: int, xyz):
        """Mark the fixed position the site at ``xyz`` occupies (only multiplicities without a free one)."""
        import numpy as np

        if m in self.free or not self.fixed.get(m):
            return
        p = np.asarray(xyz, float)
        dist = [np.abs((orbit - p + 0.5) % 1.0 - 0.5).max(axis=1).min() for orbit in self.fixed[m]]
        self.used.add((m, int(np.argmin(dist))))

    @staticmethod
    def digits(points, done: tuple, text: str) -> list[str] | None:
        """Next digits of coordinate ``len(done)`` (text so far, "0." or longer) among ``points``."""
        k = len(done)
        nxt = sorted({q[k][len(text)] for q in points if q[:k] == done and q[k].startswith(text)})
        return nxt or None


def header_tokens(v: Vocab, comp) -> int:
    """The most tokens between the space-group token and the first site row (lattice, formulas, volume, loop
    headers), with every free number at its longest."""
    red, z = comp.get_reduced_formula_and_factor()
    text = ("\n" + "".join(f"_cell_length_{k} 999.9999\n" for k in "abc")
            + "".join(f"_cell_angle_{k} 179.9999\n" for k in ("alpha", "beta", "gamma"))
            + f"_symmetry_Int_Tables_number 230\n_chemical_formula_structural {red}\n"
            f"_chemical_formula_sum '{comp.formula}'\n_cell_volume 999999999.9999\n"
            f"_cell_formula_units_Z {int(round(z))}\n" + SITE_HEADER)
    return len(v.encode(text))


def cif_grammar(v: Vocab, prompt: Prompt, block: int | None = None):
    """Generator: yields lists of allowed token ids, receives the token taken each step.

    ``block`` (the model's context length, prompt included): only space groups, and site multiplicities, that
    leave room in it for the fewest sites that can still hold the remaining atoms are allowed (one site row
    takes at most ``SITE_ROW_TOKENS``), so that a large cell's CIF ends inside the context; where no choice
    leaves room, the choice is left free.
    """
    taken = [len(v.encode(prompt.text))]  # tokens in the context so far

    def counted(g):
        allowed = next(g)
        while True:
            got = yield allowed
            taken[0] += 1
            try:
                allowed = g.send(got)
            except StopIteration:
                return

    def rows_left(after: int = 0) -> int:  # site rows that still fit, ``after`` more tokens taken first
        return 10**9 if block is None else (block - taken[0] - after - 1) // SITE_ROW_TOKENS  # 1: the closing \n

    yield from counted(_cif_grammar(v, prompt, rows_left))


def _cif_grammar(v: Vocab, prompt: Prompt, rows_left):
    from domains.crystals.tokenizer import spacegroup_symbols

    comp = prompt.composition
    counts = {str(el): int(round(n)) for el, n in comp.items()}
    if prompt.spacegroup is None:
        yield from _force(v, atom_props_block(comp) + f"\n{SG_KEY} ")
        syms = fitting_spacegroups(counts.values())
        rows = rows_left(1 + header_tokens(v, comp))
        room = [s for s in syms if fewest_sites(counts.values(), spacegroup_symbols().index(s) + 1) <= rows]
        fits = [v.sg[s] for s in room or syms]
        got = yield fits
        sg = v.sg_by_id[got]
        yield from _force(v, "\n")
    else:
        sg = prompt.spacegroup
    num = spacegroup_symbols().index(sg) + 1
    system = crystal_system(num)
    # lattice: free where the crystal system leaves it free, copied where it ties it
    vals = {}
    for key in ("a", "b", "c"):
        yield from _force(v, f"_cell_length_{key} ")
        tied = ((key == "b" and system in ("cubic", "tetragonal", "trigonal", "hexagonal"))
                or (key == "c" and system == "cubic"))
        if tied:
            vals[key] = vals["a"]
            yield from _force(v, vals[key])
        else:
            vals[key] = yield from _number(v, (1, 3))
        yield from _force(v, "\n")
    fixed = {"cubic": (90, 90, 90), "tetragonal": (90, 90, 90), "orthorhombic": (90, 90, 90),
             "trigonal": (90, 90, 120), "hexagonal": (90, 90, 120), "monoclinic": (90, None, 90)}.get(system, (None,) * 3)
    for key, f in zip(("alpha", "beta", "gamma"), fixed):
        yield from _force(v, f"_cell_angle_{key} ")
        if f is not None:
            vals[key] = f"{f:.4f}"
            yield from _force(v, vals[key])
        else:
            vals[key] = yield from _number(v, (2, 3), lead=list("123456789"))
        yield from _force(v, "\n")
    red, z = comp.get_reduced_formula_and_factor()
    vol = cell_volume(*(float(vals[k]) for k in ("a", "b", "c", "alpha", "beta", "gamma")))
    yield from _force(v, f"_symmetry_Int_Tables_number {num}\n_chemical_formula_structural {red}\n"
                         f"_chemical_formula_sum '{comp.formula}'\n_cell_volume {fmt4(vol)}\n"
                         f"_cell_formula_units_Z {int(round(z))}\n" + SITE_HEADER)
    mults = wyckoff_multiplicities()[num]
    remaining = dict(counts)
    label = 0
    sp = v.tok.token_id(" ", "symbol")
    clash = SiteClash(sg, *(float(vals[k]) for k in ("a", "b", "c", "alpha", "beta", "gamma")))
    slots = WyckoffSlots(num)
    while any(remaining.values()):
        rows = rows_left()
        yield from _force(v, " ")
        got = yield [v.element[e] for e, n in remaining.items() if n > 0]
        el = next(e for e, i in v.element.items() if i == got)
        yield from _force(v, f" {el}{label} ")
        label += 1
        left = remaining[el]
        options = [m for m in mults if m <= left and representable(left - m, mults)]
        # a fixed position already taken is no option (unless nothing else is)
        options = [m for m in options if slots.available(m)] or options
        # and each must leave room in the context for the fewest sites that hold the atoms still to place
        others = sum(fewest_orbits(n, tuple(mults)) for e, n in remaining.items() if e != el)
        options = [m for m in options if 1 + others + fewest_orbits(left - m, tuple(mults)) <= rows] or options
        res = yield from _choose_int(v, options)
        if isinstance(res, tuple):
            m, _ = res
        else:
            m = res
            yield from _force(v, " ")
        remaining[el] -= m
        points = slots.points(m)
        xyz, strs = [], []
        for k in range(3):
            if points:
                steer = (lambda t, done=tuple(strs): WyckoffSlots.digits(points, done, t))
            elif k == 2:
                steer = (lambda t, el=el, xy=tuple(xyz), m=m: clash.z_digits(el, xy, t, m))
            else:
                steer = None
            strs.append((yield from _number(v, (1, 1), lead=["0"], decimals=steer)))
            xyz.append(float(strs[-1]))
            yield from _force(v, " " if k < 2 else " 1.0\n")
        clash.place(el, xyz)
        slots.take(m, xyz)
    yield from _force(v, "\n")
    del sp


def cif_constraint(v: Vocab, prompt: Prompt, block: int | None = None):
    """The CIF grammar of ``prompt`` (in a context of ``block`` tokens) as a constraint
    (:mod:`sciar.decode.constraints`) for one row."""
    from sciar.decode.constraints import GeneratorConstraint

    return GeneratorConstraint(lambda: cif_grammar(v, prompt, block))
