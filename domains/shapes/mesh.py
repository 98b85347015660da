"""Reading, checking, repairing and normalising meshes, and asking what is inside them.

Meshes come from anywhere: OBJ, PLY, STL, OFF or GLB; several bodies; quad or
polygon faces (triangulated on reading); any scale; open surfaces with holes.
Everything downstream assumes a closed, outward-facing triangle mesh in the
normalised frame (bounding box centred at the origin, largest extent 1.8, so
inside [-1, 1]^3), so :func:`load_shape` delivers exactly that, with a
:class:`Frame` that maps results back to the input's coordinates and notes that
say what was repaired.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from sciar.errors import DataError

MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".glb")
EXTENT = 1.8  # the largest side of the normalised bounding box
REPAIR_RESOLUTION = 128  # grid cells per side of the winding-number remeshing of open surfaces


@dataclass(frozen=True)
class Frame:
    """The similarity transform from a mesh's own coordinates to the normalised frame: ``(x - center) * scale``."""

    center: tuple[float, float, float]
    scale: float

    @classmethod
    def fit(cls, vertices: np.ndarray, extent: float = EXTENT) -> "Frame":
        lo, hi = vertices.min(0), vertices.max(0)
        size = float((hi - lo).max())
        if not size > 0:
            raise DataError("the mesh has no extent (all vertices at one point)")
        return cls(tuple(float(c) for c in (lo + hi) / 2), extent / size)

    def to_unit(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, np.float64) - np.asarray(self.center)) * self.scale

    def from_unit(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, np.float64) / self.scale + np.asarray(self.center)


@dataclass
class Shape:
    """A closed mesh in the normalised frame, the frame it came from and what was done to it."""

    mesh: trimesh.Trimesh
    frame: Frame
    notes: list[str] = field(default_factory=list)
    bodies: int = 1


def read_mesh(path: str | Path) -> trimesh.Trimesh:
    """The triangles of a mesh file (all bodies of a scene in one mesh), checked; raises :class:`DataError`."""
    path = Path(path)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise DataError(f"{path}: not a mesh file (expected {', '.join(MESH_SUFFIXES)})")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    try:
        # process=False: keep the file's vertices so NaNs are seen before trimesh drops or merges them
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # trimesh raises many kinds for malformed files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: cannot read as a mesh ({msg})") from None
    vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), dtype=np.float64)
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), dtype=np.int64)
    if len(vertices) == 0 or len(faces) == 0:
        raise DataError(f"{path}: no triangles found (not a mesh, or a point cloud)")
    if not np.isfinite(vertices).all():
        raise DataError(f"{path}: {int((~np.isfinite(vertices).all(1)).sum())} vertices are NaN or infinite")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise DataError(f"{path}: faces refer to vertices that do not exist")
    return trimesh.Trimesh(vertices, faces, process=False)


def clean(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Merged duplicate vertices (STL stores each triangle apart), without degenerate or repeated faces."""
    mesh = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)  # merges vertices
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()
    return mesh


def signed_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Signed distance of points to the mesh, negative inside; inside/outside by the fast winding number."""
    import point_cloud_utils as pcu

    sd, _, _ = pcu.signed_distance_to_mesh(np.ascontiguousarray(points, dtype=np.float64),
                                           np.ascontiguousarray(mesh.vertices, dtype=np.float64),
                                           np.ascontiguousarray(mesh.faces, dtype=np.int32))
    return np.asarray(sd)


def inside(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Which points lie inside the mesh (generalised winding number above one half)."""
    return signed_distance(mesh, points) < 0


def winding_number(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    import point_cloud_utils as pcu

    return np.asarray(pcu.triangle_soup_fast_winding_number(
        np.ascontiguousarray(mesh.vertices, dtype=np.float64), np.ascontiguousarray(mesh.faces, dtype=np.int32),
        np.ascontiguousarray(points, dtype=np.float64)))


def close_surface(mesh: trimesh.Trimesh, resolution: int | None = None) -> trimesh.Trimesh:
    """A closed mesh of what an open surface (holes, gaps, inconsistent winding) encloses.

    The generalised winding number decides inside and outside even across holes;
    the surface is remeshed as the zero level of the signed distance with those
    signs, by the same coarse-to-fine marching cubes as every decoded shape. The
    mesh must be in the normalised frame.
    """
    from domains.shapes.extract import extract_mesh

    mesh = mesh.copy()
    trimesh.repair.fix_winding(mesh)  # one orientation per body, so winding numbers add up
    probe = np.random.default_rng(0).uniform(-1, 1, (4096, 3))
    if winding_number(mesh, probe).sum() < 0:  # oriented inward throughout
        mesh.invert()
    return extract_mesh(lambda p: -signed_distance(mesh, p), resolution=resolution or REPAIR_RESOLUTION)


def load_shape(path: str | Path) -> Shape:
    """Read, check, normalise and (where it is not closed) repair a mesh file; raises :class:`DataError`."""
    raw = read_mesh(path)
    frame = Frame.fit(raw.vertices)
    mesh = clean(trimesh.Trimesh(frame.to_unit(raw.vertices), raw.faces, process=False))
    if len(mesh.faces) == 0:
        raise DataError(f"{path}: every face is degenerate (zero area)")
    notes = []
    bodies = int(mesh.body_count)
    if mesh.is_watertight and mesh.is_winding_consistent:
        if mesh.volume < 0:
            mesh.invert()
            notes.append("faces pointed inward: flipped")
    else:
        open_edges = int(len(trimesh.grouping.group_rows(mesh.edges_sorted, require_count=1)))
        mesh = close_surface(mesh)
        notes.append(f"not closed ({open_edges} open edges): remeshed from the winding number at "
                     f"{REPAIR_RESOLUTION}^3 ({len(mesh.faces)} faces)")
    if len(mesh.faces) == 0 or mesh.volume < 1e-6:  # a millionth of the normalised cube
        raise DataError(f"{path}: the mesh encloses no volume (a flat or open sheet)")
    return Shape(mesh, frame, notes, bodies)
