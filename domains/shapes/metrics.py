"""Shape metrics, as defined for this domain's benchmark (all in the normalised frame).

Reconstruction:
- volume IoU: on 100,000 points uniform in [-1, 1]^3, |pred inside AND true inside| / |pred inside OR true inside|;
- Chamfer distance: the mean of the squared nearest-neighbour distances in both directions between
  10,000 surface samples of each mesh, i.e. (mean_a d(a, B)^2 + mean_b d(b, A)^2) / 2;
- F-score at a threshold t (0.02 and 0.04: 1% and 2% of the cube's side): the harmonic mean of
  precision (share of predicted samples within t of the true surface) and recall (the converse).

Generation, from a matrix of Chamfer distances between sets of point clouds (2,048 points each):
- COV: the share of reference shapes that are the nearest reference of some generated shape;
- MMD: the mean over reference shapes of the distance to the nearest generated shape;
- 1-NNA: the accuracy of a leave-one-out 1-nearest-neighbour classifier telling generated from
  reference in their union (50% when the two are indistinguishable, 100% when apart);
- memorised share: the share of generated shapes closer to a training shape than the median test
  shape is to its nearest training shape.

The point-cloud distances themselves are the core's (:mod:`sciar.pointcloud`).
"""

from __future__ import annotations

import numpy as np
import trimesh

from sciar import pointcloud
from sciar.pointcloud import fscore_of, nearest_distances

IOU_POINTS = 100_000
SURFACE_POINTS = 10_000
CLOUD_POINTS = 2_048
FSCORE_THRESHOLDS = (0.02, 0.04)


def uniform_points(n: int = IOU_POINTS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3))


def volume_iou(pred_inside: np.ndarray, true_inside: np.ndarray) -> float:
    """IoU of two inside/outside labellings of the same points (1 when both are empty)."""
    pred_inside, true_inside = np.asarray(pred_inside, bool), np.asarray(true_inside, bool)
    union = np.logical_or(pred_inside, true_inside).sum()
    return float(np.logical_and(pred_inside, true_inside).sum() / union) if union else 1.0


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of the squared nearest-neighbour distances in both directions (this benchmark averages the two)."""
    return pointcloud.chamfer(a, b, average=True)


def surface_samples(mesh: trimesh.Trimesh, n: int = SURFACE_POINTS, seed: int = 0) -> np.ndarray:
    """``n`` area-uniform surface points (seeded), or an empty array for a mesh without faces."""
    if len(mesh.faces) == 0:
        return np.zeros((0, 3))
    return np.asarray(trimesh.sample.sample_surface(mesh, n, seed=seed)[0])


def reconstruction_metrics(true_inside: np.ndarray, pred_inside: np.ndarray, true_surface: np.ndarray,
                           pred_surface: np.ndarray) -> dict[str, float]:
    """IoU, Chamfer and F-scores; Chamfer is infinite and F-scores 0 when the prediction has no surface."""
    out = {"iou": volume_iou(pred_inside, true_inside)}
    if len(pred_surface) == 0:
        return out | {"chamfer": float("inf"), "fscore_002": 0.0, "fscore_004": 0.0}
    ab, ba = nearest_distances(pred_surface, true_surface)
    out["chamfer"] = pointcloud.chamfer_of(ab, ba, average=True)
    for t in FSCORE_THRESHOLDS:
        out[f"fscore_{int(round(t * 100)):03d}"] = fscore_of(ab, ba, t)
    return out


def chamfer_matrix(clouds_a: list[np.ndarray], clouds_b: list[np.ndarray] | None = None) -> np.ndarray:
    """Chamfer distances (:func:`chamfer`) between every cloud of ``a`` (rows) and of ``b`` (columns); ``b``
    omitted: ``a`` with itself, each pair computed once."""
    return pointcloud.chamfer_matrix(clouds_a, clouds_b, average=True)


def coverage(d_gen_ref: np.ndarray) -> float:
    """COV from distances generated (rows) x reference (columns)."""
    return float(len(np.unique(d_gen_ref.argmin(1))) / d_gen_ref.shape[1])


def minimum_matching_distance(d_gen_ref: np.ndarray) -> float:
    """MMD from distances generated (rows) x reference (columns)."""
    return float(d_gen_ref.min(0).mean())


def one_nn_accuracy(d_gen_ref: np.ndarray, d_gen_gen: np.ndarray, d_ref_ref: np.ndarray) -> float:
    """1-NNA over the union of generated and reference shapes; each shape's own distance is left out."""
    n_gen = len(d_gen_gen)
    full = np.block([[d_gen_gen, d_gen_ref], [d_gen_ref.T, d_ref_ref]]).astype(np.float64)
    np.fill_diagonal(full, np.inf)
    labels = np.r_[np.ones(n_gen, bool), np.zeros(len(d_ref_ref), bool)]
    return float(np.mean(labels[full.argmin(1)] == labels))


def memorised_share(d_gen_train: np.ndarray, d_test_train: np.ndarray) -> tuple[float, float]:
    """Shares of generated and of test shapes closer to a training shape than the median test shape is."""
    threshold = np.median(d_test_train.min(1))
    return float(np.mean(d_gen_train.min(1) < threshold)), float(np.mean(d_test_train.min(1) < threshold))
