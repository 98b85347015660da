"""Heads: what turns the trunk's hidden states into values, and how they are trained.

Every head has one small interface:

- ``loss(h, target, mask=None) -> scalar``: the training loss of the targets given the hidden
  states ``h [..., C]``; ``mask [...]`` (bool, True = counts) restricts it to some positions.
- ``sample(h, ...) -> values``: draws values for hidden states ``h [N, C]``.

:class:`DiffusionHead` (continuous tokens, after MAR's diffusion loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sciar.diffusion import GaussianDiffusion
from sciar.errors import SciarError


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is True (all when None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(torch.bool)
    return values.where(mask, 0.0).sum() / mask.sum().clamp(min=1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t w_k), sin(t w_k)]`` of (integer) steps ``t [N]``, ``w_k = max_period^(-k/half)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class _AdaLNBlock(nn.Module):
    """Residual MLP block whose LayerNorm shift/scale and residual gate come from the condition."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class _AdaLNOut(nn.Module):
    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=-1)
        return self.linear(self.norm(x) * (1 + scale) + shift)


class DiffusionNet(nn.Module):
    """The noise predictor: residual adaLN MLP over a noised token, conditioned on ``cond + embed(t)``.

    The modulation layers and the output layer start at zero: every block starts as the
    identity and the first prediction is zero.
    """

    def __init__(self, token_dim: int, cond_dim: int, width: int = 256, depth: int = 3, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embed = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList(_AdaLNBlock(width) for _ in range(depth))
        self.out = _AdaLNOut(width, token_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.time_embed:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        for block in [*self.blocks, self.out]:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        nn.init.zeros_(self.out.linear.weight)
        nn.init.zeros_(self.out.linear.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = self.time_embed(timestep_embedding(t, self.freq_dim).to(x.dtype)) + self.cond_embed(cond)
        x = self.input_proj(x)
        for block in self.blocks:
            x = block(x, c)
        return self.out(x, c)


class DiffusionHead(nn.Module):
    """MAR's diffusion loss: a per-token denoiser conditioned on the token's hidden state.

    Gaussian diffusion of :mod:`sciar.diffusion` (cosine schedule over ``num_steps``,
    epsilon prediction, fixed posterior variance beta-tilde: the variance is not learned).
    Training noises each token ``train_mul`` times per call; sampling runs the respaced
    process over ``sample_steps`` steps with a temperature on the noise.
    """

    def __init__(self, token_dim: int, cond_dim: int, width: int = 256, depth: int = 3, num_steps: int = 1000,
                 train_mul: int = 4, sample_steps: int = 50):
        super().__init__()
        if train_mul < 1:
            raise SciarError(f"train_mul must be at least 1, got {train_mul}")
        self.token_dim, self.cond_dim = token_dim, cond_dim
        self.train_mul, self.sample_steps = train_mul, sample_steps
        self.net = DiffusionNet(token_dim, cond_dim, width, depth)
        self.diffusion = GaussianDiffusion.cosine(num_steps)
        self._respaced: dict[int, GaussianDiffusion] = {}

    def _check(self, h: torch.Tensor):
        if h.shape[-1] != self.cond_dim:
            raise SciarError(f"diffusion head expects conditions of size {self.cond_dim}, got {h.shape[-1]}")

    def loss(self, h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error of the predicted noise, over the tokens where ``mask`` is True.

        ``h [..., cond_dim]``, ``target [..., token_dim]``, ``mask [...]``.
        """
        self._check(h)
        if target.shape[-1] != self.token_dim or target.shape[:-1] != h.shape[:-1]:
            raise SciarError(f"diffusion head: targets {tuple(target.shape)} do not match conditions {tuple(h.shape)} "
                             f"(token size {self.token_dim})")
        cond = h.reshape(-1, self.cond_dim).repeat(self.train_mul, 1)
        x0 = target.reshape(-1, self.token_dim).to(cond.dtype).repeat(self.train_mul, 1)
        x_t, t, eps = self.diffusion.training_pair(x0)
        err = (self.net(x_t, t, cond) - eps).pow(2).mean(-1)
        m = None if mask is None else mask.reshape(-1).repeat(self.train_mul)
        return _masked_mean(err, m)

    @torch.no_grad()
    def sample(self, h: torch.Tensor, temperature: float = 1.0, cfg: float = 1.0, steps: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Tokens ``[N, token_dim]`` for conditions ``h [N, cond_dim]``.

        With classifier-free guidance (``cfg != 1``) ``h`` is ``[2N, cond_dim]``, the conditioned
        rows first and the unconditioned rows second; both halves share the noise and the
        prediction is ``eps_u + cfg * (eps_c - eps_u)``. The same ``generator`` state gives the same tokens.
        """
        self._check(h)
        if cfg < 1:
            raise SciarError(f"guidance scale cfg={cfg} is below 1 (1 = no guidance)")
        guided = cfg != 1
        if guided and h.shape[0] % 2:
            raise SciarError(f"guided sampling needs conditioned and unconditioned halves; got {h.shape[0]} rows")
        n = h.shape[0] // 2 if guided else h.shape[0]
        steps = steps or self.sample_steps
        if steps not in self._respaced:
            self._respaced[steps] = self.diffusion.respaced(steps)

        def eps_fn(x, t):
            if not guided:
                return self.net(x, t, h)
            eps_c, eps_u = self.net(torch.cat([x, x]), torch.cat([t, t]), h).chunk(2)
            return eps_u + cfg * (eps_c - eps_u)

        return self._respaced[steps].sample(eps_fn, (n, self.token_dim), temperature, generator, h.device, h.dtype)
