"""The shape VAE: surface points in, a set of continuous latent tokens, occupancy out (after 3DShape2VecSet / MAR-3D).

Encoder: surface points and normals, Fourier-embedded, are read by a set of
learned query tokens through cross-attention, then refined by self-attention;
a linear map gives each token a mean and log-variance (the KL bottleneck).
Decoder: the sampled latents are lifted to the model width and mixed by
self-attention; each query point, Fourier-embedded, cross-attends to them and
a linear map gives its occupancy logit. Loss: binary cross-entropy on the
query points plus ``kl_weight`` times the KL divergence to a unit Gaussian.

The attention is written with torch's own ``scaled_dot_product_attention``: it predates the core's
cross-attention (``ModelConfig.cross_dim``); moving the VAE onto it is open.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class VAEConfig:
    num_latents: int = 128  # latent tokens per shape
    latent_dim: int = 32  # floats per token: 128 x 32 = 4,096, as many as a 16^3 grid
    width: int = 128
    heads: int = 4
    encoder_layers: int = 2  # self-attention blocks after the encoder's cross-attention
    decoder_layers: int = 2  # self-attention blocks on the latents before the query cross-attention
    fourier_freqs: int = 8  # octaves of the point embedding
    kl_weight: float = 1e-3
    surface_points: int = 1024  # encoder input per shape
    query_points: int = 1024  # occupancy queries per shape in training (half near the surface, half uniform)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # the tests' size: seconds on a CPU
    "tiny": VAEConfig(num_latents=16, latent_dim=8, width=32, heads=2, encoder_layers=1, decoder_layers=1,
                      fourier_freqs=4, surface_points=256, query_points=256),
    # the CPU size (issue 30): 128 tokens of 32 dims, width 128
    "small": VAEConfig(),
    # the same latent, a wider and deeper network, for a GPU
    "base": VAEConfig(width=256, heads=8, encoder_layers=4, decoder_layers=4, surface_points=2048, query_points=2048),
}


class FourierEmbedding(nn.Module):
    """xyz -> [xyz, sin(2^k pi xyz), cos(2^k pi xyz)] for k < freqs, then a linear map to the width."""

    def __init__(self, freqs: int, width: int, extra: int = 0):
        super().__init__()
        self.register_buffer("scales", (2.0 ** torch.arange(freqs)) * math.pi, persistent=False)
        self.proj = nn.Linear(3 + 6 * freqs + extra, width)

    def forward(self, xyz: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        angles = (xyz[..., None] * self.scales).flatten(-2)
        parts = [xyz, angles.sin(), angles.cos()] + ([extra] if extra is not None else [])
        return self.proj(torch.cat(parts, -1))


class Attention(nn.Module):
    """Multi-head attention of queries ``x`` over ``context`` (self-attention when it is ``x``)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    """Pre-norm attention (self, or cross to a context) and MLP, each residual."""

    def __init__(self, width: int, heads: int, cross: bool = False):
        super().__init__()
        self.norm_x = nn.LayerNorm(width)
        self.norm_context = nn.LayerNorm(width) if cross else None
        self.attn = Attention(width, heads)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm_x(x)
        x = x + self.attn(h, h if self.norm_context is None else self.norm_context(context))
        return x + self.mlp(self.norm_mlp(x))


class ShapeVAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.point_embed = FourierEmbedding(cfg.fourier_freqs, w, extra=3)  # normals ride along
        self.queries = nn.Parameter(torch.randn(cfg.num_latents, w) * 0.02)
        self.encoder_cross = Block(w, cfg.heads, cross=True)
        self.encoder = nn.ModuleList(Block(w, cfg.heads) for _ in range(cfg.encoder_layers))
        self.to_moments = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 2 * cfg.latent_dim))
        self.from_latent = nn.Linear(cfg.latent_dim, w)
        self.decoder = nn.ModuleList(Block(w, cfg.heads) for _ in range(cfg.decoder_layers))
        self.query_embed = FourierEmbedding(cfg.fourier_freqs, w)
        self.decoder_cross = Block(w, cfg.heads, cross=True)
        self.to_logit = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 1))

    def encode(self, surface: torch.Tensor, normals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance ``(B, num_latents, latent_dim)`` of surface points ``(B, N, 3)``."""
        points = self.point_embed(surface, normals)
        x = self.encoder_cross(self.queries.expand(len(surface), -1, -1), points)
        for block in self.encoder:
            x = block(x)
        mean, logvar = self.to_moments(x).chunk(2, -1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent tokens to the features that occupancy queries attend to."""
        x = self.from_latent(latents)
        for block in self.decoder:
            x = block(x)
        return x

    def occupancy_logits(self, features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Occupancy logits ``(B, Q)`` of query points ``(B, Q, 3)`` given decoded features."""
        return self.to_logit(self.decoder_cross(self.query_embed(points), features)).squeeze(-1)

    def forward(self, surface, normals, queries, occupancy) -> torch.Tensor:
        """The training loss of a batch: BCE of the occupancy plus ``kl_weight`` times the KL term."""
        mean, logvar = self.encode(surface, normals)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
        logits = self.occupancy_logits(self.decode(z), queries)
        bce = F.binary_cross_entropy_with_logits(logits, occupancy.float())
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        self.last_terms = {"bce": float(bce.detach()), "kl": float(kl.detach())}  # for logs and tests
        return bce + self.cfg.kl_weight * kl
