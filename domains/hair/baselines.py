"""The condition a model sees, and the baselines a model must beat, all from the same condition.

- condition: 2,048 points sampled from the target's card surface, Gaussian noise of 2 mm, points inside the head
  removed (as CHARM's point-cloud condition);
- ``retrieval``: the training hairstyle whose own clean 2,048-point sample is nearest the condition (symmetric
  Chamfer distance);
- ``geometric_fit``: cards fitted directly to the condition points (:func:`domains.hair.strands.points_to_cards`);
- ``quantised``: the target itself as the tokens hold it (the floor the bins set).
"""

from __future__ import annotations

import numpy as np

from domains.hair.metrics import sample_surface

N_CONDITION = 2048
NOISE = 0.002


def condition_points(cards: list[np.ndarray], head, seed: int = 0, n: int = N_CONDITION, noise: float = NOISE,
                     mesh=None) -> np.ndarray:
    """The condition cloud of a hairstyle (metres); ``mesh``: its card mesh, if already built (several clouds of one)."""
    rng = np.random.default_rng(seed)
    p = sample_surface(cards, head, 3 * n, seed, mesh) + rng.normal(0, noise, (3 * n, 3))
    p = p[~head.inside(p)]
    return p[rng.permutation(len(p))[:n]]


class Retrieval:
    """Nearest-neighbour retrieval over a training set by the symmetric Chamfer distance of point samples."""

    def __init__(self, hairstyles: list[list[np.ndarray]], head, seed: int = 0):
        from scipy.spatial import cKDTree
        from tqdm import tqdm

        self.hairstyles = hairstyles
        self.clouds = [sample_surface(h, head, N_CONDITION, seed + i) for i, h in enumerate(tqdm(hairstyles, desc="retrieval index"))]
        self.trees = [cKDTree(c) for c in self.clouds]

    def nearest(self, points: np.ndarray) -> int:
        from scipy.spatial import cKDTree

        q = cKDTree(points)
        d = [(t.query(points)[0] ** 2).mean() + (q.query(c)[0] ** 2).mean() for t, c in zip(self.trees, self.clouds)]
        return int(np.argmin(d))

    def __call__(self, points: np.ndarray) -> list[np.ndarray]:
        return self.hairstyles[self.nearest(points)]
