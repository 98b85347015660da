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


def _decoded(vae, latents, resolution: int, seed: int, progress: bool = False, desc: str = "decode"):
    """The meshes of latent sets and their point clouds; a set that decodes to no surface gets a cloud of one point at
    the origin (far from every shape: it covers nothing) and is counted in ``empty``."""
    from domains.shapes.autoencode import decode_mesh

    meshes, clouds, empty = [], [], 0
    for i, z in enumerate(tqdm(latents, desc=desc, unit="shape", disable=not progress)):
        mesh = decode_mesh(vae, z, resolution)[1]
        cloud = point_clouds([mesh], seed=seed + i)[0]
        if len(cloud) == 0:
            cloud, empty = np.zeros((1, 3)), empty + 1
        meshes.append(mesh)
        clouds.append(cloud)
    return meshes, clouds, empty


def _per_class(files: list[MeshFile], labels: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        if f.label in labels:
            out.setdefault(f.label, []).append(i)
    return out


def nearest_training(clouds: list[np.ndarray], labels: list[str], train_clouds: list[np.ndarray],
                     train_labels: list[str]) -> np.ndarray:
    """Each cloud's Chamfer distance ``[N, 1]`` to its nearest training cloud of the same class (inf: none)."""
    d = np.full((len(clouds), 1), np.inf)
    for c in sorted(set(labels)):
        rows = [i for i, lab in enumerate(labels) if lab == c]
        cols = [j for j, lab in enumerate(train_labels) if lab == c]
        if cols:
            d[rows, 0] = chamfer_matrix([clouds[i] for i in rows], [train_clouds[j] for j in cols]).min(1)
    return d


def generation_report(generator, test: list[MeshFile], cache, causal=None, cfg: float | None = None,
                      scales: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0), val: list[MeshFile] | None = None,
                      train: list[MeshFile] | None = None, steps: int = 16, resolution: int = 64,
                      speed_resolution: int = 128, speed_shapes: int = 2, seed: int = 0, progress: bool = True) -> dict:
    """The generation part of the benchmark, per test shape one generated shape of its class:

    - ``guidance``: given ``val`` and no ``cfg``, the scale among ``scales`` whose shapes (one per val mesh, other
      seeds) the classifier labels best, with each scale's val accuracy; every guided generator then uses it;
    - ``generation``: COV, MMD and 1-NNA against the test shapes of the masked generator, the fitted Gaussian on the
      VAE's training latents, the causal generator (given) and, given ``train``, the training set itself;
    - ``classifier_accuracy_real`` and ``class_accuracy`` (per generator, on the test-seed shapes): the point-cloud
      classifier (:mod:`domains.shapes.classify`, fitted to the cache's train split) on real test meshes and on
      generated ones;
    - ``memorised_share`` (given ``train``): per generator, and for the test shapes;
    - ``seconds_per_shape``: the masked generator's latents and mesh at ``speed_resolution``^3, per shape.

    Meshes for the metrics are extracted at ``resolution``^3. Test shapes of classes the generator does not know are
    left out.
    """
    import time

    from domains.shapes.autoencode import decode_mesh
    from domains.shapes.classify import train_classifier
    from domains.shapes.generator import VAE_DIR, FittedGaussian, LatentSet, cached_latents, load_generator
    from domains.shapes.metrics import memorised_share

    from sciar.paths import find_checkpoint

    generator = find_checkpoint(generator)
    gen = load_generator(generator)
    test = [f for f in test if f.label in gen.classes]
    if not test:
        raise SciarError("no test shape is of a class the generator knows")
    test_labels = [f.label for f in test]
    labels = [gen.classes.index(c) for c in test_labels]
    load = tqdm(test, desc="test meshes", unit="mesh", disable=not progress)
    test_meshes = [load_shape(f.path).mesh for f in load]
    reference = point_clouds(test_meshes, seed=seed)
    classifier, fit = train_classifier(cache, seed=seed)
    out: dict = {"classifier": fit, "classifier_accuracy_real": classifier.accuracy_of_meshes(test_meshes, test_labels, seed)}

    if cfg is None:
        val = [f for f in (val or []) if f.label in gen.classes]
        if not val:
            raise SciarError("choosing the guidance scale needs validation meshes (or give cfg)")
        val_labels = [f.label for f in val]
        by_scale = {}
        for s in scales:
            z = gen.latents([gen.classes.index(c) for c in val_labels], cfg=s, steps=steps, seed=seed + 100_000)
            meshes = _decoded(gen.vae, z, resolution, seed, progress, f"val cfg {s:g}")[0]
            by_scale[s] = classifier.accuracy_of_meshes(meshes, val_labels, seed)
        cfg = max(scales, key=lambda s: (by_scale[s], -s))  # the best val accuracy; the smaller scale on a tie
        out["guidance"] = {"chosen": cfg, "val_class_accuracy": {f"{s:g}": a for s, a in by_scale.items()},
                           "val_shapes": len(val)}
    else:
        out["guidance"] = {"chosen": cfg}

    draws = {"masked": gen.latents(labels, cfg=cfg, steps=steps, seed=seed, progress=progress)}
    data = LatentSet(*cached_latents(Path(generator) / VAE_DIR, cache, progress), classes=gen.classes)
    z, y = data.split("train")
    draws["fitted_gaussian"] = FittedGaussian(z, y, len(gen.classes)).sample(labels, seed) * data.std + data.mean
    if causal is not None:
        draws["causal"] = load_generator(causal).latents(labels, cfg=cfg, seed=seed)
    train_clouds = train_labels = None
    if train is not None:
        train = [f for f in train if f.label in gen.classes]
        load = tqdm(train, desc="train meshes", unit="mesh", disable=not progress)
        train_meshes = [load_shape(f.path).mesh for f in load]
        train_clouds, train_labels = point_clouds(train_meshes, seed=seed + 10_000), [f.label for f in train]
        d_test = nearest_training(reference, test_labels, train_clouds, train_labels)
    generation, accuracy, memorised = {}, {}, {}
    for name, latents in draws.items():
        meshes, clouds, empty = _decoded(gen.vae, latents, resolution, seed, progress, name)
        generation[name] = generation_scores(clouds, reference) | {"empty": empty}
        accuracy[name] = classifier.accuracy_of_meshes(meshes, test_labels, seed)
        if train_clouds is not None:
            memorised[name] = memorised_share(nearest_training(clouds, test_labels, train_clouds, train_labels),
                                              d_test)[0]
    if train_clouds is not None:
        generation["training_set"] = _training_set_scores(train_clouds, train_labels, reference, test_labels)
        memorised["test"] = memorised_share(d_test, d_test)[1]
    out |= {"generation": generation, "class_accuracy": accuracy | {"cfg": cfg}}
    if memorised:
        out["memorised_share"] = memorised

    t0 = time.perf_counter()
    z = gen.latents(labels[:speed_shapes], cfg=cfg, steps=steps, seed=seed)
    for latent in z:
        decode_mesh(gen.vae, latent, speed_resolution)
    out["seconds_per_shape"] = (time.perf_counter() - t0) / len(z)
    out["speed"] = {"resolution": speed_resolution, "shapes": len(z), "steps": steps}
    out["generation_resolution"] = resolution
    return out


def _training_set_scores(train_clouds, train_labels, reference, test_labels) -> dict:
    """The training set as the generator: per class its first training shapes, as many as the class's test shapes."""
    picked = []
    for c in sorted(set(test_labels)):
        rows = [i for i, lab in enumerate(train_labels) if lab == c][:test_labels.count(c)]
        picked += rows
    return generation_scores([train_clouds[i] for i in picked], reference) | {"empty": 0}
