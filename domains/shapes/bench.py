"""Benchmark parts of the shapes domain; ``benchmarks/shapes.py`` and ``sciar shapes benchmark`` call these.

Built so far: reconstruction metrics of the grid baseline (signed-distance grids
of given sizes) and of a trained VAE on a split's meshes, and the generation
metrics of the training set used as the generator (the reference every
generator is read against). The generators' own rows come with the generator.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from domains.shapes.dataset import MeshFile
from domains.shapes.grid_baseline import reconstruct
from domains.shapes.mesh import inside, load_shape
from domains.shapes.metrics import (CLOUD_POINTS, chamfer_matrix, coverage, minimum_matching_distance, one_nn_accuracy,
                                    reconstruction_metrics, surface_samples, uniform_points)

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
    return {int(size): mean_metrics(g) | {"floats": int(size) ** 3} for size, g in rows.groupby("size")}


def grid_baseline_report(files: list[MeshFile], sizes: tuple[int, ...] = (16, 25), resolution: int = 128,
                         seed: int = 0, progress: bool = True) -> tuple[dict, pd.DataFrame]:
    """The benchmark's ``grid_baseline`` entry (the first size: the latent's float count) and every size's means."""
    rows = grid_baseline_rows(files, sizes, resolution, seed, progress)
    by_size = summarise(rows)
    first = by_size[sizes[0]]
    return {"grid_baseline": {k: first[k] for k in (*METRICS, "floats", "meshes", "empty")},
            "grid_baseline_by_size": {str(s): v for s, v in by_size.items()}}, rows


def vae_rows(model, files: list[MeshFile], resolution: int = 128, seed: int = 0,
             progress: bool = True) -> pd.DataFrame:
    """One row per mesh: the VAE's reconstruction (posterior mean, decoded, meshed) against the true mesh."""
    from domains.shapes.autoencode import decode_mesh, encode
    from domains.shapes.sampling import spread_surface

    points = uniform_points(seed=seed)
    rows = []
    for mf in tqdm(files, desc="VAE", unit="mesh", disable=not progress):
        mesh = load_shape(mf.path).mesh
        true_inside, true_surface = inside(mesh, points), surface_samples(mesh, seed=seed)
        surface, normals = spread_surface(mesh, model.cfg.surface_points, np.random.default_rng(seed))
        field, pred = decode_mesh(model, encode(model, surface, normals), resolution)
        m = reconstruction_metrics(true_inside, field(points) > 0, true_surface, surface_samples(pred, seed=seed + 1))
        rows.append({"path": mf.relative, "label": mf.label, **m})
    return pd.DataFrame(rows)


def mean_metrics(rows: pd.DataFrame) -> dict[str, float]:
    """Mean metrics over meshes (Chamfer over those with a surface; ``empty`` counts the rest)."""
    finite = np.isfinite(rows["chamfer"])
    out = {k: float(rows[k][finite].mean() if k == "chamfer" else rows[k].mean()) for k in METRICS}
    return out | {"meshes": int(len(rows)), "empty": int((~finite).sum())}


def point_clouds(meshes, n: int = CLOUD_POINTS, seed: int = 0) -> list[np.ndarray]:
    """``n`` surface samples of each mesh (normalised frame), for the generation metrics."""
    return [surface_samples(m, n, seed=seed + i) for i, m in enumerate(meshes)]


def generation_scores(generated: list[np.ndarray], reference: list[np.ndarray]) -> dict:
    """COV, MMD and 1-NNA of generated point clouds against reference ones (Chamfer distances)."""
    d_gr = chamfer_matrix(generated, reference)
    d_gg = chamfer_matrix(generated)
    d_rr = chamfer_matrix(reference)
    return {"cov": coverage(d_gr), "mmd": minimum_matching_distance(d_gr), "nna": one_nn_accuracy(d_gr, d_gg, d_rr),
            "generated": len(generated), "reference": len(reference)}


def training_set_reference(train: list[MeshFile], test: list[MeshFile], seed: int = 0, progress: bool = True) -> dict:
    """The generation metrics of the training set used as the generator: per class as many training shapes as the
    class has test shapes (the first ones), against the test shapes. The honest reference for any generator."""
    per_class = {label: sum(f.label == label for f in test) for label in {f.label for f in test}}
    seen: dict[str, int] = {}
    chosen = []
    for f in train:
        if seen.get(f.label, 0) < per_class.get(f.label, 0):
            seen[f.label] = seen.get(f.label, 0) + 1
            chosen.append(f)
    load = tqdm(chosen + test, desc="point clouds", unit="mesh", disable=not progress)
    clouds = point_clouds([load_shape(f.path).mesh for f in load], seed=seed)
    return generation_scores(clouds[:len(chosen)], clouds[len(chosen):])


def render_grid_examples(files: list[MeshFile], sizes: tuple[int, ...], path, resolution: int = 128):
    """A PNG: each mesh (normalised) in a column, its grid-baseline reconstructions below it."""
    from domains.shapes.render import render_meshes

    shapes = [load_shape(mf.path).mesh for mf in files]
    meshes, titles = list(shapes), [f"{mf.label or mf.relative} (true)" for mf in files]
    for size in sizes:
        meshes += [reconstruct(m, size, resolution)[1] for m in shapes]
        titles += [f"grid {size}^3" for _ in shapes]
    render_meshes(meshes, titles, path, columns=len(files))
