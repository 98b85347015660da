"""The sciar transformer: one decoder-style model for every domain.

In the spirit of nanoGPT's ``model.py``: a config dataclass, pre-norm blocks,
rotary (or learned) positions, attention through
``torch.nn.functional.scaled_dot_product_attention``, no biases by default.

The trunk (:class:`Transformer`) maps inputs to hidden states; heads are
separate modules. Inputs may be token ids, continuous embeddings already
projected to the model width by an adapter, or a continuous prefix followed
by tokens. Attention is causal, or follows an explicit visibility mask
(bidirectional / random-order masked generation). :class:`KVCache` holds a
preallocated (static) cache for incremental causal decoding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from sciar.errors import SciarError


@dataclass
class ModelConfig:
    """Shape of the transformer trunk. ``vocab_size=0`` means no token embedding."""

    vocab_size: int = 0
    block_size: int = 1024  # longest sequence (prefix + tokens) the model accepts
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = False
    pos: str = "rope"  # "rope" | "learned" | "none"
    rope_base: float = 10000.0

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise SciarError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.pos not in ("rope", "learned", "none"):
            raise SciarError(f"unknown position encoding {self.pos!r} (rope, learned or none)")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise SciarError("rotary positions need an even head dimension")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SciarError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


class KVCache:
    """Preallocated keys and values for every layer: ``[B, H, capacity, D]`` each.

    ``length`` is how many positions are filled (the same for all rows).
    Static shapes let the decode step be captured by CUDA graphs.
    """

    def __init__(self, cfg: ModelConfig, batch: int, capacity: int, device=None, dtype=torch.float32):
        if capacity > cfg.block_size:
            raise SciarError(f"sequence of {capacity} positions exceeds the model's context of {cfg.block_size}")
        hd = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch, cfg.n_head, capacity, hd)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        # static decoding: positions as a device tensor, advanced in place by the caller, so that
        # one decode step has fixed shapes and addresses and can be replayed as a CUDA graph
        self.pos: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def fork(self, rows: torch.Tensor | list[int] | None = None, repeat: int = 1, capacity: int | None = None) -> "KVCache":
        """A new cache holding the filled part of selected rows, each repeated ``repeat`` times."""
        new = KVCache.__new__(KVCache)
        cap = capacity or self.capacity
        k, v = self.k[:, :, :, : self.length], self.v[:, :, :, : self.length]
        if rows is not None:
            idx = torch.as_tensor(rows, device=k.device, dtype=torch.long)
            k, v = k[:, idx], v[:, idx]
        if repeat > 1:
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        shape = (*k.shape[:3], cap, k.shape[4])
        new.k = k.new_zeros(shape)
        new.v = v.new_zeros(shape)
        new.k[:, :, :, : self.length] = k
        new.v[:, :, :, : self.length] = v
        new.length = self.length
        new.pos = None
        return new

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


def _rope_tables(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    hd = cfg.n_embd // cfg.n_head
    inv = 1.0 / (cfg.rope_base ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
    t = torch.arange(cfg.block_size, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv)  # [T, hd/2]
    return freqs.cos(), freqs.sin()


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, H, T, D]; cos/sin: [T, D/2] (or [B, 1, T, D/2])
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.type_as(x)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, mask, cache: KVCache | None, layer: int):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
        is_causal = mask is None
        if cache is not None:
            if cache.pos is not None:
                # static decode: write at the position tensor, attend over the whole buffer (the mask hides the rest)
                cache.k[layer].index_copy_(2, cache.pos, k)
                cache.v[layer].index_copy_(2, cache.pos, v)
                k, v = cache.k[layer], cache.v[layer]
            else:
                start = cache.length
                cache.k[layer, :, :, start : start + T] = k
                cache.v[layer, :, :, start : start + T] = v
                k, v = cache.k[layer, :, :, : start + T], cache.v[layer, :, :, : start + T]
                if start > 0 and mask is None:
                    # queries at positions start..start+T-1 see every cached key and the causal part of the new ones
                    # (a caller's mask over all start+T keys is kept: ragged batches hide their left padding)
                    is_causal = False
                    mask = None if T == 1 else _causal_offset_mask(T, start, x.device)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal and T > 1, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))


def _causal_offset_mask(T: int, start: int, device) -> torch.Tensor:
    q = torch.arange(start, start + T, device=device)[:, None]
    k = torch.arange(start + T, device=device)[None, :]
    return k <= q


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, mask, cache, layer):
        x = x + self.attn(self.ln1(x), rope, mask, cache, layer)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """The trunk: inputs in, hidden states ``[B, T, n_embd]`` out."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd) if cfg.vocab_size else None
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        if cfg.pos == "rope":
            cos, sin = _rope_tables(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed(self, idx: torch.Tensor | None = None, embeds: torch.Tensor | None = None, prefix: torch.Tensor | None = None):
        """Input vectors from token ids, continuous embeddings, or a continuous prefix followed by ids."""
        parts = []
        if prefix is not None:
            parts.append(prefix)
        if embeds is not None:
            parts.append(embeds)
        if idx is not None:
            if self.wte is None:
                raise SciarError("this model has no token embedding (vocab_size=0); pass continuous embeddings")
            parts.append(self.wte(idx))
        if not parts:
            raise SciarError("the model needs token ids or embeddings")
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(
        self,
        idx: torch.Tensor | None = None,
        embeds: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states for the inputs.

        ``mask``: None for causal attention, or a boolean visibility mask
        (``[T, T]``, ``[B, T, T]`` or ``[B, 1, T, T]``; True = may attend) for
        bidirectional / masked modes. ``cache``: extend a :class:`KVCache` (causal; a mask
        given with a filled cache covers all cached and new keys, ``[B, T, length + T]``,
        so rows of different lengths can share one cache with hidden left padding).
        ``positions``: explicit positions (``[T]`` or ``[B, T]``), default
        ``cache.length + arange(T)``.
        """
        x = self.embed(idx, embeds, prefix)
        B, T, _ = x.shape
        # static decoding reads no Python-side length, so a compiled step is not specialised on it
        static = cache is not None and cache.pos is not None
        if static:
            positions = cache.pos
            mask = torch.arange(cache.capacity, device=x.device)[None, :] <= positions[:, None]
        else:
            start = cache.length if cache is not None else 0
            if positions is None and start + T > self.cfg.block_size:
                raise SciarError(f"sequence of {start + T} positions exceeds the model's context of {self.cfg.block_size}")
            if positions is None:
                positions = torch.arange(start, start + T, device=x.device)
        rope = None
        if self.cfg.pos == "rope":
            rope = (self.rope_cos[positions], self.rope_sin[positions])
            if positions.dim() == 2:
                rope = (rope[0][:, None], rope[1][:, None])
        elif self.wpe is not None:
            x = x + self.wpe(positions)
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, cache, i)
        if cache is not None and not static:
            cache.length = start + T
        return self.ln_f(x)


class LMHead(nn.Module):
    """Linear map from hidden states to token logits, optionally tied to the embedding."""

    def __init__(self, trunk: Transformer, tied: bool = True):
        super().__init__()
        cfg = trunk.cfg
        self.weight = trunk.wte.weight if tied else nn.Parameter(torch.randn(cfg.vocab_size, cfg.n_embd) * 0.02)
        self.tied = tied

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight)


class LanguageModel(nn.Module):
    """Trunk + LM head: the model of every token domain. ``forward`` returns the loss when given targets."""

    def __init__(self, cfg: ModelConfig, tied: bool = True):
        super().__init__()
        if not cfg.vocab_size:
            raise SciarError("a language model needs vocab_size > 0")
        self.cfg = cfg
        self.trunk = Transformer(cfg)
        self.head = LMHead(self.trunk, tied=tied)

    def forward(self, idx, targets=None, prefix=None, cache=None, positions=None, mask=None):
        h = self.trunk(idx=idx, prefix=prefix, cache=cache, positions=positions, mask=mask)
        if targets is None:
            return self.head(h)
        if prefix is not None:
            h = h[:, prefix.shape[1] :]
        logits = self.head(h)
        # targets < 0 are ignored (padding, prompt positions)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
