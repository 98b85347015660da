"""Distances between point clouds ``[N, 3]``: Chamfer, F-score, Hausdorff, Earth Mover's.

Plain geometry, in the points' own units, for the domains' metrics (each domain keeps its sample
counts, units and conventions: the shapes benchmark averages Chamfer's two directions, CHARM adds
them). Nearest neighbours by scipy's k-d tree; the optimal matching by scipy's
``linear_sum_assignment``. The ``*_of`` forms take nearest distances computed once
(:func:`nearest_distances`) when several metrics read them.
"""

from __future__ import annotations

import numpy as np


def nearest_distances(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each point of ``a`` to its nearest in ``b``, and from each of ``b`` to ``a``."""
    from scipy.spatial import cKDTree

    return cKDTree(b).query(a)[0], cKDTree(a).query(b)[0]


def chamfer_of(ab: np.ndarray, ba: np.ndarray, average: bool = False) -> float:
    """Mean squared nearest distance A->B plus B->A; ``average``: half that (the mean of the two directions)."""
    total = np.mean(ab**2) + np.mean(ba**2)
    return float(total / 2 if average else total)


def chamfer(a: np.ndarray, b: np.ndarray, average: bool = False) -> float:
    """Chamfer distance of two clouds (squared units): see :func:`chamfer_of`."""
    return chamfer_of(*nearest_distances(a, b), average=average)


def fscore_of(ab: np.ndarray, ba: np.ndarray, threshold: float) -> float:
    """Harmonic mean of precision (share of ``a`` within ``threshold`` of ``b``; ``a`` the prediction) and
    recall (the converse); 0 when both are 0."""
    precision, recall = np.mean(ab < threshold), np.mean(ba < threshold)
    return float(2 * precision * recall / (precision + recall)) if precision + recall > 0 else 0.0


def fscore(pred: np.ndarray, true: np.ndarray, threshold: float) -> float:
    """F-score of a predicted cloud against a true one at a distance threshold."""
    return fscore_of(*nearest_distances(pred, true), threshold)


def hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """The larger of the two largest nearest distances (A->B, B->A)."""
    ab, ba = nearest_distances(a, b)
    return float(max(ab.max(), ba.max()))


def emd(a: np.ndarray, b: np.ndarray) -> float:
    """Earth Mover's distance of two equal-size clouds: the mean distance of the optimal one-to-one matching."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    if len(a) != len(b):
        raise ValueError("EMD needs two point sets of the same size")
    cost = cdist(a, b)
    r, c = linear_sum_assignment(cost)
    return float(cost[r, c].mean())


def chamfer_matrix(clouds_a: list[np.ndarray], clouds_b: list[np.ndarray] | None = None,
                   average: bool = False) -> np.ndarray:
    """Chamfer distances between every cloud of ``a`` (rows) and of ``b`` (columns), each cloud's k-d tree built
    once; ``b`` omitted: ``a`` with itself, each pair computed once."""
    from scipy.spatial import cKDTree

    same = clouds_b is None
    clouds_b = clouds_a if same else clouds_b
    trees_a = [cKDTree(c) for c in clouds_a]
    trees_b = trees_a if same else [cKDTree(c) for c in clouds_b]
    out = np.zeros((len(clouds_a), len(clouds_b)))
    for i, (ca, ta) in enumerate(zip(clouds_a, trees_a)):
        for j in range(i + 1 if same else 0, len(clouds_b)):
            out[i, j] = chamfer_of(trees_b[j].query(ca)[0], ta.query(clouds_b[j])[0], average)
    return out + out.T if same else out
