"""The sciar transformer: one decoder-style model for every domain.

In the spirit of nanoGPT's ``model.py``: a config dataclass, pre-norm blocks,
rotary (or learned) positions, attention through
``torch.nn.functional.scaled_dot_product_attention``, no biases by default.

The trunk (:class:`Transformer`) maps inputs to hidden states; heads are
separate modules. Inputs may be token ids, continuous embeddings already
projected to the model width by an adapter, or a continuous prefix followed
by tokens. Attention is causal (``attention="causal"``, autoregressive
decoding with :class:`KVCache`, a preallocated static cache) or bidirectional
(``attention="bidirectional"``, masked generation), or follows an explicit
visibility mask.

Conditioning, each off by default (a config without it builds and computes
exactly the unconditioned model):

- a condition vector (``cond_dim``) through adaptive layer norm: every block
  shifts and scales its two normalised inputs and scales its two residual
  branches by ``1 + gate``, all four from the vector by one zero-initialised
  linear map, so at initialisation the conditioned block is the plain block;
- condition tokens in the prefix (the continuous ``prefix`` input);
- cross-attention (``cross_dim``) from every block to a set of condition tokens
  (a point cloud's encoding), whose keys and values :meth:`Transformer.encode_context`
  computes once per generation (:class:`ContextKV`) for every decoding step to reuse.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from sciar.draft_heads import draft_loss, make_draft_heads, parallel_logits
from sciar.errors import SciarError
from sciar.losses import next_token_loss


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
    rope_scale: float = 1.0  # position interpolation: rotary angles of position p are those of p / rope_scale
    attention: str = "causal"  # "causal" | "bidirectional" (every position sees every other)
    cond_dim: int = 0  # size of the condition vector fed to every block by adaptive layer norm (0: none)
    cross_dim: int = 0  # size of the condition tokens every block cross-attends to (0: no cross-attention)
    # options from the literature (README "core options"); each off by default
    mlp: str = "gelu"  # "gelu" | "relu2": Primer's squared ReLU
    qkv_conv: bool = False  # Primer: depthwise 3-wide causal convolution over time after the Q, K and V projections
    meap: float = 0.0  # MEAP: share of input tokens replaced by a learned mask vector in training (0: none)
    mtp_heads: int = 0  # extra heads predicting the tokens 2, 3, ... ahead (self-speculative decoding)
    mtp_kind: str = "parallel"  # "parallel": one head per distance (Medusa); "sequential": one draft step reused

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise SciarError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.pos not in ("rope", "learned", "none"):
            raise SciarError(f"unknown position encoding {self.pos!r} (rope, learned or none)")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise SciarError("rotary positions need an even head dimension")
        if not self.rope_scale >= 1.0:
            raise SciarError(f"rope_scale stretches the trained positions over a longer context: >= 1, got {self.rope_scale}")
        if self.attention not in ("causal", "bidirectional"):
            raise SciarError(f"unknown attention mode {self.attention!r} (causal or bidirectional)")
        if self.cond_dim < 0 or self.cross_dim < 0:
            raise SciarError("cond_dim and cross_dim must be >= 0 (0 turns the condition off)")
        if self.mlp not in ("gelu", "relu2"):
            raise SciarError(f"unknown MLP activation {self.mlp!r} (gelu or relu2)")
        if self.qkv_conv and self.attention != "causal":
            raise SciarError("qkv_conv is a causal convolution: it needs attention='causal'")
        if not 0.0 <= self.meap < 1.0:
            raise SciarError(f"meap is a share of input tokens in [0, 1), got {self.meap}")
        if self.mtp_heads < 0:
            raise SciarError(f"mtp_heads must be >= 0, got {self.mtp_heads}")
        if self.mtp_kind not in ("parallel", "sequential"):
            raise SciarError(f"unknown mtp_kind {self.mtp_kind!r} (parallel or sequential)")

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
        # Primer's convolution reads the projections of the two previous visible slots: they are kept per slot
        # (slots are where keys are: a ragged batch's hidden slots and compaction move them alike)
        self.raw = (torch.zeros((cfg.n_layer, batch, 1, capacity, 3 * cfg.n_embd), device=device, dtype=dtype)
                    if cfg.qkv_conv else None)
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

    def buffers(self) -> dict[str, torch.Tensor]:
        """Every per-slot buffer, each ``[layers, rows, ., slots, .]`` (rows on dim 1, slots on dim 3)."""
        return {"k": self.k, "v": self.v, **({"raw": self.raw} if self.raw is not None else {})}

    def set_buffers(self, bufs: dict[str, torch.Tensor]):
        for name, t in bufs.items():
            setattr(self, name, t)

    def fork(self, rows: torch.Tensor | list[int] | None = None, repeat: int = 1, capacity: int | None = None) -> "KVCache":
        """A new cache holding the filled part of selected rows, each repeated ``repeat`` times."""
        new = KVCache.__new__(KVCache)
        new.raw = None
        cap = capacity or self.capacity
        bufs = {}
        for name, t in self.buffers().items():
            t = t[:, :, :, : self.length]
            if rows is not None:
                t = t[:, torch.as_tensor(rows, device=t.device, dtype=torch.long)]
            if repeat > 1:
                t = t.repeat_interleave(repeat, dim=1)
            full = t.new_zeros((*t.shape[:3], cap, t.shape[4]))
            full[:, :, :, : self.length] = t
            bufs[name] = full
        new.set_buffers(bufs)
        new.length = self.length
        new.pos = None
        return new

    def select_rows(self, rows: torch.Tensor):
        """Keep only some rows (finished ones leave a batch)."""
        self.set_buffers({name: t[:, rows] for name, t in self.buffers().items()})

    def grow(self, capacity: int, used: int):
        """Reallocate with ``capacity`` slots, keeping the first ``used``."""
        bufs = {}
        for name, t in self.buffers().items():
            full = t.new_zeros((*t.shape[:3], capacity, t.shape[4]))
            full[:, :, :, :used] = t[:, :, :, :used]
            bufs[name] = full
        self.set_buffers(bufs)

    def gather_slots(self, order: torch.Tensor):
        """Move slots ``order[b]`` ([rows, N]) of every row to the first N slots, in that order."""
        N = order.shape[1]
        for t in self.buffers().values():
            g = order[None, :, None, :, None].expand(t.shape[0], -1, t.shape[2], -1, t.shape[4])
            t[:, :, :, :N] = t.gather(3, g)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers().values())


def _rope_tables(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    hd = cfg.n_embd // cfg.n_head
    inv = 1.0 / (cfg.rope_base ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
    t = torch.arange(cfg.block_size, device=device, dtype=torch.float32) / cfg.rope_scale
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
        # Primer's depthwise convolution, one 3-tap filter per channel of Q, K and V (so per head), stored as
        # the change from the identity: zeros start (and weight decay pulls) towards the plain projections
        self.conv = nn.Parameter(torch.zeros(3, 3 * cfg.n_embd)) if cfg.qkv_conv else None

    def forward(self, x, rope, mask, cache: KVCache | None, layer: int, causal: bool = True):
        B, T, C = x.shape
        u = self.qkv(x)
        if self.conv is not None:
            u = self._causal_conv(u, mask, cache, layer)
        q, k, v = u.view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
        is_causal = causal and mask is None
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


    def _causal_conv(self, u, mask, cache: KVCache | None, layer: int):
        """``u_t (1 + w0) + u_prev1 w1 + u_prev2 w2`` per channel, where prev1 and prev2 are the two latest
        earlier slots the query may attend to (causal order; with a mask, the visible ones: left padding and a
        ragged batch's hidden slots are skipped, as attention skips them); missing ones count as zero."""
        B, T, _ = u.shape
        w = self.conv.to(u.dtype)
        if cache is None and mask is None:
            p1 = F.pad(u, (0, 0, 1, 0))[:, :T]
            p2 = F.pad(u, (0, 0, 2, 0))[:, :T]
            return u * (1 + w[0]) + p1 * w[1] + p2 * w[2]
        if cache is None:
            hist, query = u, torch.arange(T, device=u.device)
        elif cache.pos is not None:
            cache.raw[layer].index_copy_(2, cache.pos, u[:, None].to(cache.raw.dtype))
            hist, query = cache.raw[layer, :, 0], cache.pos
        else:
            start = cache.length
            cache.raw[layer, :, 0, start : start + T] = u
            hist, query = cache.raw[layer, :, 0, : start + T], start + torch.arange(T, device=u.device)
        S = hist.shape[1]
        keys = torch.arange(S, device=u.device)
        before = keys[None, None, :] < query[None, :, None]  # [1, T, S]
        if mask is not None:
            m = mask[:, 0] if mask.dim() == 4 else (mask if mask.dim() == 3 else mask[None])
            before = before & m[..., -S:] if m.shape[-1] >= S else before & m
        slot = torch.where(before, keys, -1)
        prev = torch.cat([slot, slot.new_full((*slot.shape[:2], 2), -1)], -1).topk(2, dim=-1).values  # [1|B, T, 2]
        prev = prev.expand(B, T, 2)

        def take(p):
            g = hist.gather(1, p.clamp(min=0)[..., None].expand(B, T, hist.shape[-1]))
            return g * (p >= 0)[..., None].to(g.dtype)

        return u * (1 + w[0]) + take(prev[..., 0]) * w[1] + take(prev[..., 1]) * w[2]


def _causal_offset_mask(T: int, start: int, device) -> torch.Tensor:
    q = torch.arange(start, start + T, device=device)[:, None]
    k = torch.arange(start + T, device=device)[None, :]
    return k <= q


class ContextKV:
    """Keys and values of a set of condition tokens for every block's cross-attention.

    Computed once per generation by :meth:`Transformer.encode_context` and passed as
    ``context`` to every decoding step (cached causal steps, or the K steps of masked
    decoding), so the condition's projections are not recomputed per token.
    ``kv[layer]`` is ``(k, v)``, each ``[B, H, S, D]``.
    """

    def __init__(self, kv: list[tuple[torch.Tensor, torch.Tensor]]):
        self.kv = kv

    @property
    def batch(self) -> int:
        return self.kv[0][0].shape[0]

    def rows(self, idx: torch.Tensor | list[int]) -> "ContextKV":
        """The keys and values of some rows (tree search forks a row; guidance repeats rows)."""
        idx = torch.as_tensor(idx, device=self.kv[0][0].device, dtype=torch.long)
        return ContextKV([(k[idx], v[idx]) for k, v in self.kv])


class CrossAttention(nn.Module):
    """Queries from the sequence, keys and values from the condition tokens (no positions, no mask)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.kv = nn.Linear(cfg.cross_dim, 2 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, _ = context.shape
        k, v = self.kv(context).view(B, S, 2, self.n_head, -1).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x, kv: tuple[torch.Tensor, torch.Tensor]):
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, *kv).transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.relu2 = cfg.mlp == "relu2"

    def forward(self, x):
        h = self.fc(x)
        h = F.relu(h).square() if self.relu2 else F.gelu(h)  # Primer's squared ReLU
        return self.drop(self.proj(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)
        self.causal = cfg.attention == "causal"
        if cfg.cross_dim:
            self.ln_x = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
            self.cross = CrossAttention(cfg)
        else:
            self.cross = None
        # adaptive layer norm: shift, scale and gate of both branches from the condition vector
        self.ada = nn.Linear(cfg.cond_dim, 6 * cfg.n_embd, bias=cfg.bias) if cfg.cond_dim else None

    def forward(self, x, rope, mask, cache, layer, cond=None, context: ContextKV | None = None):
        if self.ada is None:
            x = x + self.attn(self.ln1(x), rope, mask, cache, layer, self.causal)
            if self.cross is not None:
                x = x + self.cross(self.ln_x(x), context.kv[layer])
            return x + self.mlp(self.ln2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(cond))[:, None].chunk(6, dim=-1)
        x = x + (1 + gate1) * self.attn(self.ln1(x) * (1 + scale1) + shift1, rope, mask, cache, layer, self.causal)
        if self.cross is not None:
            x = x + self.cross(self.ln_x(x), context.kv[layer])
        return x + (1 + gate2) * self.mlp(self.ln2(x) * (1 + scale2) + shift2)


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
        # what rows without a condition (dropped for classifier-free guidance) cross-attend to
        self.null_context = nn.Parameter(torch.zeros(cfg.cross_dim)) if cfg.cross_dim else None
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
            elif name.endswith("ada.weight") or name.endswith("ada.bias"):  # conditioned blocks start as plain ones
                nn.init.zeros_(p)
        if self.null_context is not None:
            nn.init.normal_(self.null_context, mean=0.0, std=0.02)

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

    def encode_context(
        self, context: torch.Tensor | None, drop: torch.Tensor | None = None, batch: int | None = None
    ) -> ContextKV:
        """Cross-attention keys and values of condition tokens ``[B, S, cross_dim]``, for every block.

        ``drop`` (``[B]`` bool) replaces the tokens of those rows by the learned null condition
        (condition dropout in training, the unconditioned half under guidance); ``context=None``
        gives the null condition to ``batch`` rows.
        """
        if self.null_context is None:
            raise SciarError("this model has no cross-attention (cross_dim=0); it was not trained with condition tokens")
        if context is None:
            context = self.null_context.expand(batch or 1, 1, -1)
        if context.dim() != 3 or context.shape[-1] != self.cfg.cross_dim:
            raise SciarError(f"condition tokens must be [batch, tokens, {self.cfg.cross_dim}], got {list(context.shape)}")
        if drop is not None:
            context = torch.where(drop.to(context.device)[:, None, None], self.null_context.to(context.dtype), context)
        return ContextKV([block.cross.context_kv(context) for block in self.blocks])

    def forward(
        self,
        idx: torch.Tensor | None = None,
        embeds: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        context: torch.Tensor | ContextKV | None = None,
    ) -> torch.Tensor:
        """Hidden states for the inputs.

        ``mask``: None for the configured attention (causal or bidirectional), or a boolean
        visibility mask (``[T, T]``, ``[B, T, T]`` or ``[B, 1, T, T]``; True = may attend).
        ``cache``: extend a :class:`KVCache` (causal; a mask
        given with a filled cache covers all cached and new keys, ``[B, T, length + T]``,
        so rows of different lengths can share one cache with hidden left padding).
        ``positions``: explicit positions (``[T]`` or ``[B, T]``), default
        ``cache.length + arange(T)``. ``cond``: the condition vector ``[B, cond_dim]`` of a model
        with adaptive layer norm. ``context``: condition tokens ``[B, S, cross_dim]`` or their
        :class:`ContextKV` (computed once by :meth:`encode_context`) for cross-attention.
        """
        x = self.embed(idx, embeds, prefix)
        B, T, _ = x.shape
        cond, context = self._check_conditions(B, cond, context)
        if cache is not None and self.cfg.attention != "causal":
            raise SciarError("a bidirectional model has no KV cache: every step re-reads the whole sequence")
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
            x = block(x, rope, mask, cache, i, cond, context)
        if cache is not None and not static:
            cache.length = start + T
        return self.ln_f(x)

    def _check_conditions(self, B: int, cond, context):
        """The conditions a model was built for, no others, with their shapes (one-line errors)."""
        cfg = self.cfg
        if cond is not None and not cfg.cond_dim:
            raise SciarError("this model takes no condition vector (cond_dim=0); it was not trained with one")
        if cfg.cond_dim and (cond is None or tuple(cond.shape) != (B, cfg.cond_dim)):
            got = "none" if cond is None else list(cond.shape)
            raise SciarError(f"this model is conditioned by a vector: pass cond of shape [{B}, {cfg.cond_dim}] (got {got})")
        if context is not None and not cfg.cross_dim:
            raise SciarError("this model has no cross-attention (cross_dim=0); it was not trained with condition tokens")
        if cfg.cross_dim:
            if context is None:
                raise SciarError("this model cross-attends to condition tokens: pass context "
                                 "(trunk.encode_context(None, batch=B) for the null condition)")
            if not isinstance(context, ContextKV):
                context = self.encode_context(context)
            if context.batch != B:
                raise SciarError(f"condition tokens for {context.batch} rows, inputs for {B}")
        return cond, context


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
    """Trunk + LM head: the model of every token domain. ``forward`` returns the loss when given targets.

    Training options (README "core options"): ``cfg.meap`` replaces that share of the input tokens by a
    learned mask vector while training (the targets stay: next-token prediction over masked inputs);
    ``emo_cost`` (a frozen ``[vocab, d]`` embedding, set by :func:`sciar.train.train` from ``TrainConfig.emo``)
    mixes EMO's transport cost into the loss (:func:`sciar.losses.next_token_loss`); ``cfg.mtp_heads`` adds heads that
    predict the tokens 2, 3, ... ahead, their cross-entropies added to the loss.
    """

    def __init__(self, cfg: ModelConfig, tied: bool = True):
        super().__init__()
        if not cfg.vocab_size:
            raise SciarError("a language model needs vocab_size > 0")
        self.cfg = cfg
        self.trunk = Transformer(cfg)
        self.head = LMHead(self.trunk, tied=tied)
        self.mask_embed = nn.Parameter(torch.randn(cfg.n_embd) * 0.02) if cfg.meap else None
        self.mtp = make_draft_heads(cfg)  # sciar.draft_heads: self-speculative decoding's draft heads
        self.register_buffer("emo_cost", None, persistent=False)

    def forward(self, idx, targets=None, prefix=None, cache=None, positions=None, mask=None, cond=None, context=None):
        embeds = None
        if self.mask_embed is not None and self.training and targets is not None:
            x = self.trunk.wte(idx)
            hide = torch.rand(idx.shape, device=idx.device) < self.cfg.meap
            embeds, idx = torch.where(hide[..., None], self.mask_embed.to(x.dtype), x), None
        h = self.trunk(idx=idx, embeds=embeds, prefix=prefix, cache=cache, positions=positions, mask=mask, cond=cond,
                       context=context)
        if targets is None:
            return self.head(h)
        if prefix is not None:
            h = h[:, prefix.shape[1] :]
        # EMO is a training loss: evaluation scores cross-entropy, comparable across options
        loss = next_token_loss(self.head(h), targets, self.emo_cost if self.training else None)  # targets < 0 ignored
        if self.mtp is not None:
            loss = loss + self.mtp_loss(h, targets)
        return loss

    @property
    def sequential_draft(self) -> bool:
        return self.mtp is not None and self.cfg.mtp_kind == "sequential"

    def draft_step(self, g: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Sequential heads: the state after ``tokens`` (``[...]``) from the states ``g`` (``[..., C]``) that
        predicted them; ``self.head`` of it predicts the token after."""
        return self.mtp(g, self.trunk.wte(tokens))

    def mtp_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of the parallel heads, ``[..., mtp_heads, vocab]``: head i predicts the token ``i + 2`` ahead."""
        return parallel_logits(self, h)

    def mtp_loss(self, h: torch.Tensor, targets: torch.Tensor, distill: bool = False) -> torch.Tensor:
        """Sum over the draft heads of their loss (head i at position t: the target of t + 1 + i; against the
        data, or with ``distill`` the model's own distribution there)."""
        return draft_loss(self, h, targets, distill)


def with_context(model: LanguageModel, block_size: int, method: str = "ntk") -> LanguageModel:
    """A copy of ``model`` whose context holds ``block_size`` tokens (``s`` times its own), rotary positions
    rescaled so that the longest distances stay inside the trained range of angles; a short fine-tune at the new
    length then adapts the model. ``method``:

    - ``"ntk"`` (the default; "NTK-aware" scaling, bloc97 2023, analysed in YaRN, Peng et al. 2023): the rotary base
      grows by ``s ** (d / (d - 2))`` (``d`` the head dimension), so the fastest-turning pair keeps its angles
      (local order, which CIF syntax lives on, is unchanged) and the slowest turns ``s`` times slower;
    - ``"linear"`` (position interpolation, Chen et al. 2023): every angle of position p becomes that of p / s.

    Measured on 2,048-token windows of MP-20 validation CIFs before any fine-tune (crystals README): crystal-medium
    keeps a loss of 0.54 with "ntk", 5.45 with "linear" (2.17 extrapolating with the old angles). The weights are
    copied as they are (rotary tables are not weights); learned position tables have no entries past the trained
    length, so only rotary models extend."""
    cfg = model.cfg
    if cfg.pos != "rope":
        raise SciarError(f"only rotary positions extend by interpolation; this model has pos={cfg.pos!r}")
    if block_size < cfg.block_size:
        raise SciarError(f"the context can only grow: {block_size} < the model's {cfg.block_size}")
    s, hd = block_size / cfg.block_size, cfg.n_embd // cfg.n_head
    if method == "ntk":
        change = {"rope_base": cfg.rope_base * s ** (hd / (hd - 2))}
    elif method == "linear":
        change = {"rope_scale": cfg.rope_scale * s}
    else:
        raise SciarError(f"unknown context extension {method!r} (ntk or linear)")
    out = LanguageModel(ModelConfig(**{**cfg.to_dict(), "block_size": block_size, **change}), tied=model.head.tied)
    out.load_state_dict(model.state_dict())
    return out.to(next(model.parameters()).device)
