"""CHARM's metrics between two card sets, on their mesh surfaces in the head frame (millimetres).

- ``chamfer``: mean squared nearest-neighbour distance from A to B plus that from B to A, on 10,000 surface
  samples each (mm^2);
- ``emd``: Earth Mover's distance on 1,000 samples each: the mean distance of the optimal one-to-one matching
  (scipy's ``linear_sum_assignment``), mm;
- ``hausdorff``: the larger of the two largest nearest-neighbour distances on the 10,000 samples, mm;
- ``iou``: the two surfaces' occupied voxels (samples binned on a grid of cell ``head height / 32`` anchored at the
  token frame's origin) as intersection over union.

Chamfer (the two directions added), EMD and Hausdorff are the core's (:mod:`sciar.pointcloud`).
"""

from __future__ import annotations

import numpy as np

from sciar.pointcloud import chamfer, emd, hausdorff

N_SURFACE = 10_000
N_EMD = 1_000
VOXELS_PER_HEAD = 32


def sample_surface(cards: list[np.ndarray], head, n: int, seed: int = 0, mesh=None) -> np.ndarray:
    """``n`` area-uniform random points on the cards' mesh (metres); ``mesh``: that mesh, if already built."""
    import trimesh

    from domains.hair.mesh import to_mesh

    return np.asarray(trimesh.sample.sample_surface(to_mesh(cards, head) if mesh is None else mesh, n, seed=seed)[0])


def voxel_iou(a: np.ndarray, b: np.ndarray, voxel: float, origin=np.zeros(3)) -> float:
    va = {tuple(v) for v in np.floor((a - origin) / voxel).astype(np.int64)}
    vb = {tuple(v) for v in np.floor((b - origin) / voxel).astype(np.int64)}
    return len(va & vb) / len(va | vb) if va | vb else 1.0


def compare(pred: list[np.ndarray], target: list[np.ndarray], head, seed: int = 0) -> dict:
    """The four metrics between two card sets (mm^2, mm, mm, IoU)."""
    pa = sample_surface(pred, head, N_SURFACE, seed) * 1000
    pb = sample_surface(target, head, N_SURFACE, seed + 1) * 1000
    rng = np.random.default_rng(seed)
    ia, ib = rng.choice(N_SURFACE, N_EMD, replace=False), rng.choice(N_SURFACE, N_EMD, replace=False)
    voxel = head.height / VOXELS_PER_HEAD * 1000
    return {"chamfer": chamfer(pa, pb), "emd": emd(pa[ia], pb[ib]), "hausdorff": hausdorff(pa, pb),
            "iou": voxel_iou(pa, pb, voxel, head.origin * 1000)}
