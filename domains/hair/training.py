"""Training the hair model on procedural hairstyles and generating cards from a point cloud with a checkpoint.

The batch source holds, per hairstyle, its tokens (cut to the context; the tiny preset's holds whole procedural
hairstyles) and ``CONDITIONS`` noisy condition clouds (:func:`domains.hair.baselines.condition_points`, seeds fixed
per hairstyle, made on its first draw); a batch draws hairstyles and one of their clouds, pads the tokens with
``-1`` rows (which the loss ignores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from domains.hair.baselines import condition_points
from domains.hair.model import PRESETS, HairModel, points_tensor
from domains.hair.tokens import PAD, decode, encode
from sciar.errors import DataError
from sciar.model import ModelConfig

CONDITIONS = 2  # noisy condition clouds per training hairstyle


class HairBatches:
    """``get_batch(split, batch_size, generator) -> {"tokens": [B, T, 6], "points": [B, N, 3]}``."""

    def __init__(self, hairstyles: list[list[np.ndarray]], splits: list[str], head, block_size: int,
                 n_points: int = 2048, conditions: int = CONDITIONS):
        if not hairstyles:
            raise DataError("no hairstyles to train on")
        train = [i for i, s in enumerate(splits) if s == "train"]
        if not train:
            raise DataError("no hairstyle of the 'train' split")
        val = [i for i, s in enumerate(splits) if s == "test"] or train
        self.rows = {"train": train, "val": val}
        self.hairstyles, self.head, self.block_size = hairstyles, head, block_size
        self.n_points, self.conditions = n_points, conditions
        self.tokens, self.points = {}, {}  # filled on a hairstyle's first draw (a card mesh and its clouds take ~0.5 s)

    def _prepare(self, i: int):
        """Tokens (cut to the context) and the condition clouds of hairstyle ``i`` (seeds fixed per hairstyle)."""
        from domains.hair.mesh import to_mesh

        if i not in self.tokens:
            c, head = self.hairstyles[i], self.head
            mesh = to_mesh(c, head)  # built once, sampled for every condition
            self.points[i] = torch.stack([points_tensor(condition_points(c, head, seed=1000 * i + k, mesh=mesh), head, self.n_points, seed=k)
                                          for k in range(self.conditions)])
            self.tokens[i] = torch.from_numpy(encode(c, head, clip=True)[: self.block_size + 1])
        return self.tokens[i], self.points[i]

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        rows = self.rows[split]
        pick = torch.randint(len(rows), (batch_size,), generator=generator).tolist()
        cond = torch.randint(self.conditions, (batch_size,), generator=generator).tolist()
        drawn = [self._prepare(rows[i]) for i in pick]
        T = max(len(t) for t, _ in drawn)
        tokens = torch.full((batch_size, T, 6), PAD, dtype=torch.long)
        for b, (t, _) in enumerate(drawn):
            tokens[b, : len(t)] = t
        return {"tokens": tokens, "points": torch.stack([p[k] for (_, p), k in zip(drawn, cond)])}


def build_model(ck) -> HairModel:
    """The untrained model a checkpoint's config describes (registered through the adapter)."""
    return HairModel(ModelConfig.from_dict(ck.config["model"]), ck.config["encoder"])


def train_model(data: str | Path, preset_name: str, out: str | Path, steps: int | None = None,
                batch_size: int | None = None, lr: float | None = None, ema: float | None = None,
                progress: bool = True) -> dict:
    """Train a preset on a procedural set (``sciar hair procedural``'s folder); checkpoints under ``out``."""
    from domains.hair.files import read_set
    from domains.hair.head import load_head
    from sciar.io import fingerprint
    from sciar.presets import choose, override, train_budget
    from sciar.train import TrainConfig, train

    preset = choose(PRESETS, preset_name)
    hairstyles, styles = read_set(data)
    head = load_head()
    model = HairModel.from_preset(preset)
    source = HairBatches(hairstyles, list(styles["split"]), head, model.cfg.block_size)
    tcfg = TrainConfig.from_dict(override(train_budget(preset["train"], steps, batch_size, lr), ema=ema, progress=progress))
    config = {"model": model.cfg.to_dict(), "encoder": preset["encoder"], "preset": preset_name}
    domain = {"domain": "hair", "data_fingerprint": fingerprint([Path(data) / "hairstyles.parquet", Path(data) / "styles.csv"])}
    return train(model, source, tcfg, out, config, None, domain)


def load_hair_model(checkpoint: str | Path, ema: bool | None = None) -> HairModel:
    """A hair checkpoint (a folder or a shipped name)'s model in eval mode; bad checkpoints: one line.

    ``ema``: its moving-average weights (``None``: those where the checkpoint has them, as its validation scored)."""
    from sciar.checkpoint import load_model

    return load_model(checkpoint, domain="hair", ema=ema)[0]


def generate_cards(points: np.ndarray, model: HairModel, head, n: int = 1, top_k: int | None = 10,
                   temperature: float = 1.0, seed: int = 0, max_len: int | None = None) -> list[list[np.ndarray]]:
    """``n`` hairstyles (cards in metres) for one point cloud (metres, head frame)."""
    cloud = points_tensor(points, head, seed=seed)[None].expand(n, -1, -1)
    seqs = model.generate(cloud, max_len, temperature, top_k, torch.Generator().manual_seed(seed))
    return [decode(s, head) for s in seqs]
