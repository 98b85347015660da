"""The grid baseline: a shape stored as its signed distance on a small regular grid.

A ``size^3`` grid over [-1, 1]^3 holds as many floats as a set of latent tokens
(16^3 = 4,096 = 128 tokens of 32 dims; 25^3 = 15,625, about 256 of 64), so it is
the reference a shape VAE must beat at equal storage. Between grid points the
distance is interpolated trilinearly; its sign is the inside/outside for IoU and
its zero level is meshed by the same coarse-to-fine marching cubes as the VAE's
occupancy (:mod:`domains.shapes.extract`).
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.interpolate import RegularGridInterpolator

from domains.shapes.extract import extract_mesh
from domains.shapes.mesh import signed_distance


def grid_axis(size: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, size)


def sdf_grid(mesh: trimesh.Trimesh, size: int) -> np.ndarray:
    """The mesh's signed distance (negative inside) at ``size^3`` grid points over [-1, 1]^3."""
    axis = grid_axis(size)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    return signed_distance(mesh, points).reshape(size, size, size).astype(np.float32)


class GridField:
    """A field (positive inside) interpolated trilinearly from a signed-distance grid; points are clamped to the cube."""

    def __init__(self, grid: np.ndarray):
        axis = grid_axis(grid.shape[0])
        self.interpolate = RegularGridInterpolator((axis, axis, axis), -np.asarray(grid, np.float64))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return self.interpolate(np.clip(points, -1.0, 1.0))


def reconstruct(mesh: trimesh.Trimesh, size: int, resolution: int = 128) -> tuple[GridField, trimesh.Trimesh]:
    """The grid field of a mesh and the mesh meshed back from it."""
    field = GridField(sdf_grid(mesh, size))
    return field, extract_mesh(field, resolution=resolution)
