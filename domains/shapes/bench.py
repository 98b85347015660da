"""Benchmark parts of the shapes domain; ``benchmarks/shapes.py`` and ``sciar shapes benchmark`` call these.

Built so far: reconstruction metrics of the grid baseline (signed-distance grids
of given sizes) and of a trained VAE on a split's meshes, and the generation
metrics of the training set used as the generator (the reference every
generator is read against) and of the masked, causal and fitted-Gaussian generators.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from domains.shapes.dataset import MeshFile
from domains.shapes.grid_baseline import reconstruct
from domains.shapes.mesh import inside, load_shape
from domains.shapes.metrics import (CLOUD_POINTS, chamfer_matrix, coverage, minimum_matching_distance, one_nn_accuracy,
                                    reconstruction_metrics, surface_samples, uniform_points)

from sciar.errors import SciarError

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


def _clouds_of_latents(vae, latents, resolution: int, seed: int) -> tuple[list[np.ndarray], int]:
    """Point clouds of the decoded meshes; a latent set that decodes to no surface counts as one point at the origin
    (far from every shape: it covers nothing), and is counted."""
    from domains.shapes.autoencode import decode_mesh

    clouds, empty = [], 0
    for i, z in enumerate(latents):
        cloud = point_clouds([decode_mesh(vae, z, resolution)[1]], seed=seed + i)[0]
        if len(cloud) == 0:
            cloud, empty = np.zeros((1, 3)), empty + 1
        clouds.append(cloud)
    return clouds, empty


def generation_report(generator, test: list[MeshFile], cache, causal=None, cfg: float = 3.0, steps: int = 16,
                      resolution: int = 128, seed: int = 0, progress: bool = True) -> dict:
    """COV, MMD and 1-NNA against the test shapes of the masked generator, the fitted Gaussian and (given) the causal
    generator: per test shape one generated shape of its class. Test shapes of classes the generator does not know
    are left out. Also the masked generator's seconds per shape (latents, and latents plus a mesh)."""
    import time

    from domains.shapes.generator import VAE_DIR, FittedGaussian, LatentSet, cached_latents, load_generator

    gen = load_generator(generator)
    test = [f for f in test if f.label in gen.classes]
    if not test:
        raise SciarError("no test shape is of a class the generator knows")
    labels = [gen.classes.index(f.label) for f in test]
    load = tqdm(test, desc="test point clouds", unit="mesh", disable=not progress)
    reference = point_clouds([load_shape(f.path).mesh for f in load], seed=seed)
    out, draws = {}, {}
    t0 = time.perf_counter()
    draws["masked"] = gen.latents(labels, cfg=cfg, steps=steps, seed=seed, progress=progress)
    latent_seconds = (time.perf_counter() - t0) / len(labels)
    data = LatentSet(*cached_latents(Path(generator) / VAE_DIR, cache, progress), classes=gen.classes)
    z, y = data.split("train")
    draws["fitted_gaussian"] = FittedGaussian(z, y, len(gen.classes)).sample(labels, seed) * data.std + data.mean
    if causal is not None:
        draws["causal"] = load_generator(causal).latents(labels, cfg=cfg, seed=seed)
    for name, latents in draws.items():
        t0 = time.perf_counter()
        clouds, empty = _clouds_of_latents(gen.vae, latents, resolution, seed)
        if name == "masked":
            out["seconds_per_shape"] = latent_seconds + (time.perf_counter() - t0) / len(labels)
        out[name] = generation_scores(clouds, reference) | {"empty": empty}
    return out
