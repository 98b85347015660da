"""Training batches for the shape VAE from a prepared cache (``sciar shapes prepare``).

Every usable mesh of the train and val splits is held in memory (a few hundred
kilobytes each). A batch picks shapes, a random subset of each one's surface
points, and query points half from near the surface and half from the uniform
ones; training batches are augmented (rotation about the vertical axis, small
scaling). Everything random comes from the trainer's per-step generator, so a
resumed run sees the same batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from domains.shapes.cache import read_entry, read_index
from domains.shapes.sampling import augment
from sciar.errors import DataError
from sciar.io import fingerprint


class ShapeBatches:
    def __init__(self, cache: str | Path, surface_points: int, query_points: int, augment_train: bool = True):
        self.cache = Path(cache)
        self.surface_points, self.query_points, self.augment_train = surface_points, query_points, augment_train
        self.splits = {s: [self._read(f) for f in read_index(cache, s)["file"]] for s in ("train", "val")}
        if not self.splits["train"]:
            raise DataError(f"{cache}: no training meshes in the cache")
        stored = min(len(s["surface"]) for s in self.splits["train"])
        if stored < surface_points:
            raise DataError(f"{cache}: {stored} surface points per mesh cached, {surface_points} asked; prepare again "
                            f"with --surface-points {surface_points}")

    @staticmethod
    def _read(path) -> dict:
        arrays, meta = read_entry(path)
        arrays["near"] = meta["sampling"]["near_points"]  # the cache stores the near-surface queries first
        return arrays

    @property
    def has_val(self) -> bool:
        return bool(self.splits["val"])

    def fingerprint(self) -> str:
        index = read_index(self.cache)
        return fingerprint(sorted(index["key"]))

    def _one(self, s: dict, rng: np.random.Generator, train: bool) -> dict[str, np.ndarray]:
        n_near, n_far = s["near"], len(s["queries"]) - s["near"]
        want_near = self.query_points // 2 if n_near and n_far else (self.query_points if n_near else 0)
        want_far = self.query_points - want_near
        pick = np.r_[rng.choice(n_near, want_near, replace=n_near < want_near),
                     n_near + rng.choice(n_far, want_far, replace=n_far < want_far)].astype(np.int64)
        surf = rng.choice(len(s["surface"]), self.surface_points, replace=False)
        sample = {"surface": s["surface"][surf], "normals": s["normals"][surf], "queries": s["queries"][pick],
                  "occupancy": s["occupancy"][pick]}
        return augment(sample, rng) if train and self.augment_train else sample

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        shapes = self.splits[split]
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        picks = rng.integers(len(shapes), size=batch_size)
        items = [self._one(shapes[i], rng, split == "train") for i in picks]
        return {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in items[0]}
