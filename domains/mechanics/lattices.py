"""Periodic 2D beam lattices: the families, their parameters and ranges, and each unit cell's geometry.

A :class:`Lattice` is a unit cell (lattice vectors ``a1``, ``a2``), its nodes, and its walls as
edges between nodes, each with the cell offset of its far end and a wall thickness. Lengths are in
units of the family's wall length ``l = 1`` (for the honeycombs, the inclined wall), so ``t`` means
``t/l``. ``x1`` is perpendicular to the honeycombs' vertical walls, as in Gibson and Ashby (1997).

Families and what their parameters mean:

- ``honeycomb``: hexagonal honeycomb; ``theta`` the inclined walls' angle to x1 (degrees), ``h``
  the vertical wall's length h/l, ``t`` the wall thickness t/l;
- ``reentrant``: the same cell with ``theta`` negative (auxetic); its inward walls must not touch:
  ``h > 2 |sin theta| + t``;
- ``triangular``, ``square``, ``kagome``: walls of length 1 and thickness ``t``;
- ``hierarchical``: the first-order hierarchical honeycomb of Ajdari et al. (2012, Int. J. Solids
  Struct. 49, 1413-1419): every vertex of a regular honeycomb (theta = 30, h = l = 1) replaced by a
  regular hexagon of side ``gamma`` (gamma = b/a of the paper), all walls of thickness ``t``.

The relative density ``rho`` is the area fraction of the walls taken as the points within t/2 of
their centre lines (so overlaps at the nodes count once); ``rho_sum`` is the first-order sum
``sum(l_i t_i) / A`` that the stretching closed forms are exact in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sciar.errors import SciarError


@dataclass(frozen=True)
class Param:
    name: str
    lo: float
    hi: float
    default: float | None  # None: must be given
    doc: str


@dataclass
class Lattice:
    """A unit cell: ``edges[k] = (i, j)`` joins node i to node j shifted by ``shifts[k] @ [a1, a2]``."""

    a1: np.ndarray
    a2: np.ndarray
    nodes: np.ndarray  # (n, 2)
    edges: np.ndarray  # (m, 2) int
    shifts: np.ndarray  # (m, 2) int
    thickness: np.ndarray  # (m,)
    family: str = ""
    params: dict = field(default_factory=dict)

    @property
    def area(self) -> float:
        return float(abs(self.a1[0] * self.a2[1] - self.a1[1] * self.a2[0]))

    def edge_vectors(self) -> np.ndarray:
        """Centre-line vectors from each edge's first node to its (shifted) second node."""
        far = self.nodes[self.edges[:, 1]] + self.shifts[:, :1] * self.a1 + self.shifts[:, 1:] * self.a2
        return far - self.nodes[self.edges[:, 0]]

    @property
    def lengths(self) -> np.ndarray:
        return np.linalg.norm(self.edge_vectors(), axis=1)

    @property
    def rho_sum(self) -> float:
        """First-order density: walls' length times thickness over the cell area (overlaps counted twice)."""
        return float(np.sum(self.lengths * self.thickness) / self.area)

    def relative_density(self) -> float:
        """Area fraction of the points within t/2 of a wall's centre line, overlaps counted once (shapely)."""
        from shapely.affinity import translate
        from shapely.geometry import LineString, Polygon
        from shapely.ops import unary_union

        start = self.nodes[self.edges[:, 0]]
        end = start + self.edge_vectors()
        walls = [LineString([p, q]).buffer(t / 2, quad_segs=8) for p, q, t in zip(start, end, self.thickness)]
        cell_walls = unary_union(walls)
        tiles = [translate(cell_walls, *(i * self.a1 + j * self.a2)) for i in (-1, 0, 1) for j in (-1, 0, 1)]
        o = -0.5 * (self.a1 + self.a2) + self.nodes.mean(axis=0)
        cell = Polygon([o, o + self.a1, o + self.a1 + self.a2, o + self.a2])
        return float(unary_union(tiles).intersection(cell).area / self.area)


def _lattice(a1, a2, nodes, edges, t, family, params) -> Lattice:
    edges = np.asarray(edges, dtype=int)
    return Lattice(np.asarray(a1, float), np.asarray(a2, float), np.asarray(nodes, float),
                   edges[:, :2].copy(), edges[:, 2:].copy(), np.full(len(edges), float(t)), family, dict(params))


def honeycomb_cell(theta: float, h: float, t: float, family: str = "honeycomb", params: dict | None = None) -> Lattice:
    """Gibson-Ashby cell: node A at the origin, B at (0, h), inclined walls of length 1 from B at +-theta."""
    th = math.radians(theta)
    c, s = math.cos(th), math.sin(th)
    a1, a2 = (2 * c, 0.0), (c, h + s)
    # A-B vertical; B to A+a2 (up-right) and B to A+a2-a1 (up-left)
    return _lattice(a1, a2, [(0, 0), (0, h)], [(0, 1, 0, 0), (1, 0, 0, 1), (1, 0, -1, 1)], t, family,
                    params or {"theta": theta, "h": h, "t": t})


def _triangular(p):
    return _lattice((1, 0), (0.5, math.sqrt(3) / 2), [(0, 0)], [(0, 0, 1, 0), (0, 0, 0, 1), (0, 0, -1, 1)],
                    p["t"], "triangular", p)


def _square(p):
    return _lattice((1, 0), (0, 1), [(0, 0)], [(0, 0, 1, 0), (0, 0, 0, 1)], p["t"], "square", p)


def _kagome(p):
    r3 = math.sqrt(3)
    nodes = [(0, 0), (1, 0), (0.5, r3 / 2)]  # midpoints of the triangle a1/2, a2/2
    edges = [(0, 1, 0, 0), (0, 2, 0, 0), (1, 2, 0, 0), (1, 0, 1, 0), (2, 0, 0, 1), (1, 2, 1, -1)]
    return _lattice((2, 0), (1, r3), nodes, edges, p["t"], "kagome", p)


def _hierarchical(p):
    """Ajdari et al. (2012): each vertex of the regular honeycomb becomes a hexagon of side gamma."""
    base = honeycomb_cell(30.0, 1.0, p["t"])
    b = p["gamma"]
    angles = np.radians(30 + 60 * np.arange(6))
    ring = b * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    nodes = np.concatenate([base.nodes[k] + ring for k in range(len(base.nodes))])
    edges = [(6 * k + i, 6 * k + (i + 1) % 6, 0, 0) for k in range(len(base.nodes)) for i in range(6)]
    # each original wall, shortened by b at both ends, joins the hexagon vertices that point along it
    for (i, j), (s1, s2), v in zip(base.edges, base.shifts, base.edge_vectors()):
        d = math.degrees(math.atan2(v[1], v[0]))
        out = int(round((d - 30) / 60)) % 6
        back = (out + 3) % 6
        edges.append((6 * i + out, 6 * j + back, s1, s2))
    return _lattice(base.a1, base.a2, nodes, edges, p["t"], "hierarchical", p)


def _honeycomb(p):
    return honeycomb_cell(p["theta"], p["h"], p["t"], "honeycomb", p)


def _reentrant(p):
    if p["h"] <= 2 * abs(math.sin(math.radians(p["theta"]))) + p["t"]:
        raise SciarError(
            f"reentrant walls touch: h={p['h']:g} must exceed 2|sin(theta)| + t = "
            f"{2 * abs(math.sin(math.radians(p['theta']))) + p['t']:.3g}")
    return honeycomb_cell(p["theta"], p["h"], p["t"], "reentrant", p)


T = Param("t", 0.005, 0.15, None, "wall thickness t/l")
FAMILIES: dict[str, tuple[tuple[Param, ...], object]] = {
    "honeycomb": ((Param("theta", 15, 60, 30, "inclined walls' angle to x1, degrees"),
                   Param("h", 0.5, 2, 1, "vertical wall length h/l"), T), _honeycomb),
    "reentrant": ((Param("theta", -45, -10, -30, "inclined walls' angle to x1, degrees (negative: re-entrant)"),
                   Param("h", 0.5, 2, 2, "vertical wall length h/l"), T), _reentrant),
    "triangular": ((T,), _triangular),
    "square": ((T,), _square),
    "kagome": ((T,), _kagome),
    "hierarchical": ((Param("gamma", 0.05, 0.45, 0.25, "vertex hexagon side over base wall length (Ajdari 2012)"), T),
                     _hierarchical),
}


def family_params(family: str) -> tuple[Param, ...]:
    if family not in FAMILIES:
        raise SciarError(f"unknown lattice family {family!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[family][0]


def check_params(family: str, params: dict) -> dict:
    """The family's full parameter set (defaults filled in), or a one-line error naming the problem."""
    spec = family_params(family)
    names = {p.name for p in spec}
    extra = set(params) - names
    if extra:
        raise SciarError(f"{family} has no parameter {sorted(extra)[0]!r}; its parameters: {', '.join(p.name for p in spec)}")
    out = {}
    for p in spec:
        v = params.get(p.name, p.default)
        if v is None:
            raise SciarError(f"{family} needs {p.name} ({p.doc}, in [{p.lo:g}, {p.hi:g}])")
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise SciarError(f"{p.name} must be a number (got {v!r})") from None
        if not math.isfinite(v) or not p.lo <= v <= p.hi:
            raise SciarError(f"{p.name}={v:g} is outside its range [{p.lo:g}, {p.hi:g}] ({p.doc})")
        out[p.name] = v
    return out


def build(family: str, params: dict) -> Lattice:
    """The unit cell of one design, its parameters checked against the family's ranges."""
    p = check_params(family, params)
    return FAMILIES[family][1](p)
