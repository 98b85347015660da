"""The shape generator: class-conditional generation of the VAE's latent tokens, and its two baselines.

- **Masked** (the generator, MAR-3D's way): the core's :class:`sciar.masked.MaskedModel` (one
  bidirectional stack with a mask token, the class as a prefix token and adaptive-layer-norm
  vector, a :class:`sciar.heads.DiffusionHead` per token), trained by :func:`sciar.train.train`
  with class dropout (classifier-free guidance) and an EMA of the weights, sampled by
  :func:`sciar.decode.masked.generate` (random order, K steps on a cosine schedule).
- **Causal** (a baseline): the core's causal trunk reads the class token and the tokens before
  position ``i``, and the same diffusion head draws token ``i``; left to right in the VAE's token
  order, on the core's cached continuous decoding loop.
- **Fitted Gaussian** (a baseline): per class, the Gaussian with the mean and covariance of its
  training latents.

Every model works on unit-scale tokens: the training latents' mean and standard deviation
(:func:`domains.shapes.autoencode.encode_cache`) are divided out and kept in the checkpoint.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

from sciar.conditioning import ClassEmbedding, drop_conditions
from sciar.errors import CheckpointError, SciarError
from sciar.heads import DiffusionHead
from sciar.masked import MaskedConfig, MaskedModel
from sciar.model import ModelConfig, Transformer

if TYPE_CHECKING:
    from domains.shapes.mesh import Frame

ROLE = "generator"
KINDS = ("masked", "causal")
VAE_DIR = "vae"  # the generator's checkpoint holds a copy of its VAE here, so it is self-contained
POINT_FREQS = 6  # octaves of the point cloud's Fourier features
POINT_DIM = 3 + 6 * POINT_FREQS  # their size: the masked trunk's cross_dim when it is conditioned on points

# trunk (layers, width, heads) and diffusion head (width, depth) per size: at most 3 x 256 on the CPU (issue 30)
PRESETS = {
    "tiny": dict(n_layer=1, n_embd=32, n_head=2, head_width=32, head_depth=2),  # tests: seconds
    "small": dict(n_layer=3, n_embd=256, n_head=4, head_width=256, head_depth=3),  # the CPU size
}


def point_features(points: torch.Tensor) -> torch.Tensor:
    """Points ``[..., P, 3]`` as condition tokens ``[..., P, POINT_DIM]``: xyz, then sin and cos of xyz at
    ``POINT_FREQS`` octaves (fixed features; the trunk's cross-attention learns what to read from them)."""
    x = points[..., None] * ((2.0 ** torch.arange(POINT_FREQS, device=points.device)) * math.pi)
    return torch.cat([points, x.sin().flatten(-2), x.cos().flatten(-2)], -1)


def build_generator(kind: str, preset: str, seq_len: int, token_dim: int, num_classes: int,
                    sample_steps: int = 50, points: bool = False) -> nn.Module:
    """An untrained generator of ``kind`` (masked or causal) and size ``preset`` for latents ``[seq_len, token_dim]``;
    ``points``: the masked generator also cross-attends to a point cloud (:func:`point_features`)."""
    if points and kind != "masked":
        raise SciarError("only the masked generator is conditioned on point clouds")
    if kind not in KINDS:
        raise SciarError(f"unknown generator kind {kind!r} (choose from {', '.join(KINDS)})")
    if preset not in PRESETS:
        raise SciarError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    p = PRESETS[preset]
    masked = kind == "masked"
    cfg = ModelConfig(block_size=seq_len + 1, n_layer=p["n_layer"], n_head=p["n_head"], n_embd=p["n_embd"],
                      attention="bidirectional" if masked else "causal", cond_dim=p["n_embd"] if masked else 0,
                      cross_dim=POINT_DIM if points else 0)
    mcfg = MaskedConfig(seq_len=seq_len, token_dim=token_dim, num_classes=num_classes, class_drop=0.1, context_drop=0.1,
                        head_width=p["head_width"], head_depth=p["head_depth"], head_sample_steps=sample_steps)
    return MaskedModel(cfg, mcfg) if masked else CausalLatentModel(cfg, mcfg)


class CausalLatentModel(nn.Module):
    """Causal trunk + diffusion head: token ``i`` given the class and tokens ``< i`` (the causal baseline).

    Shares :class:`MaskedConfig` for the token shape, class dropout and head sizes (its masking
    fields are unused).
    """

    def __init__(self, cfg: ModelConfig, mcfg: MaskedConfig):
        super().__init__()
        if cfg.attention != "causal" or mcfg.num_classes < 1 or cfg.block_size < mcfg.seq_len:
            raise SciarError("the causal baseline needs a causal trunk, classes and a context of seq_len positions")
        self.cfg, self.mcfg = cfg, mcfg
        C = cfg.n_embd
        self.trunk = Transformer(cfg)
        self.proj_in = nn.Linear(mcfg.token_dim, C)
        self.classes = ClassEmbedding(mcfg.num_classes, C)
        self.head = DiffusionHead(mcfg.token_dim, C, mcfg.head_width, mcfg.head_depth, mcfg.head_steps,
                                  mcfg.head_train_mul, mcfg.head_sample_steps)

    def config(self) -> dict:
        return {"model": self.cfg.to_dict(), "masked": self.mcfg.to_dict()}

    def hidden(self, class_emb: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[B, T + 1, C]`` of the class token followed by ``tokens [B, T, D]``."""
        return self.trunk(embeds=torch.cat([class_emb[:, None], self.proj_in(tokens)], 1))

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        B = tokens.shape[0]
        drop = None
        if self.training:  # the class is this model's only condition
            drop = drop_conditions(B, {"class": self.mcfg.class_drop}, self.mcfg.cond_drop, tokens.device)["class"]
        h = self.hidden(self.classes(labels, drop, B), tokens[:, :-1])
        return self.head.loss(h, tokens)


@torch.no_grad()
def generate_causal(model: CausalLatentModel, labels: torch.Tensor, cfg: float = 1.0, temperature: float = 1.0,
                    head_steps: int | None = None, seed: int = 0) -> torch.Tensor:
    """Tokens ``[B, L, D]`` left to right on the core's cached loop (:func:`sciar.decode.continuous.decode_continuous`);
    guidance ramps with the share of tokens known, as in masked decoding; each row's noise from its own generator."""
    from sciar.decode.continuous import Step, decode_continuous
    from sciar.decode.masked import guidance_scale, row_generators

    if not cfg >= 1.0:
        raise SciarError(f"guidance scale cfg={cfg} is below 1 (1 = no guidance)")
    labels = torch.as_tensor(labels)
    B, L = len(labels), model.mcfg.seq_len
    gens = row_generators(seed, B)
    guided = cfg > 1.0
    if guided:
        emb = model.classes(torch.cat([labels, labels]), torch.arange(2 * B) >= B, 2 * B)
    else:
        emb = model.classes(labels, None, B)

    def step(h: torch.Tensor, i: int, rows: torch.Tensor) -> Step:  # no row ends early: rows are all of them
        # guided: the conditioned rows first, the unconditioned second, as the head takes them; both halves read
        # the token drawn for their row
        new = model.head.sample(h, temperature, guidance_scale(cfg, i + 1, L) if guided else 1.0, head_steps, gens)
        new = new.repeat(2, 1) if guided else new
        return Step(values=new, embeds=model.proj_in(new))

    return decode_continuous(model.trunk, emb[:, None], step, L).values[:B]


class FittedGaussian:
    """Per class, the Gaussian of its training latents' mean and covariance (flattened ``L * D`` numbers).

    With fewer shapes than dimensions the covariance is low-rank, so a draw is the mean plus a
    Gaussian combination of the centred training latents, ``x = mu + X^T w / sqrt(n - 1)`` with
    ``w ~ N(0, I_n)``: exactly the fitted covariance ``X^T X / (n - 1)``, without its 4,096^2 matrix.
    """

    def __init__(self, latents: torch.Tensor, labels: torch.Tensor, num_classes: int):
        z = latents.reshape(len(latents), -1).double()
        self.shape = tuple(latents.shape[1:])
        self.means, self.deviations = [], []
        for c in range(num_classes):
            zc = z[labels == c]
            if len(zc) < 2:
                raise SciarError(f"class {c} has {len(zc)} training latents; a covariance needs at least 2")
            mu = zc.mean(0)
            self.means.append(mu)
            self.deviations.append((zc - mu) / (len(zc) - 1) ** 0.5)

    def covariance(self, c: int) -> torch.Tensor:
        return self.deviations[c].T @ self.deviations[c]

    def sample(self, labels, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        rows = []
        for c in torch.as_tensor(labels).tolist():
            w = torch.randn(len(self.deviations[c]), generator=g, dtype=torch.float64)
            rows.append(self.means[c] + w @ self.deviations[c])
        return torch.stack(rows).float().reshape(-1, *self.shape)


class LatentSet:
    """Training batches of unit-scale latents and class indices (a :class:`sciar.train.BatchSource`)."""

    def __init__(self, latents: torch.Tensor, meta: dict, classes: list[str] | None = None,
                 points: torch.Tensor | None = None, cond_points: int = 2048):
        """``points [N, P, 3]`` (one cloud per latent set, normalised frame): batches also hold ``context``,
        ``cond_points`` of each cloud drawn at random as :func:`point_features`."""
        self.cond_points = cond_points
        self.mean, self.std = float(meta["mean"]), float(meta["std"])
        labels, splits = list(meta["labels"]), np.asarray(meta["splits"])
        self.classes = classes or sorted({str(c) for c, s in zip(labels, splits) if s == "train"})
        if not self.classes:
            raise SciarError("no training latents (no mesh in the train split)")
        index = {c: i for i, c in enumerate(self.classes)}
        keep = np.array([str(c) in index for c in labels])
        self.z = ((latents.float() - self.mean) / self.std)[torch.as_tensor(keep)]
        self.y = torch.tensor([index[str(c)] for c in np.asarray(labels)[keep]], dtype=torch.long)
        self.points = None if points is None else points.float()[torch.as_tensor(keep)]
        self.rows = {s: torch.as_tensor(np.flatnonzero(splits[keep] == s)) for s in ("train", "val", "test")}
        if not len(self.rows["train"]):
            raise SciarError("no training latents (no mesh in the train split)")
        self.has_val = len(self.rows["val"]) > 0

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        rows = self.rows[split]
        pick = rows[torch.randint(len(rows), (batch_size,), generator=generator)]
        batch = {"tokens": self.z[pick], "labels": self.y[pick]}
        if self.points is not None:
            P = self.points.shape[1]
            sub = torch.rand(batch_size, P, generator=generator).argsort(1)[:, :min(self.cond_points, P)]
            batch["context"] = point_features(self.points[pick[:, None], sub])
        return batch

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-scale latents and class indices of one split."""
        return self.z[self.rows[name]], self.y[self.rows[name]]


def cached_latents(vae_path: str | Path, cache: str | Path, progress: bool = True) -> tuple[torch.Tensor, dict]:
    """The posterior means of every cached mesh under this VAE, encoded once and kept in ``CACHE/latents/``.

    The file is named by the VAE's weights checksum, so another VAE (or retrained weights) encodes again.
    """
    from domains.shapes.autoencode import encode_cache, load_vae, read_latents
    from sciar.checkpoint import read_checkpoint

    sha = read_checkpoint(vae_path, domain="shapes").domain["weights_sha256"]
    path = Path(cache) / "latents" / f"{sha[:16]}.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        encode_cache(load_vae(vae_path), cache, path, progress=progress)
    return read_latents(path)


def cached_surfaces(cache: str | Path, paths: list[str]) -> torch.Tensor:
    """The cached surface points ``[N, P, 3]`` of the meshes at ``paths`` (a latents file's order)."""
    from domains.shapes.cache import read_entry, read_index

    files = dict(zip(read_index(cache)["path"], read_index(cache)["file"]))
    missing = [p for p in paths if p not in files]
    if missing:
        raise SciarError(f"{cache}: no cached samples for {missing[0]} (prepare the cache again)")
    return torch.stack([torch.as_tensor(read_entry(files[p])[0]["surface"]) for p in paths]).float()


def train_generator(vae: str | Path, cache: str | Path, out: str | Path, kind: str = "masked", preset: str = "small",
                    steps: int = 5000, batch_size: int = 32, lr: float = 4e-4, ema: float = 0.999, seed: int = 0,
                    device: str = "auto", progress: bool = True, points: int = 0) -> dict:
    """Train a generator on a cache's latents under ``vae`` (train split; validation on val); the trainer's summary.

    ``points > 0``: the masked generator is also conditioned on that many of each shape's cached surface points.
    """
    from sciar.checkpoint import read_checkpoint
    from sciar.train import TrainConfig, train

    latents, meta = cached_latents(vae, cache, progress)
    clouds = cached_surfaces(cache, meta["paths"]) if points else None
    data = LatentSet(latents, meta, points=clouds, cond_points=points or 2048)
    torch.manual_seed(seed)
    model = build_generator(kind, preset, latents.shape[1], latents.shape[2], len(data.classes), points=bool(points))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / VAE_DIR).is_dir():
        shutil.copytree(vae, out / VAE_DIR, ignore=shutil.ignore_patterns("last", "*.csv", "*.png"))
    vae_meta = read_checkpoint(out / VAE_DIR, domain="shapes").domain
    tcfg = TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr, min_lr=lr / 10, warmup_steps=min(100, max(1, steps // 10)),
                       weight_decay=0.02, eval_every=max(1, min(250, steps // 4)), eval_batches=4,
                       save_every=max(1, min(250, steps // 4)), seed=seed, device=device, progress=progress, ema=ema)
    domain = {"domain": "shapes", "role": ROLE, "kind": kind, "preset": preset, "classes": data.classes,
              "latent_mean": data.mean, "latent_std": data.std, "points": points, "vae_weights_sha256": vae_meta["weights_sha256"],
              "data_fingerprint": vae_meta.get("data_fingerprint"), "train_shapes": len(data.rows["train"])}
    return train(model, data, tcfg, out, model.config(), None, domain)


@dataclass
class Generator:
    """A trained generator with what it needs to make meshes: its VAE, classes and latent scale."""

    model: nn.Module
    kind: str
    classes: list[str]
    mean: float
    std: float
    vae: nn.Module
    points: int = 0  # surface points per cloud it was trained on (0: not conditioned on points)

    def label(self, name: str) -> int:
        if name not in self.classes:
            raise SciarError(f"unknown class {name!r}; this generator knows: {', '.join(self.classes)}")
        return self.classes.index(name)

    def latents(self, labels: list[int], cfg: float = 1.0, steps: int = 16, temperature: float = 1.0,
                head_steps: int | None = None, seed: int = 0, progress: bool = False,
                points: torch.Tensor | None = None) -> torch.Tensor:
        """Latents ``[B, L, D]`` in the VAE's scale for class indices ``labels`` (and point clouds ``[B, P, 3]``
        in the normalised frame, for a generator trained with them)."""
        from sciar.decode.masked import generate

        labels = torch.as_tensor(labels, dtype=torch.long)
        if points is not None and not self.model.cfg.cross_dim:
            raise SciarError("this generator was not trained on point clouds (sciar shapes train --points N)")
        if self.kind == "masked":
            z = generate(self.model, labels=labels, steps=steps, cfg=cfg, temperature=temperature, head_steps=head_steps,
                         seed=seed, progress=progress, context=None if points is None else point_features(points))
        else:
            z = generate_causal(self.model, labels, cfg, temperature, head_steps, seed)
        return z * self.std + self.mean


def load_generator(path: str | Path, device: str = "cpu") -> Generator:
    """A generator checkpoint (EMA weights when it has them) and its VAE; :class:`CheckpointError` for anything else."""
    from domains.shapes.autoencode import load_vae
    from sciar.checkpoint import load_model

    model, ck = load_model(path, "shapes", device, ema=None)  # the moving average where there is one
    if ck.domain.get("role") != ROLE:
        raise CheckpointError(f"{path} is a shapes {ck.domain.get('role')!r} checkpoint, not a generator")
    kind, mcfg = ck.domain.get("kind"), model.mcfg
    try:
        classes, mean, std = list(ck.domain["classes"]), float(ck.domain["latent_mean"]), float(ck.domain["latent_std"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: domain.json does not describe a shape generator ({e})") from None
    vae = load_vae(ck.path / VAE_DIR, device)
    if (vae.cfg.num_latents, vae.cfg.latent_dim) != (mcfg.seq_len, mcfg.token_dim):
        raise CheckpointError(f"{path}: its VAE's latents are not the generator's tokens")
    return Generator(model.eval(), kind, classes, mean, std, vae, int(ck.domain.get("points") or 0))


def export_generator(run: str | Path, out: str | Path) -> Path:
    """A trained generator's run directory as a checkpoint to ship: the moving average (what sampling uses) as its
    only weights, its VAE without training state, and the training command and data fingerprint kept as recorded.
    Written into a fresh ``out``; the result loads with :func:`load_generator`."""
    import json

    from sciar.checkpoint import read_checkpoint
    from sciar.io import sha256_file

    ck = read_checkpoint(run, domain="shapes")
    if ck.domain.get("role") != ROLE:
        raise CheckpointError(f"{run} is not a shape generator checkpoint")
    out = Path(out)
    if out.exists():
        raise SciarError(f"{out} exists; export writes a fresh directory")
    weights = ck.path / ("ema.safetensors" if "ema_sha256" in ck.domain else "model.safetensors")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(weights, tmp / "model.safetensors")
    for name in ("config.json", "tokenizer.json", "train_log.csv", "loss.png"):
        if (ck.path / name).is_file():
            shutil.copyfile(ck.path / name, tmp / name)
    shutil.copytree(ck.path / VAE_DIR, tmp / VAE_DIR, ignore=shutil.ignore_patterns("last", ".ckpt-*"))
    meta = {k: v for k, v in ck.domain.items() if k != "ema_sha256"}
    meta |= {"weights": "the moving average of the run's weights" if weights.name.startswith("ema") else "the run's weights",
             "weights_sha256": sha256_file(tmp / "model.safetensors")}
    (tmp / "domain.json").write_text(json.dumps(meta, indent=1, default=str))
    os.replace(tmp, out)
    load_generator(out)  # it must load as it is
    return out


def read_points(path: str | Path, n: int = 2048, seed: int = 0) -> tuple[np.ndarray, Frame]:
    """``n`` points of a point cloud or mesh file in the normalised frame, and that frame (to map results back).

    A mesh's points are sampled from its surface, area-uniform; a cloud's are drawn from its points.
    """
    import trimesh

    from domains.shapes.mesh import Frame  # noqa: F811 (the annotation's name, imported for use)
    from sciar.errors import DataError

    try:
        loaded = trimesh.load(str(path))
    except Exception as e:  # trimesh raises many kinds for unreadable files
        raise DataError(f"{path}: not a readable point cloud or mesh ({type(e).__name__}: {e})") from None
    if isinstance(loaded, trimesh.Scene):
        loaded = loaded.dump(concatenate=True) if loaded.geometry else None
    rng = np.random.default_rng(seed)
    if isinstance(loaded, trimesh.Trimesh) and len(loaded.faces):
        pts = np.asarray(trimesh.sample.sample_surface(loaded, n, seed=seed)[0])
    elif loaded is not None and len(getattr(loaded, "vertices", [])):
        v = np.asarray(loaded.vertices)
        pts = v[rng.choice(len(v), n, replace=len(v) < n)]
    else:
        raise DataError(f"{path}: holds no points")
    if not np.isfinite(pts).all():
        raise DataError(f"{path}: points hold NaN or infinity")
    frame = Frame.fit(pts)
    return frame.to_unit(pts), frame
