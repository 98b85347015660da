"""The shipped head mesh, the head-normalised token frame, and inside/outside queries against the head.

The head (``data/hair/Head.obj.gz``, Digital-Salon, metres) has y up and the face towards +z; it is open at the
neck, so "inside" is decided by the generalised winding number (above 0.5), which stays meaningful on open meshes.

Token frame: ``u = (p - origin) / scale`` with ``scale = 3 x`` the head's bounding-box height (0.987 m) and the
origin at the box's x and z centre, placed so that the top of the head sits at ``u_y = 0.38``. CHARM's bins
cover ``[-0.501, 0.501]`` on each axis, so the frame holds hair from 12 cm above the head to 87 cm below its top,
and 49 cm to either side of its centre; the finest x and z bins (``|u_x| < 0.1``, ``-0.15 < u_z < 0.1``) cover
the skull. Widths and thicknesses are divided by the same scale.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from sciar.errors import DataError
from sciar.paths import data_dir

TOP_IN_FRAME = 0.38  # where the top of the head sits on the frame's y axis
SCALE_IN_HEADS = 3.0  # the frame's unit, in head heights
# USC-HairSalon strands (centimetres) to the head's frame (metres): p * 0.01 + STRAND_SHIFT (data README)
STRAND_SCALE = 0.01
STRAND_SHIFT = np.array([0.0, 0.2685, 0.0965])


@dataclass(frozen=True, eq=False)
class Head:
    vertices: np.ndarray  # (V, 3) float64, metres
    faces: np.ndarray  # (F, 3) int32 triangles, outward orientation

    @cached_property
    def bounds(self) -> np.ndarray:
        return np.stack([self.vertices.min(0), self.vertices.max(0)])

    @cached_property
    def height(self) -> float:
        b = self.bounds
        return float(b[1, 1] - b[0, 1])

    @cached_property
    def scale(self) -> float:
        """Metres per token-frame unit."""
        return SCALE_IN_HEADS * self.height

    @cached_property
    def origin(self) -> np.ndarray:
        b = self.bounds
        c = b.mean(0)
        return np.array([c[0], b[1, 1] - TOP_IN_FRAME * self.scale, c[2]])

    def to_frame(self, cards: np.ndarray) -> np.ndarray:
        """(..., 5) points in metres -> the token frame (positions shifted and scaled, sizes scaled)."""
        out = np.asarray(cards, dtype=np.float64).copy()
        out[..., :3] = (out[..., :3] - self.origin) / self.scale
        out[..., 3:] = out[..., 3:] / self.scale
        return out

    def from_frame(self, u: np.ndarray) -> np.ndarray:
        out = np.asarray(u, dtype=np.float64).copy()
        out[..., :3] = out[..., :3] * self.scale + self.origin
        out[..., 3:] = out[..., 3:] * self.scale
        return out

    def winding_number(self, points: np.ndarray) -> np.ndarray:
        import point_cloud_utils as pcu

        p, n = _queries(points)
        if n == 0:
            return np.zeros(0)
        return pcu.triangle_soup_fast_winding_number(self.vertices, self.faces, p)[:n]

    def inside(self, points: np.ndarray) -> np.ndarray:
        return self.winding_number(points) > 0.5

    def closest(self, points: np.ndarray):
        """Distance to the surface (metres, >= 0), closest surface points and smoothed (vertex-interpolated) normals."""
        import point_cloud_utils as pcu

        p, k = _queries(points)
        if k == 0:
            return np.zeros(0), np.zeros((0, 3)), np.zeros((0, 3))
        _, fi, bc = pcu.signed_distance_to_mesh(p, self.vertices, self.faces)
        p, fi, bc = p[:k], fi[:k], bc[:k]
        tri = self.faces[fi]
        q = np.einsum("nk,nkd->nd", bc, self.vertices[tri])
        n = np.einsum("nk,nkd->nd", bc, self.vertex_normals[tri])
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
        return np.linalg.norm(p - q, axis=1), q, n

    def near(self, points: np.ndarray) -> np.ndarray:
        """Distance to the nearest head vertex (metres): a cheap stand-in for the surface distance (vertices ~3 mm apart)."""
        return _vertex_tree(self).query(np.asarray(points, dtype=np.float64).reshape(-1, 3))[0]

    @property
    def vertex_normals(self) -> np.ndarray:
        return _vertex_normals(self)

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """Distance to the surface, negative inside (winding number sign); metres."""
        import point_cloud_utils as pcu

        p, n = _queries(points)
        if n == 0:
            return np.zeros(0)
        return pcu.signed_distance_to_mesh(p, self.vertices, self.faces)[0][:n]  # signed by the fast winding number

    def push_outside(self, points: np.ndarray, margin: float) -> np.ndarray:
        """Points closer to the head than ``margin`` (or inside it) moved along the head normal to ``margin`` outside."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        sd = self.signed_distance(p)
        margin = np.broadcast_to(margin, len(p))
        bad = sd < margin
        if bad.any():
            _, q, n = self.closest(p[bad])
            p = p.copy()
            p[bad] = q + margin[bad, None] * n
        return p.reshape(np.shape(points))

    def push_cards_outside(self, cards: list[np.ndarray], margin: float) -> list[np.ndarray]:
        """Cards whose control points are all at least ``margin`` plus half their thickness outside the head."""
        if not cards:
            return []
        pts = self.push_outside(np.concatenate([c[:, :3] for c in cards]), margin + np.concatenate([c[:, 4] for c in cards]) / 2)
        starts = np.cumsum([0] + [len(c) for c in cards])
        return [np.concatenate([pts[starts[i]:starts[i + 1]], c[:, 3:]], 1) for i, c in enumerate(cards)]

    @property
    def sdf_grid(self) -> "SdfGrid":
        return _sdf_grid(self)


@dataclass(frozen=True, eq=False)
class SdfGrid:
    """The head's signed distance sampled on a 5 mm grid: fast approximate queries for the hair generator."""

    lo: np.ndarray
    step: float
    values: np.ndarray  # (nx, ny, nz)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        from scipy.ndimage import map_coordinates

        idx = ((np.asarray(points).reshape(-1, 3) - self.lo) / self.step).T
        return map_coordinates(self.values, idx, order=1, mode="nearest")

    def gradient(self, points: np.ndarray, h: float = 2e-3) -> np.ndarray:
        p = np.asarray(points).reshape(-1, 3)
        g = np.stack([self(p + h * e) - self(p - h * e) for e in np.eye(3)], axis=1) / (2 * h)
        return g / (np.linalg.norm(g, axis=1, keepdims=True) + 1e-12)

    def push_outside(self, points: np.ndarray, margin: float, iters: int = 3) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3).copy()
        margin = np.broadcast_to(margin, len(p))
        for _ in range(iters):
            d = self(p)
            bad = d < margin
            if not bad.any():
                break
            p[bad] += (margin[bad] - d[bad])[:, None] * self.gradient(p[bad])
        return p.reshape(np.shape(points))


def _queries(points) -> tuple[np.ndarray, int]:
    """Query points for point-cloud-utils, and how many there are: a single point is sent twice (point-cloud-utils 0.34 answers
    a one-row query wrongly, 288 mm instead of 9 mm from the head in our test)."""
    p = np.ascontiguousarray(np.asarray(points, dtype=np.float64).reshape(-1, 3))
    return (np.concatenate([p, p]) if len(p) == 1 else p), len(p)


def head_path() -> Path:
    return data_dir() / "hair" / "Head.obj.gz"


@lru_cache(maxsize=2)
def load_head(path: str | None = None) -> Head:
    """Read the head mesh (OBJ, gzipped or not); quads split into triangles, UV-split vertices merged."""
    import trimesh

    path = Path(path) if path else head_path()
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        m = trimesh.load(trimesh.util.wrap_as_stream(raw), file_type="obj", force="mesh", process=False)
    except Exception as e:  # noqa: BLE001 - any reader failure is the file's problem
        raise DataError(f"cannot read the head mesh {path}: {e}") from None
    m = trimesh.Trimesh(np.asarray(m.vertices, dtype=np.float64), np.asarray(m.faces), process=True)
    if len(m.faces) == 0:
        raise DataError(f"the head mesh {path} has no faces")
    return Head(np.ascontiguousarray(m.vertices, dtype=np.float64), np.ascontiguousarray(m.faces, dtype=np.int32))


@lru_cache(maxsize=2)
def _vertex_tree(head: Head):
    from scipy.spatial import cKDTree

    return cKDTree(head.vertices)


@lru_cache(maxsize=2)
def _vertex_normals(head: Head) -> np.ndarray:
    import trimesh

    return np.asarray(trimesh.Trimesh(head.vertices, head.faces, process=False).vertex_normals, dtype=np.float64)


@lru_cache(maxsize=2)
def _sdf_grid(head: Head, step: float = 5e-3, pad: float = 0.03) -> SdfGrid:
    b = head.bounds
    lo, hi = b[0] - pad, b[1] + pad
    axes = [np.arange(lo[i], hi[i] + step, step) for i in range(3)]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    values = head.signed_distance(g).reshape(*(len(a) for a in axes))
    return SdfGrid(lo, step, values)
