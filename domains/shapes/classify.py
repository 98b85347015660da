"""The point-cloud classifier that labels generated shapes (the benchmark's class-conditional accuracy).

Features are shape distributions (Osada et al. 2002) of a cloud of surface points, made
invariant to position, scale and every rotation, so that a generated shape is read the
same way whatever pose and size its decoder gave it:

- D2: histogram of the distances between random pairs of points;
- D1: histogram of the distances of the points from their centroid;
- A3: histogram of the angles at the middle point of random triples;
- the principal variances' shares (sorted) and a histogram of each point's distance to its
  k-th nearest neighbour (how thin the parts are).

All lengths are divided by the cloud's RMS radius first. A scikit-learn model (standardised
features, an RBF support-vector machine) is fitted to the train split's cached surface points
(several farthest-point subsets per mesh); the validation split chooses its regularisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from sciar.errors import SciarError

CLOUD_POINTS = 2048  # points per cloud, as the generation metrics use
PAIRS = 20_000  # random pairs (D2) and triples (A3) per cloud
BINS = 24


def cloud_features(points: np.ndarray, seed: int = 0) -> np.ndarray:
    """The rotation-, scale- and translation-invariant feature vector of one point cloud ``[N, 3]``."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) < 16 or not np.isfinite(p).all():
        raise SciarError(f"a point cloud must be at least 16 finite points [N, 3], got shape {list(p.shape)}")
    p = p - p.mean(0)
    radius = np.sqrt((p**2).sum(1).mean())
    if radius <= 0:
        raise SciarError("a point cloud with all points at one place has no shape")
    p = p / radius
    rng = np.random.default_rng(seed)
    i, j, k = (rng.integers(len(p), size=PAIRS) for _ in range(3))
    d2 = np.linalg.norm(p[i] - p[j], axis=1)
    d1 = np.linalg.norm(p, axis=1)
    u, v = p[i] - p[j], p[k] - p[j]
    cos = (u * v).sum(1) / np.maximum(np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1), 1e-12)
    a3 = np.arccos(np.clip(cos, -1, 1))
    var = np.sort(np.linalg.eigvalsh(np.cov(p.T)))[::-1]
    knn = cKDTree(p).query(p, 9)[0][:, -1]
    hist = [np.histogram(d2, BINS, (0, 4))[0] / PAIRS, np.histogram(d1, BINS, (0, 3))[0] / len(p),
            np.histogram(a3, BINS, (0, np.pi))[0] / PAIRS, np.histogram(knn, BINS, (0, 0.4))[0] / len(p)]
    return np.concatenate([*hist, var / var.sum(), [d1.std(), np.median(d2), np.median(knn)]])


@dataclass
class ShapeClassifier:
    """A fitted classifier over :func:`cloud_features`; ``classes[i]`` names label ``i``."""

    model: object
    classes: list[str]

    def predict(self, clouds: list[np.ndarray], seed: int = 0) -> list[str]:
        x = np.stack([cloud_features(c, seed + n) for n, c in enumerate(clouds)])
        return [self.classes[i] for i in self.model.predict(x)]

    def accuracy_of_meshes(self, meshes, labels: list[str], seed: int = 0) -> float:
        """The share of ``meshes`` labelled right, each read as :data:`CLOUD_POINTS` farthest-point surface samples
        (as the training clouds are); a mesh without faces counts as wrong."""
        from domains.shapes.sampling import spread_surface

        if not len(meshes):
            raise SciarError("no meshes to classify")
        right = 0
        for i, (mesh, label) in enumerate(zip(meshes, labels)):
            if len(mesh.faces):
                cloud = spread_surface(mesh, CLOUD_POINTS, np.random.default_rng(seed + i))[0]
                right += self.predict([cloud], seed + i)[0] == label
        return right / len(meshes)

    def accuracy(self, clouds: list[np.ndarray], labels: list[str], seed: int = 0) -> float:
        if not len(clouds):
            raise SciarError("no clouds to classify")
        return float(np.mean(np.asarray(self.predict(clouds, seed)) == np.asarray(labels)))


def _cache_features(cache, split: str, views: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Features of ``views`` farthest-point subsets of each cached mesh of ``split``, and their classes."""
    from domains.shapes.cache import read_entry, read_index
    from domains.shapes.sampling import farthest_points

    index = read_index(cache, split)
    rng = np.random.default_rng(seed)
    x, y = [], []
    for file, label in zip(index["file"], index["label"]):
        surface = read_entry(file)[0]["surface"]
        for _ in range(views):
            x.append(cloud_features(surface[farthest_points(surface, CLOUD_POINTS, rng)], int(rng.integers(2**31))))
            y.append(str(label))
    return np.asarray(x), y


def train_classifier(cache, views: int = 4, seed: int = 0, regularisation=(1.0, 3.0, 10.0, 30.0, 100.0)
                     ) -> tuple[ShapeClassifier, dict]:
    """An SVM on the train split's cached surface points; ``C`` chosen by accuracy on the val split (then refitted on
    train only, so val stays clean for the generator's choices). Returns the classifier and its val accuracies."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    x, y = _cache_features(cache, "train", views, seed)
    if len(set(y)) < 2:
        raise SciarError(f"{cache}: a classifier needs at least 2 classes in the train split")
    classes = sorted(set(y))
    yi = np.array([classes.index(c) for c in y])
    xv, yv = _cache_features(cache, "val", 1, seed + 1)
    scores, best = {}, None
    for c in regularisation:
        model = make_pipeline(StandardScaler(), SVC(C=c, gamma="scale")).fit(x, yi)
        clf = ShapeClassifier(model, classes)
        if len(xv):
            scores[c] = float(np.mean(np.array(classes)[model.predict(xv)] == np.array(yv)))
        if best is None or (len(xv) and scores[c] > scores[best[0]]):
            best = (c, clf)
    return best[1], {"C": best[0], "val_accuracy": scores}
