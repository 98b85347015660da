"""Benchmark parts of the shapes domain; ``benchmarks/shapes.py`` and ``sciar shapes benchmark`` call these.

Built so far: the grid baseline (reconstruction metrics of signed-distance grids
of given sizes on a split's meshes). The VAE and generation parts come with
their models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from domains.shapes.dataset import MeshFile
from domains.shapes.grid_baseline import reconstruct
from domains.shapes.mesh import inside, load_shape
from domains.shapes.metrics import reconstruction_metrics, surface_samples, uniform_points

METRICS = ("iou", "chamfer", "fscore_002", "fscore_004")


def grid_baseline_rows(files: list[MeshFile], sizes: tuple[int, ...] = (16, 25), resolution: int = 128,
                       seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """One row per mesh and grid size: the reconstruction metrics against the true mesh (normalised frame)."""
    points = uniform_points(seed=seed)
    rows = []
    for mf in tqdm(files, desc="grid baseline", unit="mesh", disable=not progress):
        mesh = load_shape(mf.path).mesh
        true_inside, true_surface = inside(mesh, points), surface_samples(mesh, seed=seed)
        for size in sizes:
            field, pred = reconstruct(mesh, size, resolution)
            m = reconstruction_metrics(true_inside, field(points) > 0, true_surface, surface_samples(pred, seed=seed + 1))
            rows.append({"path": mf.relative, "label": mf.label, "size": size, "floats": size**3, **m})
    return pd.DataFrame(rows)


def summarise(rows: pd.DataFrame) -> dict[int, dict[str, float]]:
    """Mean metrics per grid size (Chamfer over meshes whose reconstruction has a surface; ``empty`` counts the rest)."""
    out = {}
    for size, g in rows.groupby("size"):
        finite = np.isfinite(g["chamfer"])
        out[int(size)] = {k: float(g[k][finite].mean() if k == "chamfer" else g[k].mean()) for k in METRICS}
        out[int(size)] |= {"floats": int(size) ** 3, "meshes": int(len(g)), "empty": int((~finite).sum())}
    return out


def grid_baseline_report(files: list[MeshFile], sizes: tuple[int, ...] = (16, 25), resolution: int = 128,
                         seed: int = 0, progress: bool = True) -> tuple[dict, pd.DataFrame]:
    """The benchmark's ``grid_baseline`` entry (the first size: the latent's float count) and every size's means."""
    rows = grid_baseline_rows(files, sizes, resolution, seed, progress)
    by_size = summarise(rows)
    first = by_size[sizes[0]]
    return {"grid_baseline": {k: first[k] for k in (*METRICS, "floats", "meshes", "empty")},
            "grid_baseline_by_size": {str(s): v for s, v in by_size.items()}}, rows


def render_grid_examples(files: list[MeshFile], sizes: tuple[int, ...], path, resolution: int = 128):
    """A PNG: each mesh (normalised) in a column, its grid-baseline reconstructions below it."""
    from domains.shapes.render import render_meshes

    shapes = [load_shape(mf.path).mesh for mf in files]
    meshes, titles = list(shapes), [f"{mf.label or mf.relative} (true)" for mf in files]
    for size in sizes:
        meshes += [reconstruct(m, size, resolution)[1] for m in shapes]
        titles += [f"grid {size}^3" for _ in shapes]
    render_meshes(meshes, titles, path, columns=len(files))
