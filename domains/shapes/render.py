"""Headless pictures of meshes (matplotlib Agg): one PNG with a grid of shaded shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from sciar.io import atomic_path

MAX_FACES = 8_000  # matplotlib draws every polygon; finer meshes are decimated for the picture
LIGHT = np.array([0.4, 0.8, 0.6]) / np.linalg.norm([0.4, 0.8, 0.6])


def _decimated(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    if len(mesh.faces) <= MAX_FACES:
        return mesh
    import point_cloud_utils as pcu

    v, f, _, _ = pcu.decimate_triangle_mesh(np.ascontiguousarray(mesh.vertices, np.float64),
                                            np.ascontiguousarray(mesh.faces, np.int32), MAX_FACES)
    return trimesh.Trimesh(v, f, process=False)


def grid_shape(n: int, columns: int) -> tuple[int, int]:
    """Rows and columns of a grid of ``n`` pictures, at most ``columns`` to a row: fewer columns when ``n`` fills
    less than one row, so no column stays empty."""
    columns = max(1, min(columns, n))
    return max(1, -(-n // columns)), columns


def render_meshes(meshes: list[trimesh.Trimesh], titles: list[str], path: str | Path, columns: int = 4,
                  cell: float = 2.6):
    """Draw the meshes (normalised frame, y up) in a grid of views, at most ``columns`` to a row and no empty
    column, and write a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    rows, columns = grid_shape(len(meshes), columns)
    fig = plt.figure(figsize=(cell * columns, cell * rows))
    for i, (mesh, title) in enumerate(zip(meshes, titles)):
        ax = fig.add_subplot(rows, columns, i + 1, projection="3d")
        if len(mesh.faces):
            mesh = _decimated(mesh)
            tri = mesh.vertices[mesh.faces][:, :, [0, 2, 1]]  # y up on the screen: matplotlib's z
            shade = 0.4 + 0.6 * np.abs(mesh.face_normals[:, [0, 2, 1]] @ LIGHT)  # two-sided light
            ax.add_collection3d(Poly3DCollection(tri, facecolors=np.c_[shade * 0.55, shade * 0.7, shade * 0.9],
                                                 edgecolor="none"))
        ax.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1))
        ax.set_box_aspect((1, 1, 1), zoom=1.35)
        ax.view_init(elev=20, azim=-60)
        ax.set_axis_off()
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
