"""Gaussian diffusion for continuous tokens: noise schedule, noising, training target, sampler.

The math of DDPM (Ho et al. 2020) with the cosine schedule of improved DDPM
(Nichol & Dhariwal 2021), as MAR's diffusion head uses it: 1,000 training
steps, epsilon prediction, sampling over a respaced subset of the steps. It is
the few lines of tensor code written out here rather than a library (diffusers
would bring a large dependency for a schedule and a loop).

- Schedule: ``alpha_bar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2) / alpha_bar(0)`` with
  ``s = 0.008``, ``beta_t = min(1 - alpha_bar(t+1)/alpha_bar(t), 0.999)``; the step
  ``t`` (0-based) has cumulative product ``alpha_bar(t+1)``.
- Respacing: ``N`` steps ``floor(i (T-1) / N)``, ``i = 0..N-1`` (evenly spaced from 0,
  the terminal step ``T-1`` left out), with betas recomputed so that the kept steps
  keep their cumulative products; the model is called with the original step index.
  The terminal step is never sampled from: its beta is the clipped 0.999, its
  ``alpha_bar`` about 2e-9, and inverting epsilon there (``x0 = (x_t - sqrt(1-ab) eps) /
  sqrt(ab)``) multiplies the network's error by 20,000 (a head whose noise prediction
  is off by 0.02 there gives samples in the thousands; measured on the ring benchmark
  of ``benchmarks/core.py``). One step earlier ``x_t`` is still N(0, I) to within
  ``sqrt(ab) |x0|``, about 1e-3 |x0|.
- Reverse step: the DDPM posterior ``q(x_{t-1} | x_t, x0)`` with ``x0`` predicted
  from epsilon. Its variance is fixed, ``variance="posterior"`` (the default: the
  posterior variance beta-tilde) or ``"beta"`` (beta itself), or ``"learned"``
  (improved DDPM: the model also outputs ``v``, and ``log var = (1+v)/2 log beta +
  (1-v)/2 log beta-tilde``, trained by the variational bound :meth:`GaussianDiffusion.vb_term`).
  The temperature multiplies the noise added at every reverse step (MAR's use);
  the starting noise ``x_T ~ N(0, I)`` is not scaled.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from sciar.errors import SciarError

# (x_t [N, D], original step index [N] long) -> predicted noise [N, D] (and v [N, D] for a learned variance)
EpsFn = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


def cosine_alpha_bar(num_steps: int, s: float = 0.008) -> torch.Tensor:
    """The closed-form cumulative products ``alpha_bar(t/T)`` for ``t = 0..T`` (float64, ``T + 1`` values)."""
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / f[0]


def cosine_betas(num_steps: int = 1000, max_beta: float = 0.999) -> torch.Tensor:
    """Betas of the cosine schedule (float64, ``num_steps`` values), clipped at ``max_beta`` near the end."""
    ab = cosine_alpha_bar(num_steps)
    return (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)


class GaussianDiffusion:
    """A discrete diffusion process given by its betas; ``timesteps[i]`` is the step index the model sees.

    Tables are float64 on the CPU; values are gathered and cast to the data's dtype and device.
    """

    def __init__(self, betas: torch.Tensor, timesteps: torch.Tensor | None = None, variance: str = "posterior"):
        if variance not in ("posterior", "beta", "learned"):
            raise SciarError(f"unknown diffusion variance {variance!r} (posterior, beta or learned)")
        betas = betas.to(torch.float64)
        self.num_steps = len(betas)
        self.variance = variance
        self.betas = betas
        self.timesteps = torch.arange(self.num_steps) if timesteps is None else timesteps.long()
        self.alpha_bar = torch.cumprod(1 - betas, 0)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        # posterior q(x_{t-1} | x_t, x0) = N(c0 * x0 + ct * x_t, beta_tilde)
        self.post_c0 = betas * ab_prev.sqrt() / (1 - self.alpha_bar)
        self.post_ct = (1 - ab_prev) * (1 - betas).sqrt() / (1 - self.alpha_bar)
        self.post_var = betas * (1 - ab_prev) / (1 - self.alpha_bar)
        # log beta-tilde with its first value (0) replaced by the next: the lower end of a learned variance
        self.post_logvar = (torch.cat([self.post_var[1:2], self.post_var[1:]]) if self.num_steps > 1 else betas).log()

    @classmethod
    def cosine(cls, num_steps: int = 1000, variance: str = "posterior") -> "GaussianDiffusion":
        if num_steps < 1:
            raise SciarError(f"a diffusion needs at least one step, got {num_steps}")
        return cls(cosine_betas(num_steps), variance=variance)

    def respaced(self, steps: int) -> "GaussianDiffusion":
        """The process over ``steps`` evenly spaced steps before the terminal one (the model still sees the
        original indices)."""
        span = max(self.num_steps - 1, 1)
        if not 1 <= steps <= span:
            raise SciarError(f"sampling steps must be between 1 and {span}, got {steps}")
        keep = (torch.arange(steps, dtype=torch.float64) * span / steps).floor().long()
        ab = self.alpha_bar[keep]
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        return GaussianDiffusion(1 - ab / ab_prev, self.timesteps[keep], self.variance)

    @staticmethod
    def _at(table: torch.Tensor, i: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``table[i]`` broadcast against ``x`` (``i``: ``[N]`` step positions, ``x``: ``[N, ...]``)."""
        v = table.to(x.device)[i].to(x.dtype)
        return v.view(-1, *([1] * (x.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noised data ``sqrt(ab_t) x0 + sqrt(1 - ab_t) noise`` at steps ``t`` (``[N]`` long)."""
        ab = self._at(self.alpha_bar, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def training_pair(self, x0: torch.Tensor, generator: torch.Generator | None = None):
        """``(x_t, t, eps)``: a uniformly drawn step per row and its noise, the target of epsilon prediction."""
        t = torch.randint(0, self.num_steps, (x0.shape[0],), device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return self.q_sample(x0, t, eps), self.timesteps.to(x0.device)[t], eps

    def learned_log_variance(self, i: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(1+v)/2 log beta + (1-v)/2 log beta-tilde`` at step positions ``i [N]`` (``v [N, D]``)."""
        frac = (v + 1) / 2
        return frac * self._at(self.betas.log(), i, v) + (1 - frac) * self._at(self.post_logvar, i, v)

    def vb_term(self, x0: torch.Tensor, x_t: torch.Tensor, i: torch.Tensor, eps: torch.Tensor,
                v: torch.Tensor) -> torch.Tensor:
        """``KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))`` per row in bits per dimension, 0 at the first step
        (whose variance sampling never uses). Pass ``eps`` detached to train only the variance by it."""
        c0, ct = self._at(self.post_c0, i, x0), self._at(self.post_ct, i, x0)
        ab = self._at(self.alpha_bar, i, x0)
        mean_q = c0 * x0 + ct * x_t
        mean_p = c0 * (x_t - (1 - ab).sqrt() * eps) / ab.sqrt() + ct * x_t
        logvar_q, logvar_p = self._at(self.post_logvar, i, x0), self.learned_log_variance(i, v)
        kl = 0.5 * (-1 + logvar_p - logvar_q + (logvar_q - logvar_p).exp() + (mean_q - mean_p) ** 2 * (-logvar_p).exp())
        return (kl.mean(-1) / math.log(2)).where(i > 0, 0.0)

    @torch.no_grad()
    def sample(self, eps_fn: EpsFn, shape: tuple[int, ...], temperature: float = 1.0,
               generator: torch.Generator | Sequence[torch.Generator] | None = None, device=None,
               dtype=torch.float32) -> torch.Tensor:
        """Ancestral sampling from ``x_T ~ N(0, I)`` through every step of this (respaced) process.

        ``generator``: one for all rows, or a sequence of ``G`` generators, each drawing every noise of its
        own block of ``shape[0] / G`` consecutive rows, so that a block's samples do not depend on the other
        blocks sampled beside it (one call for a batch whose rows each own a generator).
        """
        if not temperature > 0:
            raise SciarError(f"temperature must be positive, got {temperature}")
        x = _randn(shape, generator, device, dtype)
        var = self.post_var if self.variance == "posterior" else self.betas
        # every row is at the same step: plain Python scalars, no per-step gathers
        for step in reversed(range(self.num_steps)):
            t = torch.full((shape[0],), int(self.timesteps[step]), dtype=torch.long, device=x.device)
            eps = eps_fn(x, t)
            if self.variance == "learned":
                eps, v = eps
            ab = float(self.alpha_bar[step])
            x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
            x = float(self.post_c0[step]) * x0 + float(self.post_ct[step]) * x
            if step > 0:
                noise = _randn(shape, generator, x.device, dtype)
                if self.variance == "learned":
                    std = (0.5 * self.learned_log_variance(t.new_full(t.shape, step), v)).exp()
                else:
                    std = math.sqrt(float(var[step]))
                x = x + std * temperature * noise
        return x


def _randn(shape, generator, device, dtype) -> torch.Tensor:
    """Standard normal noise of ``shape``; a sequence of generators draws one block of rows each."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    gens = list(generator)
    if not gens or shape[0] % len(gens):
        raise SciarError(f"{len(gens)} generators cannot share {shape[0]} rows evenly")
    block = (shape[0] // len(gens), *shape[1:])
    return torch.cat([torch.randn(block, generator=g, device=device, dtype=dtype) for g in gens])
