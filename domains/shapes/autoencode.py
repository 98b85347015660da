"""Training, loading and using the shape VAE: encode a mesh, decode latents to occupancy and a mesh, score it.

Training goes through the core's trainer (:func:`sciar.train.train`: resume,
best-by-validation weights, logs), with batches from a prepared cache. The
checkpoint is a sciar checkpoint of domain ``shapes`` and role ``vae``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import trimesh

from domains.shapes.batches import ShapeBatches
from domains.shapes.extract import extract_mesh
from domains.shapes.vae import PRESETS, ShapeVAE
from sciar.errors import CheckpointError, SciarError

DOMAIN = "shapes"
ROLE = "vae"
QUERY_BATCH = 65536  # decoder queries per forward pass when meshing


def train_vae(cache: str | Path, out: str | Path, preset: str = "small", steps: int = 3000, batch_size: int = 8,
              lr: float = 5e-4, seed: int = 0, device: str = "auto", progress: bool = True,
              overrides: dict | None = None) -> dict:
    """Train a VAE on a prepared cache's train split (validation on its val split); returns the trainer's summary."""
    from sciar.train import TrainConfig, train

    if preset not in PRESETS:
        raise SciarError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    cfg = replace(PRESETS[preset], **(overrides or {}))
    source = ShapeBatches(cache, cfg.surface_points, cfg.query_points)
    torch.manual_seed(seed)
    model = ShapeVAE(cfg)
    tcfg = TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr, min_lr=lr / 10,
                       warmup_steps=min(200, max(1, steps // 10)), weight_decay=0.01,
                       eval_every=max(1, min(250, steps // 4)), eval_batches=8, save_every=max(1, min(250, steps // 4)),
                       seed=seed, device=device, progress=progress)
    domain = {"domain": DOMAIN, "role": ROLE, "preset": preset, "data_fingerprint": source.fingerprint(),
              "train_meshes": len(source.splits["train"]), "val_meshes": len(source.splits["val"])}
    return train(model, source, tcfg, out, {"model": cfg.to_dict()}, None, domain)


def load_vae(path: str | Path, device: str = "cpu") -> ShapeVAE:
    """A trained VAE from its checkpoint directory; raises :class:`CheckpointError` for anything else."""
    from sciar.checkpoint import load_model

    model, ck = load_model(path, DOMAIN, device)
    if ck.domain.get("role") != ROLE:
        raise CheckpointError(f"{path} is a shapes {ck.domain.get('role')!r} checkpoint, not a VAE")
    return model


@torch.no_grad()
def encode(model: ShapeVAE, surface: np.ndarray, normals: np.ndarray) -> torch.Tensor:
    """The posterior mean ``(num_latents, latent_dim)`` of one shape's surface points and normals."""
    dev = next(model.parameters()).device
    mean, _ = model.encode(torch.as_tensor(surface, dtype=torch.float32, device=dev)[None],
                           torch.as_tensor(normals, dtype=torch.float32, device=dev)[None])
    return mean[0]


class OccupancyField:
    """The decoder's occupancy logit of one set of latents, as a field for :func:`extract_mesh` (positive inside)."""

    @torch.no_grad()
    def __init__(self, model: ShapeVAE, latents: torch.Tensor):
        self.model = model
        self.features = model.decode(latents[None])

    @torch.no_grad()
    def __call__(self, points: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(points), QUERY_BATCH):
            p = torch.as_tensor(points[i:i + QUERY_BATCH], dtype=torch.float32, device=self.features.device)
            out.append(self.model.occupancy_logits(self.features, p[None])[0].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


def decode_mesh(model: ShapeVAE, latents: torch.Tensor, resolution: int = 128) -> tuple[OccupancyField, trimesh.Trimesh]:
    field = OccupancyField(model, latents)
    return field, extract_mesh(field, resolution=resolution)


@torch.no_grad()
def encode_cache(model: ShapeVAE, cache: str | Path, out: str | Path, seed: int = 0, progress: bool = True) -> dict:
    """Encode every usable mesh of a prepared cache and write ``out`` (safetensors), atomically.

    Holds ``latents`` ``(N, num_latents, latent_dim)`` (posterior means) and, as
    metadata, each mesh's path, class and split, and the latents' scale: the mean
    and standard deviation over the training split, which a generator divides out
    so that it works on unit-scale tokens (as latent diffusion does).
    """
    import json

    from safetensors.torch import save_file
    from tqdm import tqdm

    from domains.shapes.cache import read_entry, read_index
    from sciar.io import atomic_path

    index = read_index(cache)
    rng = np.random.default_rng(seed)
    latents = []
    for file in tqdm(index["file"], desc="encode", unit="mesh", disable=not progress):
        arrays, _ = read_entry(file)
        if len(arrays["surface"]) < model.cfg.surface_points:
            raise SciarError(f"{cache}: {len(arrays['surface'])} surface points cached per mesh, the VAE reads "
                             f"{model.cfg.surface_points}; prepare again with --surface-points {model.cfg.surface_points}")
        pick = rng.choice(len(arrays["surface"]), model.cfg.surface_points, replace=False)
        latents.append(encode(model, arrays["surface"][pick], arrays["normals"][pick]).cpu())
    z = torch.stack(latents).float().contiguous()
    train = torch.tensor((index["split"] == "train").to_numpy(copy=True))
    ref = z[train] if train.any() else z
    meta = {"paths": list(index["path"]), "labels": list(index["label"]), "splits": list(index["split"]),
            "mean": float(ref.mean()), "std": float(ref.std())}
    with atomic_path(out) as tmp:
        save_file({"latents": z}, str(tmp), metadata={"shapes": json.dumps(meta)})
    return meta | {"count": len(z)}


def read_latents(path: str | Path) -> tuple[torch.Tensor, dict]:
    """Latents written by :func:`encode_cache` and their metadata; raises :class:`SciarError` for other files."""
    import json

    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["shapes"])
            return f.get_tensor("latents"), meta
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise SciarError(f"{path}: not a latents file written by 'sciar shapes encode' ({e})") from None
