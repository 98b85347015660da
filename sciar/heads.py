"""Heads: what turns the trunk's hidden states into values, and how they are trained.

Every head has one small interface:

- ``loss(h, target, mask=None) -> scalar``: the training loss of the targets given the hidden
  states ``h [..., C]``; ``mask [...]`` (bool, True = counts) restricts it to some positions.
- ``sample(h, ...) -> values``: draws values for hidden states ``h [N, C]``.

:class:`CategoricalHead` (token ids; the LM head, tied or not), :class:`MultiFieldHead` with its input
:class:`MultiFieldEmbedding` (a tuple of discrete fields per position, CHARM's scheme),
:class:`RegressionHead` (a point forecast and optional quantiles) and :class:`DiffusionHead`
(continuous tokens, MAR's diffusion loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sciar.diffusion import GaussianDiffusion
from sciar.errors import SciarError
from sciar.decode.tokens import filter_logits


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is True (all when None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(torch.bool)
    return values.where(mask, 0.0).sum() / mask.sum().clamp(min=1)


def _draw(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One id per row of ``logits [N, V]`` (``-inf`` = never drawn)."""
    return torch.multinomial(logits.float().softmax(-1), 1, generator=generator)[:, 0]


class CategoricalHead(nn.Module):
    """Linear map from hidden states to logits over ``vocab_size`` ids.

    ``weight``: an embedding's weight to tie to (the parameter is shared, not copied). The
    parameter is named ``weight`` as in :class:`sciar.model.LMHead`, so a language model's
    ``head.weight`` loads into either.
    """

    def __init__(self, n_embd: int, vocab_size: int, weight: nn.Parameter | None = None):
        super().__init__()
        if weight is not None and tuple(weight.shape) != (vocab_size, n_embd):
            raise SciarError(f"tied weight of shape {tuple(weight.shape)} does not fit a head of {vocab_size} x {n_embd}")
        self.weight = weight if weight is not None else nn.Parameter(torch.randn(vocab_size, n_embd) * 0.02)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight)

    def loss(self, h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy of the target ids (``-1`` and positions outside ``mask`` do not count)."""
        if mask is not None:
            target = target.masked_fill(~mask.bool(), -1)
        logits = self(h)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1), ignore_index=-1)

    @torch.no_grad()
    def sample(self, h: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Ids ``h.shape[:-1]`` drawn from the filtered softmax (see :func:`sciar.decode.tokens.filter_logits`)."""
        logits = filter_logits(self(h).reshape(-1, self.weight.shape[0]), temperature, top_k, top_p)
        return _draw(logits, generator).view(h.shape[:-1])


def _check_fields(x: torch.Tensor, sizes: list[int], what: str):
    if x.dtype != torch.long or x.shape[-1] != len(sizes):
        raise SciarError(f"{what}: expected a long tensor with {len(sizes)} fields in its last dimension, "
                         f"got {x.dtype} of shape {tuple(x.shape)}")
    if x.numel():
        hi = torch.tensor(sizes, device=x.device)
        bad = (x < -1) | (x >= hi)
        if bad.any():
            f = int(bad.reshape(-1, len(sizes)).any(0).nonzero()[0])
            raise SciarError(f"{what}: field {f} holds a value outside -1..{sizes[f] - 1}")


class MultiFieldEmbedding(nn.Module):
    """Input embedding of positions that carry a tuple of discrete fields (CHARM's scheme).

    ``[B, T, F]`` long -> ``[B, T, n_embd]``: one embedding table per field (``field_dim``
    wide, default ``ceil(n_embd / F)``), concatenated and projected to ``n_embd``. ``-1``
    marks a field a position does not use (start, separator and end positions): it reads
    a learned padding row of that field's table.
    """

    def __init__(self, field_sizes: list[int] | tuple[int, ...], n_embd: int, field_dim: int | None = None):
        super().__init__()
        if not field_sizes or min(field_sizes) < 1:
            raise SciarError(f"field sizes must be positive, got {list(field_sizes)}")
        self.field_sizes = list(field_sizes)
        field_dim = field_dim or -(-n_embd // len(field_sizes))
        self.tables = nn.ModuleList(nn.Embedding(n + 1, field_dim) for n in self.field_sizes)  # row n: padding
        self.proj = nn.Linear(field_dim * len(field_sizes), n_embd)
        for t in self.tables:
            nn.init.normal_(t.weight, std=0.02)

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        if fields.device.type == "cpu" or self.training:  # on an accelerator a range check would stall decoding
            _check_fields(fields, self.field_sizes, "multi-field input")
        parts = [t(torch.where(fields[..., i] < 0, n, fields[..., i]))
                 for i, (t, n) in enumerate(zip(self.tables, self.field_sizes))]
        return self.proj(torch.cat(parts, dim=-1))


class MultiFieldHead(nn.Module):
    """Predicts a position's fields one after another (CHARM: flags, then x, y, z, width, thickness).

    Field ``j`` reads ``z_j = h + sum_{i<j} E_i(field_i)``: the hidden state plus embeddings of
    the fields already chosen at that position (a padding row for ``-1``), through a small
    MLP (LayerNorm, Linear-GELU-Linear) to its logits. Training feeds the true earlier fields
    (teacher forcing); sampling feeds the drawn ones.
    """

    def __init__(self, n_embd: int, field_sizes: list[int] | tuple[int, ...], hidden: int | None = None):
        super().__init__()
        if not field_sizes or min(field_sizes) < 1:
            raise SciarError(f"field sizes must be positive, got {list(field_sizes)}")
        self.field_sizes = list(field_sizes)
        hidden = hidden or n_embd
        self.chosen = nn.ModuleList(nn.Embedding(n + 1, n_embd) for n in self.field_sizes[:-1])  # row n: padding
        self.outs = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(n_embd), nn.Linear(n_embd, hidden), nn.GELU(), nn.Linear(hidden, n))
            for n in self.field_sizes
        )
        for t in self.chosen:
            nn.init.normal_(t.weight, std=0.02)

    def _embed(self, j: int, values: torch.Tensor) -> torch.Tensor:
        return self.chosen[j](torch.where(values < 0, self.field_sizes[j], values))

    def forward(self, h: torch.Tensor, fields: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every field (``[..., size_j]`` each) given the true earlier fields ``fields [..., F]``."""
        _check_fields(fields, self.field_sizes, "multi-field target")
        out, z = [], h
        for j, head in enumerate(self.outs):
            out.append(head(z))
            if j + 1 < len(self.outs):
                z = z + self._embed(j, fields[..., j])
        return out

    def log_probs(self, h: torch.Tensor, fields: torch.Tensor) -> list[torch.Tensor]:
        """Log-probabilities of every field's values, each conditioned on the given earlier fields."""
        return [lg.float().log_softmax(-1) for lg in self(h, fields)]

    def loss(self, h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy averaged over every (position, field) whose target is not ``-1`` and whose
        position is in ``mask``."""
        if mask is not None:
            target = target.masked_fill(~mask.bool()[..., None], -1)
        total = h.new_zeros((), dtype=torch.float32)
        for j, logits in enumerate(self(h, target)):
            total = total + F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target[..., j].reshape(-1),
                                            ignore_index=-1, reduction="sum")
        return total / (target >= 0).sum().clamp(min=1)

    @torch.no_grad()
    def sample(self, h: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None, allowed=None, step: int = 0) -> torch.Tensor:
        """Fields ``[N, F]`` (long) for hidden states ``h [N, C]`` at decoding step ``step``.

        ``allowed(step, j, chosen [N, j]) -> BoolTensor [N, size_j]``, when given, restricts field
        ``j`` at that step given the fields chosen so far (before temperature and top-k), so a
        grammar may depend on the position in the sequence; a row with nothing allowed gets
        ``-1`` (padding) in that field.
        """
        N = h.shape[0]
        chosen = torch.full((N, len(self.field_sizes)), -1, dtype=torch.long, device=h.device)
        z = h
        for j, (head, n) in enumerate(zip(self.outs, self.field_sizes)):
            logits = head(z).float()
            none = None
            if allowed is not None:
                ok = torch.as_tensor(allowed(step, j, chosen[:, :j]), device=h.device)
                if ok.dtype != torch.bool or tuple(ok.shape) != (N, n):
                    raise SciarError(f"allowed({step}, {j}, ...) must return a bool tensor of shape {(N, n)}, "
                                     f"got {ok.dtype} {tuple(ok.shape)}")
                none = ~ok.any(-1)
                logits = logits.masked_fill(~(ok | none[:, None]), float("-inf"))
            ids = _draw(filter_logits(logits, temperature, top_k), generator)
            chosen[:, j] = ids if none is None else ids.masked_fill(none, -1)
            if j + 1 < len(self.outs):
                z = z + self._embed(j, chosen[:, j])
        return chosen


class RegressionHead(nn.Module):
    """Real-valued outputs: a point prediction (MSE) and optionally quantiles (pinball loss).

    The point projection is ``Linear`` (``hidden=0``) or ``Linear-Tanh-Dropout-Linear`` (the
    time-series adapter's projection; its ``proj.*`` weights load here as ``proj.*``). Quantile
    levels get their own linear map to ``len(quantiles) * out_dim`` values.
    """

    def __init__(self, n_embd: int, out_dim: int, hidden: int = 0, quantiles: tuple[float, ...] = (),
                 dropout: float = 0.0):
        super().__init__()
        if any(not 0 < q < 1 for q in quantiles):
            raise SciarError(f"quantile levels must lie strictly between 0 and 1, got {list(quantiles)}")
        self.out_dim = out_dim
        self.quantile_levels = tuple(sorted(quantiles))
        if hidden:
            self.proj = nn.Sequential(nn.Linear(n_embd, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))
        else:
            self.proj = nn.Linear(n_embd, out_dim)
        self.quantile_proj = nn.Linear(n_embd, len(quantiles) * out_dim) if quantiles else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The point prediction ``[..., out_dim]``."""
        return self.proj(h)

    def quantiles(self, h: torch.Tensor) -> torch.Tensor:
        """Predicted quantiles ``[..., Q, out_dim]`` at ``quantile_levels`` (ascending), as trained
        (sorted along ``Q`` so that they never cross)."""
        if self.quantile_proj is None:
            raise SciarError("this regression head was built without quantiles")
        q = self.quantile_proj(h).unflatten(-1, (len(self.quantile_levels), self.out_dim))
        return q.sort(dim=-2).values

    def loss(self, h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """MSE of the point prediction, plus the mean pinball loss of the quantiles if any,
        averaged over the positions in ``mask``."""
        per_pos = (self(h) - target).pow(2).mean(-1)
        if self.quantile_proj is not None:
            levels = torch.tensor(self.quantile_levels, device=h.device, dtype=per_pos.dtype)[:, None]
            r = target.unsqueeze(-2) - self.quantile_proj(h).unflatten(-1, (len(self.quantile_levels), self.out_dim))
            per_pos = per_pos + torch.maximum(levels * r, (levels - 1) * r).mean((-2, -1))
        return _masked_mean(per_pos, mask)

    @torch.no_grad()
    def sample(self, h: torch.Tensor) -> torch.Tensor:
        """The point prediction (deterministic); quantiles come from :meth:`quantiles`."""
        return self(h)


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

    def __init__(self, token_dim: int, cond_dim: int, width: int = 256, depth: int = 3, freq_dim: int = 256,
                 out_dim: int | None = None):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embed = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList(_AdaLNBlock(width) for _ in range(depth))
        self.out = _AdaLNOut(width, out_dim or token_dim)
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
    epsilon prediction). The reverse variance is the fixed posterior variance beta-tilde, or,
    with ``learn_sigma=True``, learned as MAR does (the net outputs twice the token size and
    the loss adds the variational bound, which trains only the variance).
    Training noises each token ``train_mul`` times per call; sampling runs the respaced
    process over ``sample_steps`` steps with a temperature on the noise.
    """

    def __init__(self, token_dim: int, cond_dim: int, width: int = 256, depth: int = 3, num_steps: int = 1000,
                 train_mul: int = 4, sample_steps: int = 50, learn_sigma: bool = False):
        super().__init__()
        if train_mul < 1:
            raise SciarError(f"train_mul must be at least 1, got {train_mul}")
        self.token_dim, self.cond_dim = token_dim, cond_dim
        self.train_mul, self.sample_steps, self.learn_sigma = train_mul, sample_steps, learn_sigma
        self.net = DiffusionNet(token_dim, cond_dim, width, depth, out_dim=2 * token_dim if learn_sigma else token_dim)
        self.diffusion = GaussianDiffusion.cosine(num_steps, variance="learned" if learn_sigma else "posterior")
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
        out = self.net(x_t, t, cond)
        if not self.learn_sigma:
            err = (out - eps).pow(2).mean(-1)
        else:  # the noise by MSE, the variance by the bound (through a detached noise prediction)
            pred, v = out.chunk(2, dim=-1)
            err = (pred - eps).pow(2).mean(-1) + self.diffusion.vb_term(x0, x_t, t, pred.detach(), v)
        m = None if mask is None else mask.reshape(-1).repeat(self.train_mul)
        return _masked_mean(err, m)

    @torch.no_grad()
    def sample(self, h: torch.Tensor, temperature: float = 1.0, cfg: float = 1.0, steps: int | None = None,
               generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """Tokens ``[N, token_dim]`` for conditions ``h [N, cond_dim]``.

        With classifier-free guidance (``cfg != 1``) ``h`` is ``[2N, cond_dim]``, the conditioned
        rows first and the unconditioned rows second; both halves share the noise and the
        prediction is ``eps_u + cfg * (eps_c - eps_u)``. The same ``generator`` state gives the same tokens;
        a list of ``G`` generators gives each block of ``N / G`` consecutive tokens its own noise (one call
        for a batch of objects that each own a generator).
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
            out = self.net(torch.cat([x, x]), torch.cat([t, t]), h) if guided else self.net(x, t, h)
            v = None
            if self.learn_sigma:
                out, v = out.chunk(2, dim=-1)
            if guided:  # the noises mixed; the variance is the conditioned half's
                eps_c, eps_u = out.chunk(2)
                out, v = eps_u + cfg * (eps_c - eps_u), None if v is None else v[: x.shape[0]]
            return out if v is None else (out, v)

        dtype = next(self.net.parameters()).dtype
        return self._respaced[steps].sample(eps_fn, (n, self.token_dim), temperature, generator, h.device, dtype)
