"""Wyckoff geometry and snapping: orbits of a point under a space group's operations, the Wyckoff positions
of each multiplicity (pyxtal), the distance checks the grammar's site steering shares, and
:func:`snap_to_wyckoff`, which moves each generated site onto a position of its stated multiplicity clear
of the sites before it.
"""

from __future__ import annotations

import re
from functools import lru_cache

from domains.crystals.cif import SG_KEY, round_numbers, symmetry_operations

# closest approach of two sites, in expected bond lengths, that the grammar's site steering and the snapping
# keep: the bond-length check rejects below 0.68; a little margin for the snap that follows
CLOSEST = 0.72


def fmt4(v: float) -> str:
    return round_numbers(f"{v:.8f}")


SITE_ROW = re.compile(r"^ ([A-Z][a-z]?) (\S+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+) (\S+)$", flags=re.M)  # an atom-site row


def _orbit_size(p, rots, trans, tol=1e-3) -> int:
    import numpy as np

    imgs = (rots @ p + trans) % 1.0
    imgs[np.abs(imgs - 1.0) < tol] = 0.0
    keep = []
    for q in imgs:
        if not any(np.all(np.abs((q - k + 0.5) % 1.0 - 0.5) < tol) for k in keep):
            keep.append(q)
    return len(keep)


@lru_cache(maxsize=256)
def _wyckoff_forms(number: int) -> dict:
    """Multiplicity -> [(R, t)] for every orbit member of every Wyckoff position (pyxtal, spglib's setting,
    which is the one pymatgen's SpaceGroup uses to rebuild the operations)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pyxtal.symmetry import Group

        g = Group(number, style="spglib")
    out: dict[int, list] = {}
    for wp in g.Wyckoff_positions:
        out.setdefault(int(wp.multiplicity), []).extend((op.rotation_matrix, op.translation_vector) for op in wp.ops)
    return out


@lru_cache(maxsize=256)
def _wyckoff_slots(number: int) -> tuple[set, dict]:
    """The multiplicities that have a Wyckoff position with free parameters; for the others, each fixed
    position's orbit points (fractional, in [0, 1))."""
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pyxtal.symmetry import Group

        g = Group(number, style="spglib")
    free, fixed = set(), {}
    for wp in g.Wyckoff_positions:
        m = int(wp.multiplicity)
        if wp.get_dof() > 0:
            free.add(m)
        else:
            fixed.setdefault(m, []).append(np.array([op.translation_vector for op in wp.ops]) % 1.0)
    return free, {m: orbits for m, orbits in fixed.items() if m not in free}


def _orbit(p, rots, trans):
    return (rots @ p + trans) % 1.0


def _nearest(a, b, matrix):
    """For each fractional point of ``a``: its smallest periodic distance (angstrom) to the points of ``b``."""
    import numpy as np

    d = a[:, None, :] - b[None, :, :]
    d -= np.round(d)
    return np.linalg.norm(d @ matrix, axis=-1).min(axis=1)


def _clear_points(pts, matrix, placed, thr, rots=None, trans=None, m=None, d_self=0.0, same=0.05):
    """For fractional points [n, 3]: is each at least ``thr`` [k] angstrom from every placed point [k, 3]
    (``placed`` holds whole orbits, so its images are too), and, given ``m``, is its orbit of m points
    (images within ``same`` angstrom being one) with distinct images at least ``d_self`` apart?"""
    import numpy as np

    ok = np.ones(len(pts), bool)
    if len(placed):
        d = pts[:, None, :] - placed[None]
        ok &= (np.linalg.norm((d - np.round(d)) @ matrix, axis=-1) >= thr[None]).all(axis=1)
    if m:
        d = (np.einsum("gij,nj->ngi", rots, pts) + trans[None]) % 1.0 - pts[:, None, :]  # to its images
        d = np.linalg.norm((d - np.round(d)) @ matrix, axis=-1)
        close = d < same
        ok &= (close.sum(axis=1) * m == len(rots)) & (close | (d >= d_self)).all(axis=1)
    return ok


def _min_dist(a, b, lattice) -> float:
    """Smallest periodic distance (angstrom) between two sets of fractional points."""
    import numpy as np

    if len(a) == 0 or len(b) == 0:
        return np.inf
    return float(_nearest(a, b, lattice.matrix).min())


def snap_site(p, m: int, sg: str, lattice, placed=None, clash=0.5, el: str | None = None, reach: float = 1.2):
    """The nearest point to fractional ``p`` (in angstrom) lying on a Wyckoff position of multiplicity ``m``.

    Each orbit member of each such position is an affine subspace ``R u + t`` (mod lattice
    translations); ``p`` is projected onto every one (least squares in Cartesian space) and the
    closest projection whose orbit keeps the atoms ``placed`` so far at least ``clash`` angstrom
    away (one distance, or one per placed atom) is kept. If none does, the site moves along the
    free parameters of the nearest positions, up to ``reach`` angstrom, to the closest point that
    does (and, given its element ``el``, keeps its own images apart by ``CLOSEST`` times
    their bond length); failing that, the closest projection clear by 0.5 angstrom, else the closest.
    Returns (position, displacement), or (None, inf).
    """
    import numpy as np

    from domains.crystals.tokenizer import spacegroup_symbols

    rots, trans = symmetry_operations(sg)
    p = np.asarray(p, float) % 1.0
    placed = np.zeros((0, 3)) if placed is None else placed
    thr = np.broadcast_to(np.asarray(clash, float), (len(placed),))

    def clear(q):
        return bool(_clear_points(q[None], lattice.matrix, placed, thr)[0])

    number = spacegroup_symbols().index(sg) + 1
    if _orbit_size(p, rots, trans) == m and clear(p):
        return _written_exactly(p, m, number, rots, trans), 0.0
    forms = _wyckoff_forms(number).get(int(m), [])
    LT = lattice.matrix.T  # cartesian = LT @ fractional
    cands = []
    for R, t in forms:
        M = LT @ R
        n = np.round(p - t)
        for _ in range(2):
            u = np.linalg.lstsq(M, LT @ (p - t - n), rcond=None)[0]
            q = R @ u + t + n
            n = n + np.round(p - q)
        # the free parameters at 4 decimals, so that the written coordinates keep the position's own
        # relations (x, 2x, ...) exactly: else a CIF reader makes near-duplicate images of the site
        u = np.round(u, 4)
        q = R @ u + t + n
        cands.append((float(np.linalg.norm(LT @ (q - p))), q % 1.0, R, t + n, u))
    if not cands:
        return None, np.inf
    cands.sort(key=lambda c: c[0])
    # a projection can land where the position degenerates (x = 0 on (x, 0, z)): its orbit is smaller
    cands = [c for c in cands if _orbit_size(c[1], rots, trans) == m] or cands
    # the nearest clear point: a projection, or a short move along the nearest positions' parameters
    best = next(((d, q) for d, q, *_ in cands if clear(q)), None)
    moved = _move_clear(p, m, cands[:3], lattice, rots, trans, placed, thr, el, min(reach, best[0]) if best else reach)
    best = moved if moved is not None and (best is None or moved[0] < best[0]) else best
    if best is not None:
        return _written_exactly(best[1], m, number, rots, trans), best[0]
    if _orbit_size(p, rots, trans) == m and _min_dist(_orbit(p, rots, trans), placed, lattice) >= 0.5:
        return _written_exactly(p, m, number, rots, trans), 0.0
    for d, q, *_ in cands:
        if _min_dist(_orbit(q, rots, trans), placed, lattice) >= 0.5:
            return _written_exactly(q, m, number, rots, trans), d
    return _written_exactly(cands[0][1], m, number, rots, trans), cands[0][0]


def _move_clear(p, m, forms, lattice, rots, trans, placed, thr, el, reach):
    """(displacement, point): the closest point within ``reach`` angstrom of ``p`` on one of ``forms``
    (nearest projections first) whose orbit has m points, clear of the placed atoms by ``thr`` and
    of its own images by ``CLOSEST`` bond lengths; None if there is none."""
    import numpy as np

    from domains.crystals.validity import expected_bond

    d_self = expected_bond(el, el) if el else None
    d_self = CLOSEST * d_self if d_self else 0.5
    LT = lattice.matrix.T
    best = None
    for _, _, R, t, u in forms:
        free = np.flatnonzero(np.abs(R).sum(axis=0) > 0)
        if not len(free):
            continue
        steps = {1: np.linspace(-0.15, 0.15, 31), 2: np.linspace(-0.12, 0.12, 17)}.get(len(free), np.linspace(-0.09, 0.09, 7))
        grid = np.array(np.meshgrid(*[steps] * len(free))).reshape(len(free), -1).T
        U = np.repeat(u[None], len(grid), axis=0)
        U[:, free] += grid
        Q = U @ R.T + t  # [g, 3]
        disp = np.linalg.norm((Q - p) @ LT.T, axis=1)
        keep = disp <= min(reach, best[0] if best else reach)
        if not keep.any():
            continue
        Q, disp = Q[keep] % 1.0, disp[keep]
        ok = _clear_points(Q, lattice.matrix, placed, thr, rots, trans, m, d_self)
        if ok.any():
            i = int(np.argmin(np.where(ok, disp, np.inf)))
            if best is None or disp[i] < best[0]:
                best = (float(disp[i]), Q[i])
    return best


def _written_exactly(q, m: int, number: int, rots, trans):
    """An orbit member of ``q`` whose 4-decimal coordinates still give an orbit of exactly ``m`` points.

    A CIF reader rebuilds the orbit from the written coordinates and merges only images closer than 1e-4
    (after rounding 0.3333 to 1/3 and the like); a representative written as (2x + 1/3, x, z) breaks
    the relation between its images by about 1e-4, which leaves near-duplicate atoms. So each orbit
    member is written through its own Wyckoff form with the free parameters at 4 decimals, ``q``'s
    own first, and the first whose orbit comes out clean is kept (``q`` if none does).
    """
    import numpy as np

    def parsed(r):
        r = r.copy()
        for k in range(12):  # the reader's ideal values (multiples of 1/12 cover 1/3, 1/6, 1/4, 1/2 ...)
            r[np.abs(r - k / 12) < 1e-4] = k / 12
        return r

    def clean(r):
        orb = _orbit(parsed(r), rots, trans)
        d = np.abs((orb[:, None, :] - orb[None, :, :] + 0.5) % 1.0 - 0.5).max(axis=-1)
        return bool(((d < 1e-6) | (d > 1e-3)).all()) and len(orb) == m * int((d[0] < 1e-6).sum())

    q = np.round(np.asarray(q, float) % 1.0, 4) % 1.0
    if clean(q):
        return q
    imgs = _orbit(q, rots, trans)
    shifts = np.array(np.meshgrid(*[[-1, 0, 1]] * 3)).reshape(3, -1).T.astype(float)
    cands = []
    for R, t in _wyckoff_forms(number).get(int(m), []):
        # the image of q lying on this form (with every nearby lattice translation) and its parameters
        pts = (np.round(imgs - t)[:, None, :] + shifts[None]).reshape(-1, 3)
        pts = np.repeat(imgs, len(shifts), axis=0) - t - pts
        u = np.linalg.lstsq(R, pts.T, rcond=None)[0].T
        on = np.abs(pts - u @ R.T).max(axis=1) < 2e-3  # on it to within the written decimals
        if not on.any():
            continue
        u = np.round(u[on], 4)
        off = np.abs(((u @ R.T + t) % 1.0 - q + 0.5) % 1.0 - 0.5).max(axis=1)
        # the parameters one last decimal either way too: the reader also rounds 0.4999 to 1/2
        r = (u[int(np.argmin(off))] + 1e-4 * shifts) @ R.T + t
        off = np.abs((r - q + 0.5) % 1.0 - 0.5).sum(axis=1)
        cands += [(float(o), x) for o, x in zip(off, r % 1.0)]
    for _, r in sorted(cands, key=lambda c: c[0]):
        r = np.round(r, 4) % 1.0
        if clean(r):
            return r
    return q


def snap_to_wyckoff(text: str) -> tuple[str, int]:
    """Snap every site of a generated CIF onto a position of its stated multiplicity, clear of the
    sites before it by ``CLOSEST`` bond lengths where a short move allows (``snap_site``).

    Returns (text, number of sites moved). Sites that cannot be snapped are left as generated.
    """
    from pymatgen.core import Lattice

    from domains.crystals.cif import cif_field

    try:
        sg = cif_field(text, SG_KEY)
        lat = Lattice.from_parameters(*(float(cif_field(text, f"_cell_{k}")) for k in (
            "length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")))
        symmetry_operations(sg)
    except Exception:
        return text, 0
    import numpy as np

    from domains.crystals.validity import expected_bond

    moved = 0
    rots, trans = symmetry_operations(sg)
    placed, placed_el = np.zeros((0, 3)), []

    def fix(m):
        nonlocal moved, placed
        el, label, mult, x, y, z, occ = m.group(1, 2, 3, 4, 5, 6, 7)
        p = (float(x), float(y), float(z))
        # as far from each placed atom as the site steering keeps new sites while decoding (0.5 A without radii)
        bond = [expected_bond(el, e) for e in placed_el]
        clash = np.array([CLOSEST * b if b else 0.5 for b in bond])
        q, d = snap_site(p, int(mult), sg, lat, placed, clash=clash, el=el)
        if q is None:
            return m.group(0)
        orbit = _orbit(np.asarray(q), rots, trans)
        placed = np.vstack([placed, orbit])
        placed_el.extend([el] * len(orbit))
        new = tuple(fmt4(v % 1.0) if round(v % 1.0, 4) < 1.0 else "0.0000" for v in q)
        if new != (x, y, z) and d > 0:  # not counted: a last-decimal correction of a site already in place
            moved += 1
        return f" {el} {label} {mult} {new[0]} {new[1]} {new[2]} {occ}"

    out = SITE_ROW.sub(fix, text)
    return out, moved
