"""Masked autoregression over continuous tokens (after MAR, Li et al. 2024), with a diffusion head.

An object is ``seq_len`` continuous tokens of ``token_dim`` numbers (a shape's latent set,
say). The model is ONE bidirectional stack with mask tokens (not MAE's encoder and
decoder): every position is in the sequence, the known tokens projected to the width, the
unknown ones replaced by a learned mask token, each with a learned position; the
conditions lead the sequence as prefix tokens. The :class:`sciar.heads.DiffusionHead`
models each masked token given the trunk's hidden state at its position.

Conditions, any combination:

- a class label (``num_classes``): a class embedding (with a null class) as the first
  prefix token, and also the trunk's adaptive-layer-norm vector when the trunk has
  ``cond_dim == n_embd``;
- condition vectors in the prefix (``prefix_len`` vectors of ``prefix_dim``, e.g. image
  features), projected to the width;
- condition tokens for cross-attention (the trunk's ``cross_dim``, e.g. a point cloud's
  encoding), their keys and values computed once per generation.

Training (``forward`` returns the loss, so :func:`sciar.train.train` runs it): per row a
random order and a mask ratio from a Gaussian of mean 1.0 and std 0.25 truncated to
[``mask_ratio_min``, 1]; the first ``ceil(ratio * L)`` positions of the order are masked
and the loss is the head's on those only. Each row loses each of its conditions independently
(``class_drop``, ``prefix_drop``, ``context_drop``: the null class, the learned null prefix,
the null context) and all of them together with probability ``cond_drop``, which trains the
unconditioned models that classifier-free guidance needs, per condition or for all at once.
Generation: :func:`sciar.decode.masked.generate`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn

from sciar.conditioning import ClassEmbedding, drop_conditions
from sciar.errors import SciarError
from sciar.heads import DiffusionHead
from sciar.model import ContextKV, ModelConfig, Transformer

MASK_RATIO_MEAN, MASK_RATIO_STD = 1.0, 0.25  # MAR's training mask-ratio distribution (before truncation)
CONDITIONS = ("class", "prefix", "context")  # a masked model's conditions, as dropout and guidance name them


@dataclass
class MaskedConfig:
    """What the masked model generates and how it is conditioned (the trunk's shape is a :class:`ModelConfig`)."""

    seq_len: int = 64  # L tokens per object
    token_dim: int = 16  # numbers per token
    num_classes: int = 0  # class labels 0..num_classes-1 (0: no class condition)
    prefix_len: int = 0  # condition vectors in the prefix (0: none)
    prefix_dim: int = 0  # their size
    # condition dropout in training (classifier-free guidance): each condition on its own, and all together
    class_drop: float = 0.1  # probability that a training row loses its class label
    prefix_drop: float = 0.1  # ... its prefix condition vectors
    context_drop: float = 0.1  # ... its cross-attention condition tokens
    cond_drop: float = 0.0  # ... every condition at once (configs from before per-condition dropout: their only one)
    mask_ratio_min: float = 0.7  # the training mask ratio is at least this
    head_width: int = 256
    head_depth: int = 3
    head_steps: int = 1000  # diffusion steps of the head in training
    head_train_mul: int = 4  # noisings of each token per training step
    head_sample_steps: int = 50  # respaced diffusion steps when sampling

    def __post_init__(self):
        if self.seq_len < 1 or self.token_dim < 1:
            raise SciarError("a masked model needs seq_len >= 1 and token_dim >= 1")
        if (self.prefix_len > 0) != (self.prefix_dim > 0):
            raise SciarError("prefix_len and prefix_dim go together (both 0 for no prefix condition)")
        if not 0 < self.mask_ratio_min <= 1:
            raise SciarError(f"mask_ratio_min must be in (0, 1], got {self.mask_ratio_min}")
        for name in ("class_drop", "prefix_drop", "context_drop", "cond_drop"):
            if not 0 <= getattr(self, name) < 1:
                raise SciarError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MaskedConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise SciarError(f"unknown masked-model config keys: {sorted(unknown)}")
        if "class_drop" not in d:  # written before per-condition dropout: cond_drop dropped every condition at once
            d = {"cond_drop": 0.1, **d, "class_drop": 0.0, "prefix_drop": 0.0, "context_drop": 0.0}
        return cls(**d)

    def condition_drop(self) -> dict[str, float]:
        """Each condition's own dropout probability, by name (:data:`CONDITIONS`)."""
        return {"class": self.class_drop, "prefix": self.prefix_drop, "context": self.context_drop}


@dataclass
class Conditions:
    """A batch's conditions as the trunk takes them: prefix vectors, adaLN vector, cross-attention K/V."""

    prefix: torch.Tensor | None  # [B, P, n_embd]
    cond: torch.Tensor | None  # [B, n_embd]
    context: ContextKV | None


class MaskedModel(nn.Module):
    """Bidirectional trunk + mask token + diffusion head over ``seq_len`` continuous tokens."""

    def __init__(self, cfg: ModelConfig, mcfg: MaskedConfig):
        super().__init__()
        if cfg.attention != "bidirectional":
            raise SciarError("a masked model needs a bidirectional trunk (attention='bidirectional'); this one is causal")
        if cfg.vocab_size:
            raise SciarError("a masked model reads continuous tokens: its trunk has vocab_size=0")
        if cfg.cond_dim and (not mcfg.num_classes or cfg.cond_dim != cfg.n_embd):
            raise SciarError("a masked model's adaptive layer norm carries the class embedding: "
                             f"cond_dim must be n_embd ({cfg.n_embd}) and num_classes > 0")
        self.n_prefix = (1 if mcfg.num_classes else 0) + mcfg.prefix_len
        if self.n_prefix + mcfg.seq_len > cfg.block_size:
            raise SciarError(f"{self.n_prefix} prefix + {mcfg.seq_len} tokens exceed the trunk's context of {cfg.block_size}")
        self.cfg, self.mcfg = cfg, mcfg
        C = cfg.n_embd
        self.trunk = Transformer(cfg)
        self.proj_in = nn.Linear(mcfg.token_dim, C)
        self.mask_token = nn.Parameter(torch.randn(C) * 0.02)
        self.classes = ClassEmbedding(mcfg.num_classes, C) if mcfg.num_classes else None
        if mcfg.prefix_len:
            self.prefix_proj = nn.Linear(mcfg.prefix_dim, C)
            self.null_prefix = nn.Parameter(torch.randn(mcfg.prefix_len, C) * 0.02)
        else:
            self.prefix_proj = self.null_prefix = None
        self.head = DiffusionHead(mcfg.token_dim, C, mcfg.head_width, mcfg.head_depth, mcfg.head_steps,
                                  mcfg.head_train_mul, mcfg.head_sample_steps)

    def config(self) -> dict:
        """The checkpoint's description of this model (``config.json``'s ``model`` and ``masked``)."""
        return {"model": self.cfg.to_dict(), "masked": self.mcfg.to_dict()}

    @classmethod
    def from_config(cls, config: dict) -> "MaskedModel":
        """The model a checkpoint's ``config.json`` describes (weights not loaded)."""
        if "masked" not in config:
            raise SciarError("not a masked model's config (no 'masked' section): decode it token by token")
        return cls(ModelConfig.from_dict(config["model"]), MaskedConfig.from_dict(config["masked"]))

    @property
    def conditioned(self) -> bool:
        """Whether the model has any condition (guidance needs one)."""
        return bool(self.n_prefix or self.cfg.cross_dim)

    @property
    def condition_names(self) -> tuple[str, ...]:
        """The conditions this model takes, of :data:`CONDITIONS`."""
        has = (self.classes is not None, self.prefix_proj is not None, bool(self.cfg.cross_dim))
        return tuple(name for name, h in zip(CONDITIONS, has) if h)

    def training_drop(self, batch: int, device=None, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Which rows of a training batch lose which condition (the config's per-condition and joint dropout)."""
        p = self.mcfg.condition_drop()
        return drop_conditions(batch, {n: p[n] for n in self.condition_names}, self.mcfg.cond_drop, device, generator)

    def conditions(self, batch: int, labels=None, prefix=None, context=None,
                   drop: torch.Tensor | dict[str, torch.Tensor] | None = None) -> Conditions:
        """The trunk's inputs for the given conditions; ``drop`` gives rows the null conditions: ``[B]`` bool
        (those rows lose every condition) or ``{name: [B] bool}`` per condition (:data:`CONDITIONS`; one left
        out is kept).

        A condition left out (None) is the null condition for every row; one the model was not
        trained with is a one-line :class:`SciarError`.
        """
        mcfg, device = self.mcfg, self.mask_token.device
        parts, cond = [], None
        if isinstance(drop, dict):
            unknown = set(drop) - set(CONDITIONS)
            if unknown:
                raise SciarError(f"unknown conditions {sorted(unknown)} (choose from {', '.join(CONDITIONS)})")
            drops = drop
        else:
            drops = dict.fromkeys(CONDITIONS, drop)
        if labels is not None and self.classes is None:
            raise SciarError("this model was not trained with class labels (num_classes=0)")
        if prefix is not None and self.prefix_proj is None:
            raise SciarError("this model was not trained with prefix condition vectors (prefix_len=0)")
        if context is not None and not self.cfg.cross_dim:
            raise SciarError("this model has no cross-attention (cross_dim=0); it was not trained with condition tokens")
        for name, x in (("prefix condition", prefix), ("condition tokens", context)):
            if x is not None and not torch.isfinite(x).all():
                raise SciarError(f"{name} hold NaN or infinity")
        if self.classes is not None:
            emb = self.classes(labels, drops.get("class"), batch)
            if len(emb) != batch:
                raise SciarError(f"{len(emb)} class labels for {batch} rows")
            parts.append(emb[:, None])
            cond = emb if self.cfg.cond_dim else None
        if self.prefix_proj is not None:
            null = self.null_prefix.expand(batch, -1, -1)
            if prefix is None:
                parts.append(null)
            else:
                want = (batch, mcfg.prefix_len, mcfg.prefix_dim)
                if tuple(prefix.shape) != want:
                    raise SciarError(f"prefix condition must be {list(want)}, got {list(prefix.shape)}")
                p = self.prefix_proj(prefix.to(device))
                d = drops.get("prefix")
                parts.append(p if d is None else torch.where(d.to(device)[:, None, None], null, p))
        kv = None
        if self.cfg.cross_dim:
            kv = self.trunk.encode_context(None if context is None else context.to(device), drop=drops.get("context"),
                                           batch=batch)
            if kv.batch != batch:
                raise SciarError(f"condition tokens for {kv.batch} rows, {batch} rows asked for")
        return Conditions(torch.cat(parts, 1) if parts else None, cond, kv)

    def hidden(self, tokens: torch.Tensor, masked: torch.Tensor, c: Conditions) -> torch.Tensor:
        """Hidden states ``[B, L, n_embd]`` of the token positions; ``masked [B, L]`` (bool) hides those tokens."""
        x = self.proj_in(tokens)
        x = torch.where(masked[..., None], self.mask_token.to(x.dtype), x)
        if c.prefix is not None:
            x = torch.cat([c.prefix, x], 1)
        return self.trunk(embeds=x, cond=c.cond, context=c.context)[:, self.n_prefix :]

    def random_mask(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training mask ``[B, L]``: per row a random order, its first ``ceil(ratio * L)`` positions masked."""
        L, device = self.mcfg.seq_len, self.mask_token.device
        normal = torch.distributions.Normal(MASK_RATIO_MEAN, MASK_RATIO_STD)
        lo, hi = normal.cdf(torch.tensor(self.mcfg.mask_ratio_min)), normal.cdf(torch.tensor(1.0))
        u = lo + (hi - lo) * torch.rand(batch, generator=generator)  # inverse CDF of the truncated Gaussian
        ratio = normal.icdf(u).clamp(self.mcfg.mask_ratio_min, 1.0)
        n_masked = torch.ceil(ratio * L).clamp(min=1).to(device)
        rank = torch.rand(batch, L, generator=generator).argsort(1).argsort(1).to(device)
        return rank < n_masked[:, None]

    def forward(self, tokens: torch.Tensor, labels=None, prefix=None, context=None) -> torch.Tensor:
        """Training loss of a batch of objects ``tokens [B, L, token_dim]``."""
        B = self._check_tokens(tokens)
        drop = self.training_drop(B, tokens.device) if self.training and self.conditioned else None
        c = self.conditions(B, labels, prefix, context, drop)
        masked = self.random_mask(B)
        return self.head.loss(self.hidden(tokens, masked, c), tokens, masked)

    def _check_tokens(self, tokens: torch.Tensor) -> int:
        want = (self.mcfg.seq_len, self.mcfg.token_dim)
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != want:
            raise SciarError(f"tokens must be [batch, {want[0]}, {want[1]}], got {list(tokens.shape)}")
        if not torch.isfinite(tokens).all():
            raise SciarError("tokens hold NaN or infinity")
        return tokens.shape[0]

