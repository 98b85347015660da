"""What a shape model trains on: surface points with normals, occupancy query points, augmentation.

Surface points are spread evenly by farthest-point sampling (``fpsample``) from a
dense area-uniform sample; query points are half near the surface (surface
samples moved by Gaussian offsets of two widths, where the occupancy boundary
is learned) and half uniform in the cube [-1, 1]^3 (where the empty space is).
Occupancy comes from the mesh's winding number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import trimesh

from domains.shapes.mesh import inside


@dataclass(frozen=True)
class SamplingConfig:
    surface_points: int = 4096  # farthest-point samples kept, with normals
    dense_factor: int = 8  # FPS picks them from this many times as many random samples
    near_points: int = 8192  # query points near the surface
    uniform_points: int = 8192  # query points uniform in the cube
    near_sigmas: tuple[float, float] = (0.01, 0.05)  # Gaussian offsets from the surface, half the near points each

    def to_dict(self) -> dict:
        return asdict(self)


def sample_surface(mesh: trimesh.Trimesh, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` area-uniform random points on the surface and their faces' normals."""
    points, faces = trimesh.sample.sample_surface(mesh, n, seed=int(rng.integers(2**31)))
    return np.asarray(points), np.asarray(mesh.face_normals[faces])


def farthest_points(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` points spread evenly over the set by farthest-point sampling."""
    import fpsample

    if n >= len(points):
        return np.arange(len(points))
    start = int(rng.integers(len(points)))
    return np.asarray(fpsample.bucket_fps_kdline_sampling(np.ascontiguousarray(points, np.float32), n, h=7,
                                                          start_idx=start), dtype=np.int64)


def spread_surface(mesh: trimesh.Trimesh, n: int, rng: np.random.Generator, dense_factor: int = 8
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` surface points spread by farthest-point sampling from ``dense_factor * n`` random ones, with normals."""
    dense, dense_normals = sample_surface(mesh, n * dense_factor, rng)
    keep = farthest_points(dense, n, rng)
    return dense[keep].astype(np.float32), dense_normals[keep].astype(np.float32)


def sample_shape(mesh: trimesh.Trimesh, config: SamplingConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Surface points and normals, query points and their occupancy, for a closed mesh in the normalised frame."""
    rng = np.random.default_rng(seed)
    surface, normals = spread_surface(mesh, config.surface_points, rng, config.dense_factor)
    halves = np.array_split(np.arange(config.near_points), len(config.near_sigmas))
    base, _ = sample_surface(mesh, config.near_points, rng)
    near = np.concatenate([base[h] + rng.normal(0, s, (len(h), 3)) for h, s in zip(halves, config.near_sigmas)])
    uniform = rng.uniform(-1, 1, (config.uniform_points, 3))
    queries = np.concatenate([near, uniform])
    return {
        "surface": surface,
        "normals": normals,
        "queries": queries.astype(np.float32),
        "occupancy": inside(mesh, queries),
    }


def rotation_about_vertical(angle: float) -> np.ndarray:
    """The rotation matrix about the y axis (up in OBJ's convention and in SHREC'16)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def augment(sample: dict[str, np.ndarray], rng: np.random.Generator, scale_range: tuple[float, float] = (0.9, 1.1),
            limit: float = 0.99) -> dict[str, np.ndarray]:
    """The sample rotated about the vertical axis by a random angle and scaled by a random factor.

    A similarity transform leaves occupancy unchanged, so the labels stay; the scale is
    capped so that the rotated surface stays within ``[-limit, limit]^3``.
    """
    r = rotation_about_vertical(rng.uniform(0, 2 * np.pi))
    surface = sample["surface"] @ r.T
    scale = min(rng.uniform(*scale_range), limit / max(float(np.abs(surface).max()), 1e-9))
    out = dict(sample)
    out["surface"] = (surface * scale).astype(np.float32)
    out["normals"] = (sample["normals"] @ r.T).astype(np.float32)
    out["queries"] = (sample["queries"] @ r.T * scale).astype(np.float32)
    return out
