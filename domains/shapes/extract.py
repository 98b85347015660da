"""Mesh extraction from a field by marching cubes, queried coarse to fine.

A field is any callable taking an ``(n, 3)`` float array of points and returning
``n`` values, positive inside the shape and negative outside (an occupancy logit,
a negated signed distance, a winding number minus one half); the surface is its
zero level. The field is evaluated on a coarse grid first; each refinement halves
the spacing and queries only the points in coarse cells where the sign changes
(and their neighbours), filling the rest by trilinear interpolation, whose sign
there is already known. A 128^3 grid so costs a few hundred thousand queries
instead of two million.
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy import ndimage

from sciar.errors import SciarError

BOUND = 1.05  # the grid spans [-BOUND, BOUND]^3: the unit cube and a margin, so surfaces at +-1 still close


def _grid_points(index: np.ndarray, n: int, bound: float) -> np.ndarray:
    """World coordinates of integer grid indices ``(m, 3)`` on an ``n``-point-per-side grid."""
    return index.astype(np.float64) * (2 * bound / (n - 1)) - bound


def _evaluate(field, points: np.ndarray, batch: int) -> np.ndarray:
    out = np.empty(len(points), dtype=np.float64)
    for i in range(0, len(points), batch):
        v = np.asarray(field(points[i:i + batch]), dtype=np.float64).reshape(-1)
        if len(v) != len(points[i:i + batch]):
            raise ValueError(f"the field returned {len(v)} values for {len(points[i:i + batch])} points")
        out[i:i + batch] = v
    return out


def _upsample(values: np.ndarray) -> np.ndarray:
    """Trilinear upsampling of an ``(n, n, n)`` grid to ``(2n-1, ...)``: old points kept, new ones at midpoints."""
    for axis in range(3):
        v = np.moveaxis(values, axis, 0)
        up = np.empty((2 * v.shape[0] - 1,) + v.shape[1:], dtype=v.dtype)
        up[0::2] = v
        up[1::2] = 0.5 * (v[:-1] + v[1:])
        values = np.moveaxis(up, 0, axis)
    return values


def _surface_cells(values: np.ndarray) -> np.ndarray:
    """Cells (one fewer per side than points) whose eight corners do not all share a sign."""
    inside = values > 0
    any_in = np.zeros(tuple(s - 1 for s in values.shape), dtype=bool)
    all_in = np.ones_like(any_in)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                corner = inside[dx:dx + any_in.shape[0], dy:dy + any_in.shape[1], dz:dz + any_in.shape[2]]
                any_in |= corner
                all_in &= corner
    return any_in & ~all_in


def sample_grid(field, resolution: int = 128, coarse: int = 32, bound: float = BOUND,
                batch: int = 65536) -> tuple[np.ndarray, int]:
    """The field on a ``(resolution+1)^3`` grid over ``[-bound, bound]^3``, and how many points were queried.

    ``resolution`` must be ``coarse`` times a power of two. Points away from the
    surface hold interpolated values (right sign, rough magnitude).
    """
    if coarse < 2 or resolution < coarse or (resolution // coarse) * coarse != resolution \
            or (resolution // coarse) & (resolution // coarse - 1):
        raise SciarError(f"resolution {resolution} must be {coarse} times a power of two")
    n = coarse + 1
    index = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    values = _evaluate(field, _grid_points(index, n, bound), batch).reshape(n, n, n)
    queried = len(index)
    while n - 1 < resolution:
        cells = ndimage.binary_dilation(_surface_cells(values), structure=np.ones((3, 3, 3), bool))
        values = _upsample(values)
        n = values.shape[0]
        c = cells.shape[0]
        todo = np.zeros(values.shape, dtype=bool)
        for dx in range(3):  # a coarse cell covers 3 fine points per axis
            for dy in range(3):
                for dz in range(3):
                    todo[dx:dx + 2 * c:2, dy:dy + 2 * c:2, dz:dz + 2 * c:2] |= cells
        index = np.argwhere(todo)
        if len(index):
            values[todo] = _evaluate(field, _grid_points(index, n, bound), batch)
        queried += len(index)
    return values, queried


def mesh_from_grid(values: np.ndarray, bound: float = BOUND) -> trimesh.Trimesh:
    """Marching cubes at level 0 on a grid over ``[-bound, bound]^3`` (positive inside); faces point outward.

    A grid without a sign change gives an empty mesh.
    """
    from skimage.measure import marching_cubes

    if not (values.max() > 0 > values.min()):
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    spacing = 2 * bound / (values.shape[0] - 1)
    # 'ascent': the values rise toward the inside, so the faces wind outward
    verts, faces, _, _ = marching_cubes(values.astype(np.float32), level=0.0, spacing=(spacing,) * 3,
                                        gradient_direction="ascent")
    return trimesh.Trimesh(verts - bound, faces, process=True)


def extract_mesh(field, resolution: int = 128, coarse: int = 32, bound: float = BOUND) -> trimesh.Trimesh:
    """The zero level of ``field`` as a mesh, from a ``resolution^3``-cell grid queried coarse to fine."""
    values, _ = sample_grid(field, resolution, coarse, bound)
    return mesh_from_grid(values, bound)
