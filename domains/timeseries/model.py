"""The AutoTimes-style forecaster: segments of a series as continuous tokens through the sciar trunk.

A window is cut into non-overlapping segments (96 steps by default). Each segment is
embedded into the model width (Linear, or Linear-tanh-dropout-Linear), a calendar
embedding of the segment's first and last timestamps is mixed in as its position
(``e + a * p`` with a learnable ``a``), the causal trunk (:class:`sciar.model.Transformer`,
``embeds=`` path) reads the sequence and an output projection of the same shape maps
each hidden state to the next segment. The loss is the next-segment MSE at every
position. Each window is normalised by its lookback's mean and deviation, undone after
prediction; channels are separate samples (channel independence).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from sciar.decode.continuous import Step, decode_continuous
from sciar.errors import CheckpointError, SciarError
from sciar.model import ModelConfig, Transformer

from .data import CALENDAR_SIZES


@dataclass
class HeadConfig:
    """The adapter's part: segment length, trained context and the shapes of the embedding/projection."""

    segment: int = 96
    context: int = 7  # lookback segments (672 = 7 x 96): the window statistics and the default lookback
    window: int = 16  # segments per training window: the lookback, then the segments a rollout will see
    embed: str = "mlp"  # "linear" | "mlp" (Linear-tanh-dropout-Linear)
    hidden: int = 256
    dropout: float = 0.1
    time: bool = True  # calendar position embeddings
    skip: int = 0  # segments read by a linear path added to the projection (0: none, the pure AutoTimes head)
    stats: bool = False  # feed the lookback's mean and deviation (removed by the normalisation) back as an embedding
    eps: float = 1e-5
    std_floor: float = 0.01  # least window deviation (in training-split standard units): flat windows, e.g. no rain
    anchor: str = "mean"  # what each window is centred on: its lookback's mean, or its last value ("last")

    def __post_init__(self):
        if self.anchor not in ("mean", "last"):
            raise SciarError(f"unknown window anchor {self.anchor!r} (mean or last)")
        if self.embed not in ("linear", "mlp"):
            raise SciarError(f"unknown segment embedding {self.embed!r} (linear or mlp)")
        if self.segment < 1 or self.context < 1:
            raise SciarError("segment and context must be positive")
        if self.window < self.context + 1:
            self.window = self.context + 1

    @property
    def lookback(self) -> int:
        return self.segment * self.context

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HeadConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _mlp(n_in: int, n_out: int, cfg: HeadConfig) -> nn.Module:
    if cfg.embed == "linear":
        return nn.Linear(n_in, n_out)
    return nn.Sequential(nn.Linear(n_in, cfg.hidden), nn.Tanh(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, n_out))


class CalendarEmbedding(nn.Module):
    """Learned embeddings of (hour, weekday, day of month, month, sampling step) of a segment's first and last step."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n, n_embd) for n in CALENDAR_SIZES * 2)
        for t in self.tables:
            nn.init.normal_(t.weight, std=0.02)

    def forward(self, marks: torch.Tensor) -> torch.Tensor:  # [B, T, 10] -> [B, T, n_embd]
        return sum(t(marks[..., i]) for i, t in enumerate(self.tables))


class SegmentForecaster(nn.Module):
    """Embedding + trunk + projection. ``forward(x, marks)`` returns the next-segment MSE."""

    def __init__(self, model_cfg: ModelConfig, head: HeadConfig):
        super().__init__()
        if model_cfg.vocab_size:
            raise SciarError("the time-series trunk takes continuous inputs (vocab_size must be 0)")
        self.cfg, self.head = model_cfg, head
        self.trunk = Transformer(model_cfg)
        self.embed = _mlp(head.segment, model_cfg.n_embd, head)
        self.proj = _mlp(model_cfg.n_embd, head.segment, head)
        self.time = CalendarEmbedding(model_cfg.n_embd) if head.time else None
        self.mix = nn.Parameter(torch.ones(1))  # AutoTimes' learnable weight of the timestamp embedding
        # optional linear path from the last `skip` segments to the next one: the transformer then learns the
        # residual of a linear forecaster (initialised by least squares, see pipeline.init_skip)
        self.skip = None
        if head.skip:
            self.add_skip(head.skip)
        self.stats = self.stats_out = None
        if head.stats:
            self.add_stats()

    def add_skip(self, k: int):
        """The linear path from the last ``k`` segments, at zero: a backbone given it forecasts as before."""
        self.head.skip = k
        self.skip = nn.Linear(k * self.head.segment, self.head.segment, bias=False)
        nn.init.zeros_(self.skip.weight)
        return self

    def add_stats(self):
        """Give the model the window statistics that the per-window normalisation hides (the level and scale
        of the lookback in the training split's units, as Non-stationary Transformers feed back theirs): an
        embedding of (mean, log deviation, mean/deviation) added to every segment token. Starts at zero, so
        a backbone given it forecasts exactly as before until training moves it."""
        self.head.stats = True
        self.stats = nn.Linear(3, self.cfg.n_embd)
        self.stats_out = nn.Linear(3, self.head.segment)  # and a direct offset of each predicted segment
        for t in (self.stats.weight, self.stats.bias, self.stats_out.weight, self.stats_out.bias):
            nn.init.zeros_(t)
        return self

    @staticmethod
    def stat_features(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return torch.cat([mean, std.log(), mean / std], dim=-1).clamp(-10.0, 10.0)  # [B, 3]

    # ------------------------------------------------------------------------------------------- parameters
    def adapter_parameters(self):
        """What AutoTimes trains on a frozen backbone: embedding, projection, calendar embedding, mixing weight."""
        return [p for n, p in self.named_parameters() if not n.startswith("trunk.")]

    def freeze_trunk(self, frozen: bool = True):
        for p in self.trunk.parameters():
            p.requires_grad_(not frozen)

    def train_only_untimed(self):
        """Freeze everything but the calendar tables that series without timestamps read "unknown" from.

        The hour tables stay frozen: their "unknown" entry is what daily and coarser series get, so it is
        trained already. Fed all-unknown calendars without weight decay, only the "unknown" rows move,
        and forecasts of timestamped series stay exactly as they were."""
        if self.time is None:
            raise SciarError("the model has no calendar embedding")
        for p in self.parameters():
            p.requires_grad_(False)
        for i, t in enumerate(self.time.tables):
            t.weight.requires_grad_(i % len(CALENDAR_SIZES) != 0)  # 0: hour (of the first or the last step)

    # ---------------------------------------------------------------------------------------------- forward
    def tokens(self, segs: torch.Tensor, marks: torch.Tensor | None, mean: torch.Tensor | None = None,
               std: torch.Tensor | None = None) -> torch.Tensor:
        e = self.embed(segs)
        if self.time is not None and marks is not None:
            e = e + self.mix * self.time(marks)
        if self.stats is not None and mean is not None:
            e = e + self.stats(self.stat_features(mean, std))[:, None, :]
        return e

    def skip_inputs(self, segs: torch.Tensor) -> torch.Tensor:
        """``[B, n, S]`` -> ``[B, n, skip*S]``: each position's last ``skip`` segments (zeros before the start)."""
        B, n, S = segs.shape
        k = self.head.skip
        padded = torch.cat([segs.new_zeros(B, k - 1, S), segs], dim=1) if k > 1 else segs
        return padded.unfold(1, k, 1).permute(0, 1, 3, 2).reshape(B, n, k * S)

    def head_out(self, h: torch.Tensor, segs: torch.Tensor, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None) -> torch.Tensor:
        """Next-segment predictions from hidden states (and the inputs, for the linear path)."""
        out = self.proj(h)
        if self.skip is not None:
            out = out + self.skip(self.skip_inputs(segs))
        if self.stats is not None and mean is not None:
            out = out + self.stats_out(self.stat_features(mean, std))[:, None, :]
        return out

    def normalise(self, x: torch.Tensor, n: int):
        """Each window centred (on its lookback's mean, or last value) and scaled by the deviation of its first
        ``n`` steps (the lookback); returns the normalised windows, the centres and the deviations."""
        ctx = x[:, :n]
        mean = ctx[:, -1:] if self.head.anchor == "last" else ctx.mean(dim=1, keepdim=True)
        std = torch.sqrt(ctx.var(dim=1, keepdim=True, unbiased=False) + self.head.eps).clamp_min(self.head.std_floor)
        return (x - mean) / std, mean, std

    def forward(self, x: torch.Tensor, marks: torch.Tensor | None = None,
                horizons: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, (k+1)*S]``, ``marks [B, k+1, 10]``: loss of predicting segments 2..k+1 from 1..k.

        With ``horizons`` (a 1-D tensor of step counts) it returns :meth:`rolled_loss` instead: the
        validation metric that matches how the model is used (one-for-all rolling from the lookback).
        """
        if horizons is not None:
            return self.rolled_loss(x, marks, [int(h) for h in horizons])
        return self.next_loss(x, marks)

    def next_loss(self, x: torch.Tensor, marks: torch.Tensor | None = None) -> torch.Tensor:
        """The next-segment MSE at every position, teacher-forced."""
        pred, tgt = self.next_predictions(x, marks)[:2]
        return F.mse_loss(pred, tgt)

    def next_predictions(self, x: torch.Tensor, marks: torch.Tensor | None = None):
        """Teacher-forced predictions of segments 2..n from 1..n-1 and their targets (normalised units), with the
        inputs, centres and deviations they were made from: ``(pred, target, inputs, marks, mean, std)``."""
        S = self.head.segment
        n_seg = x.shape[1] // S
        if n_seg < 2 or x.shape[1] % S:
            raise SciarError(f"a training window must hold at least two whole segments of {S} steps")
        # statistics of the lookback part only, as at forecast time; later segments are normalised by them too,
        # so the positions after the lookback train the model on what a rollout sees
        xn, mean, std = self.normalise(x, min(self.head.context, n_seg - 1) * S)
        segs = xn.view(x.shape[0], n_seg, S)
        m = marks[:, : n_seg - 1] if marks is not None else None
        inp, tgt = segs[:, :-1], segs[:, 1:]
        pred = self.head_out(self.trunk(embeds=self.tokens(inp, m, mean, std)), inp, mean, std)
        return pred, tgt, inp, m, mean, std

    def rolled_loss(self, x: torch.Tensor, marks: torch.Tensor | None, horizons: list[int]) -> torch.Tensor:
        """The benchmark's figure on a batch of windows: roll the model from the lookback (the first
        ``context`` segments) over the rest of the window, then average over ``horizons`` the MSE of the
        first ``h`` forecast steps, in the data's (standardised) units rather than per-window ones."""
        L = self.head.lookback
        H = max(horizons)
        if x.shape[1] < L + H:
            raise SciarError(f"a window of {x.shape[1]} steps cannot score a lookback of {L} and a horizon of {H}")
        err = (self._roll(x[:, :L], marks, H) - x[:, L : L + H]).square()
        return torch.stack([err[:, :h].mean() for h in horizons]).mean()

    def _roll(self, ctx, marks, horizon, prompt=None, prompt_marks=None, max_context=None, noise: float = 0.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """One-for-all rolling on the cached loop (:func:`sciar.decode.continuous.decode_continuous`): each step
        predicts the next segment from the last hidden state and feeds back its embedding; past ``max_context``
        segments the window slides (the prompt, if any, stays in front)."""
        S = self.head.segment
        B, L = ctx.shape
        if L % S or L == 0:
            raise SciarError(f"the lookback ({L}) must be a positive multiple of the segment length {S}")
        if horizon < 1:
            raise SciarError("the horizon must be at least 1")
        steps, k = -(-horizon // S), L // S
        # keep the true lookback while the sequence stays within the trained window; beyond it drop the oldest
        max_context = max_context or max(k, self.head.window - 1)
        xn, mean, std = self.normalise(ctx, L)
        seq = list(xn.view(B, k, S).unbind(1))
        e = self.tokens(xn.view(B, k, S), marks[:, :k] if marks is not None else None, mean, std)
        sink = 0
        if prompt is not None:
            pn, _, _ = self.normalise(prompt, prompt.shape[1])
            pre = self.tokens(pn.view(B, -1, S), prompt_marks)
            e, sink = torch.cat([pre, e], dim=1), pre.shape[1]
        window = sink + min(max_context, k + steps - 1)  # the longest sequence the trunk will read
        if window > self.cfg.block_size:
            raise SciarError(f"{window} segments exceed the model's context of {self.cfg.block_size}")

        def step(h: torch.Tensor, i: int, rows: torch.Tensor) -> Step:  # no row ends early: rows are all of them
            nxt = self.proj(h)
            if self.skip is not None:
                recent = torch.stack(seq[-self.head.skip :], dim=1)
                nxt = nxt + self.skip(self.skip_inputs(recent)[:, -1])
            if self.stats is not None:
                nxt = nxt + self.stats_out(self.stat_features(mean, std))
            if noise:
                nxt = nxt + noise * torch.randn(nxt.shape, generator=generator, device=nxt.device)
            seq.append(nxt)
            if i == steps - 1:  # the last segment is never read back
                return Step(nxt, None)
            m = marks[:, k + i : k + i + 1] if marks is not None else None
            return Step(nxt, self.tokens(nxt[:, None], m, mean, std)[:, 0])

        out = decode_continuous(self.trunk, e, step, steps, window=window, sink=sink)
        return out.values.reshape(B, steps * S)[:, :horizon] * std + mean

    @torch.no_grad()
    def forecast(self, ctx: torch.Tensor, marks: torch.Tensor | None, horizon: int, prompt: torch.Tensor | None = None,
                 prompt_marks: torch.Tensor | None = None, max_context: int | None = None) -> torch.Tensor:
        """Roll the model forward: ``ctx [B, L]`` (L a multiple of the segment) -> ``[B, horizon]``.

        ``marks [B, L/S + ceil(horizon/S), 10]`` covers the context and the future segments.
        Each step appends the predicted segment; beyond ``max_context`` segments (default: the
        trained window) the oldest is dropped (AutoTimes' one-for-all rolling). ``prompt [B, P*S]``:
        in-context segments put in front of the lookback (normalised by their own statistics).
        """
        return self._roll(ctx, marks, horizon, prompt, prompt_marks, max_context)

    @torch.no_grad()
    def sample(self, ctx, marks, horizon: int, n: int, residual_std: float, seed: int = 0, **kw) -> torch.Tensor:
        """``n`` sampled paths ``[B, n, horizon]``: each rolled segment gets Gaussian noise of the backtest
        residual deviation (in normalised units), so uncertainty grows with the horizon as errors compound."""
        B = ctx.shape[0]
        g = torch.Generator(device=ctx.device).manual_seed(seed)
        rep = lambda t: t.repeat_interleave(n, 0) if t is not None else None
        y = self._roll(rep(ctx), rep(marks), horizon, noise=residual_std, generator=g, **kw)
        return y.view(B, n, horizon)


def build_model(config: dict) -> SegmentForecaster:
    """A forecaster from a checkpoint config ``{"model": ..., "head": ...}``."""
    try:
        mcfg = ModelConfig.from_dict(config["model"])
        head = HeadConfig.from_dict(config["head"])
        return SegmentForecaster(mcfg, head)
    except (KeyError, TypeError, ValueError, SciarError) as e:
        raise CheckpointError(f"not a time-series checkpoint config ({e})") from None


