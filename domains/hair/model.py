"""The hair model (after CHARM): the core's causal trunk over six-field card tokens, conditioned on a point cloud.

- input: :class:`sciar.heads.MultiFieldEmbedding` of the tokens of :mod:`domains.hair.tokens` (flag, x, y, z,
  width, thickness; ``-1`` where a token carries no field, and for padding after ``END``);
- condition: a point cloud of the target hair (head frame units) through :class:`PointEncoder` (farthest-point
  sampled centres, each with its nearest neighbours, a shared MLP and a max-pool) into condition tokens that every
  block of the trunk cross-attends to (keys and values computed once per cloud);
- output: :class:`sciar.heads.MultiFieldHead`, the flag first, then the five fields, each given the earlier ones.

Sampling (:meth:`HairModel.generate`) runs :func:`sciar.decode.continuous.decode_continuous` with a step that
draws the fields under a mask keeping every sequence well formed: a card holds at least two points, the sequence
ends within ``max_len`` tokens (at most the context), fields are drawn only for points and only from their bins.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from domains.hair.tokens import END, FIELD_SIZES, PAD, POINT, SEP, START
from sciar.decode.continuous import Step, decode_continuous
from sciar.errors import SciarError
from sciar.heads import MultiFieldEmbedding, MultiFieldHead
from sciar.model import ModelConfig, Transformer

TOKEN_FIELDS = (4, *FIELD_SIZES)  # the flag (POINT, START, SEP, END), then x, y, z, width, thickness
N_POINTS = 2048  # points of the condition cloud

PRESETS = {
    # 2 CPU cores: a context of 1,536 tokens holds whole procedural hairstyles (control points every 5 cm: the
    # longest of 200 draws is 1,459 tokens); 2,000 steps of 4 hairstyles are about 45 min on one busy core
    "tiny": {
        "model": dict(block_size=1536, n_layer=2, n_head=2, n_embd=64, pos="rope"),
        "encoder": dict(groups=64, group_size=32, width=64),
        "train": dict(max_steps=2000, batch_size=4, lr=1e-3, min_lr=1e-4, warmup_steps=150, eval_every=250,
                      save_every=250, eval_batches=4, ema=0.995),
    },
    # CHARM's shape (6 layers, width 768, context up to 8,192 tokens): configuration for an accelerator
    "charm": {
        "model": dict(block_size=8192, n_layer=6, n_head=12, n_embd=768, pos="rope"),
        "encoder": dict(groups=256, group_size=32, width=768),
        "train": dict(max_steps=100_000, batch_size=8, lr=1e-4, min_lr=1e-5, warmup_steps=2000, eval_every=2000,
                      save_every=2000, eval_batches=20, ema=0.999),
    },
}


def farthest_points(p: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[B, k]`` of farthest-point samples of ``p [B, N, 3]``, starting from point 0 (deterministic)."""
    B, N, _ = p.shape
    idx = torch.zeros(B, k, dtype=torch.long, device=p.device)
    dist = torch.full((B, N), float("inf"), device=p.device)
    last = torch.zeros(B, dtype=torch.long, device=p.device)
    rows = torch.arange(B, device=p.device)
    for i in range(k):
        idx[:, i] = last
        dist = torch.minimum(dist, (p - p[rows, last][:, None]).pow(2).sum(-1))
        last = dist.argmax(-1)
    return idx


class PointEncoder(nn.Module):
    """Point cloud ``[B, N, 3]`` -> ``groups`` condition tokens ``[B, groups, width]``.

    Each token: a farthest-point-sampled centre and its ``group_size`` nearest points, their offsets from the
    centre through a shared MLP, max-pooled, plus an embedding of the centre itself.
    """

    def __init__(self, groups: int, group_size: int, width: int):
        super().__init__()
        self.groups, self.group_size, self.width = groups, group_size, width
        self.local = nn.Sequential(nn.Linear(3, width), nn.GELU(), nn.Linear(width, width))
        self.centre = nn.Sequential(nn.Linear(3, width), nn.GELU(), nn.Linear(width, width))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if points.dim() != 3 or points.shape[-1] != 3 or points.shape[1] < self.group_size:
            raise SciarError(f"a point cloud must be [batch, >= {self.group_size} points, 3], got {list(points.shape)}")
        rows = torch.arange(points.shape[0], device=points.device)[:, None]
        centres = points[rows, farthest_points(points, self.groups)]  # [B, G, 3]
        near = torch.cdist(centres, points).topk(self.group_size, dim=-1, largest=False).indices  # [B, G, K]
        offsets = points[rows[..., None], near] - centres[:, :, None]  # [B, G, K, 3]
        return self.out(self.local(offsets * 10).amax(2) + self.centre(centres))  # offsets are ~0.01 frame units


class HairModel(nn.Module):
    """Trunk, multi-field embedding and head, point encoder; ``forward(tokens, points)`` is the training loss."""

    def __init__(self, cfg: ModelConfig, encoder: dict):
        super().__init__()
        if cfg.vocab_size or cfg.attention != "causal" or cfg.cross_dim != encoder["width"]:
            raise SciarError("the hair trunk is causal, has no token table and cross-attends to the point encoder's width")
        self.cfg = cfg
        self.trunk = Transformer(cfg)
        self.embed = MultiFieldEmbedding(TOKEN_FIELDS, cfg.n_embd)
        self.head = MultiFieldHead(cfg.n_embd, TOKEN_FIELDS)
        self.encoder = PointEncoder(**encoder)

    @classmethod
    def from_preset(cls, preset: dict) -> "HairModel":
        return cls(ModelConfig(vocab_size=0, cross_dim=preset["encoder"]["width"], **preset["model"]), preset["encoder"])

    def hidden(self, tokens: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[B, T, n_embd]`` of token rows ``[B, T, 6]`` given condition clouds ``[B, N, 3]``."""
        return self.trunk(embeds=self.embed(tokens), context=self.trunk.encode_context(self.encoder(points)))

    def forward(self, tokens: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over every field of every next token (``-1`` fields and padding rows do not count)."""
        return self.head.loss(self.hidden(tokens[:, :-1], points), tokens[:, 1:])

    @torch.no_grad()
    def generate(self, points: torch.Tensor, max_len: int | None = None, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> list[np.ndarray]:
        """One well-formed token sequence ``(T, 6)`` (``START ... END``, ``T <= max_len``) per condition cloud.

        ``max_len`` defaults to the context (``block_size``); ``top_k=1`` is greedy.
        """
        max_len = max_len or self.cfg.block_size
        if not 4 <= max_len <= self.cfg.block_size:
            raise SciarError(f"max_len must lie in 4..{self.cfg.block_size} (the context), got {max_len}")
        B, dev = points.shape[0], points.device
        start = torch.full((B, 1, len(TOKEN_FIELDS)), PAD, dtype=torch.long, device=dev)
        start[..., 0] = START
        context = self.trunk.encode_context(self.encoder(points))
        in_card = torch.zeros(B, dtype=torch.long, device=dev)  # points in each row's open card

        def step(h, i, rows):  # the rows still running (a row that wrote END has left)
            open_card = in_card[rows]

            def allowed(at, j, chosen):  # at: the step the head samples (== i)
                if j == 0:
                    room = max_len - 1 - at  # tokens still allowed: START and `at` tokens are written
                    ok = torch.zeros(len(rows), TOKEN_FIELDS[0], dtype=torch.bool, device=dev)
                    # after a point, room to close the card (two points at least) and END
                    ok[:, POINT] = room - 1 >= (1 - open_card).clamp(min=0) + 1
                    ok[:, SEP] = (open_card >= 2) & (room >= 4)  # room for SEP, two points, END
                    ok[:, END] = open_card >= 2
                    return ok
                return (chosen[:, :1] == POINT).expand(len(rows), TOKEN_FIELDS[j]).clone()

            fields = self.head.sample(h, temperature, top_k, generator, allowed=allowed, step=i)
            flag = fields[:, 0]
            in_card[rows] = torch.where(flag == POINT, open_card + 1, torch.zeros_like(open_card))
            return Step(fields, self.embed(fields[:, None])[:, 0], flag == END)

        out = decode_continuous(self.trunk, self.embed(start), step, max_len - 1, trunk_kwargs={"context": context})
        return [torch.cat([start[r], out.values[r, : out.lengths[r]]]).cpu().numpy() for r in range(B)]


def points_tensor(points: np.ndarray, head, n: int = N_POINTS, seed: int = 0) -> torch.Tensor:
    """A cloud in metres -> ``[n, 3]`` float32 in the token frame (drawn with replacement when it has fewer)."""
    rng = np.random.default_rng(seed)
    p = np.asarray(points, dtype=np.float64)
    pick = rng.permutation(len(p))[:n] if len(p) >= n else rng.integers(0, len(p), n)
    return torch.from_numpy(((p[pick] - head.origin) / head.scale).astype(np.float32))
