"""Time-series training recipes that lost, kept to reproduce the README's findings (not user-facing options).

    # the window-statistics inputs (an embedding and an offset of the lookback's mean and deviation)
    python benchmarks/timeseries_recipes.py --csv ../shared/data/timeseries/ETTh1.csv --out runs/st \
        --init timeseries-pretrained --adapter-only --stats --lr 1e-3 --max-steps 1200 --threads 1
    # from scratch with a linear path from the last 7 segments, started by least squares
    python benchmarks/timeseries_recipes.py --csv ../shared/data/timeseries/ETTh1.csv --out runs/sk --skip 7

    # fine-tune from the backbone with 3 extra passes that feed back the model's own predictions
    python benchmarks/timeseries_recipes.py --csv ../shared/data/timeseries/ETTh1.csv --out runs/r3 \\
        --init timeseries-pretrained --rollout 3 --threads 1
    # ... or with the rolled forecast's error over 720 steps added to the loss (gradients through the roll)
    python benchmarks/timeseries_recipes.py --csv ../shared/data/timeseries/ETTh1.csv --out runs/rl \\
        --init timeseries-pretrained --rolled-loss 720 --max-steps 400 --threads 1

then score the checkpoint with ``sciar timeseries benchmark --checkpoint OUT ...`` as the README says (the
statistics inputs and the linear path are parts of the saved model, so the checkpoint loads as any other).

Both train through the roll, so they need the rolling loop with gradients: :func:`uncached_roll`, the loop as
it stood at commit 82c2686 (the trunk re-run over the whole window for every segment). The library's forecasts
roll on the cached loop (``sciar.decode.continuous``); ``benchmarks/core.py`` times one against the other.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from domains.timeseries.model import SegmentForecaster  # noqa: E402
from sciar.errors import SciarError  # noqa: E402
from sciar.runtime import set_threads  # noqa: E402


def uncached_roll(model: SegmentForecaster, ctx, marks, horizon, prompt=None, prompt_marks=None, max_context=None,
                  noise: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """``SegmentForecaster._roll`` at commit 82c2686: every segment re-runs the trunk over the whole window."""
    self = model
    S = self.head.segment
    B, L = ctx.shape
    if L % S or L == 0:
        raise SciarError(f"the lookback ({L}) must be a positive multiple of the segment length {S}")
    if horizon < 1:
        raise SciarError("the horizon must be at least 1")
    steps = -(-horizon // S)
    # keep the true lookback while the sequence stays within the trained window; beyond it drop the oldest
    max_context = max_context or max(L // S, self.head.window - 1)
    xn, mean, std = self.normalise(ctx, L)
    seq = list(xn.view(B, L // S, S).unbind(1))
    pre = None
    if prompt is not None:
        pn, _, _ = self.normalise(prompt, prompt.shape[1])
        pre = self.tokens(pn.view(B, -1, S), prompt_marks)
    outs = []
    for _ in range(steps):
        lo = max(0, len(seq) - max_context)
        segs = torch.stack(seq[lo:], dim=1)
        e = self.tokens(segs, marks[:, lo : len(seq)] if marks is not None else None, mean, std)
        if pre is not None:
            e = torch.cat([pre, e], dim=1)
        if e.shape[1] > self.cfg.block_size:
            raise SciarError(f"{e.shape[1]} segments exceed the model's context of {self.cfg.block_size}")
        nxt = self.proj(self.trunk(embeds=e)[:, -1])
        if self.skip is not None:
            recent = torch.stack(seq[-self.head.skip :], dim=1)
            nxt = nxt + self.skip(self.skip_inputs(recent)[:, -1])
        if self.stats is not None:
            nxt = nxt + self.stats_out(self.stat_features(mean, std))
        if noise:
            nxt = nxt + noise * torch.randn(nxt.shape, generator=generator, device=nxt.device)
        seq.append(nxt)
        outs.append(nxt)
    return torch.cat(outs, dim=1)[:, :horizon] * std + mean


class RecipeForecaster(SegmentForecaster):
    """The forecaster trained with feedback passes (``rollout``) and/or a rolled loss (``rolled``, in steps).

    Saved as a plain :class:`SegmentForecaster` (the recipe changes training only)."""

    rollout: int = 0
    rolled: int = 0

    @classmethod
    def of(cls, model: SegmentForecaster, rollout: int = 0, rolled: int = 0) -> "RecipeForecaster":
        r = cls(model.cfg, model.head)
        r.load_state_dict(model.state_dict())
        for p, q in zip(model.parameters(), r.parameters()):
            q.requires_grad_(p.requires_grad)
        r.rollout, r.rolled = rollout, rolled
        return r

    def forward(self, x, marks=None, horizons=None):
        if horizons is not None or not self.training:
            return super().forward(x, marks, horizons)
        pred, tgt, inp, m, mean, std = self.next_predictions(x, marks)
        loss = F.mse_loss(pred, tgt)
        k = min(self.head.context, x.shape[1] // self.head.segment - 1)
        passes = self.rollout if inp.shape[1] > k else 0
        for _ in range(passes):
            # what a rollout sees: inputs after the lookback replaced by the previous pass's predictions of them
            # (pass r sees r-times-fed-back predictions); gradients flow through the fed-back segments
            inp = torch.cat([inp[:, :k], pred[:, k - 1 : -1]], dim=1)
            pred = self.head_out(self.trunk(embeds=self.tokens(inp, m, mean, std)), inp, mean, std)
            loss = loss + F.mse_loss(pred[:, k - 1 :], tgt[:, k - 1 :])
        loss = loss / (1 + passes)
        if self.rolled:
            # train as the model is used: roll it from the lookback over the rest of the window
            L = self.head.lookback
            h = min(self.rolled, x.shape[1] - L)
            err = (uncached_roll(self, x[:, :L], marks, h) - x[:, L : L + h]).square()
            loss = loss + err.mean()
        return loss


def main(argv=None):
    from domains.timeseries.pipeline import train_on_series

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--init", default=None, help="start from this backbone (e.g. timeseries-pretrained)")
    ap.add_argument("--adapter-only", action="store_true")
    ap.add_argument("--stats", action="store_true", help="feed the lookback's mean and deviation back to the model")
    ap.add_argument("--skip", type=int, default=0, help="from scratch: a linear path from the last SKIP segments")
    ap.add_argument("--rollout", type=int, default=0, help="extra training passes feeding back the model's predictions")
    ap.add_argument("--rolled-loss", type=int, default=0, help="add the error of the model rolled this many steps")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    summary = train_on_series(args.csv, args.out, init=args.init, adapter_only=args.adapter_only, stats=args.stats,
                              skip=args.skip, preset=args.preset, max_steps=args.max_steps, lr=args.lr,
                              model_hook=lambda m: RecipeForecaster.of(m, args.rollout, args.rolled_loss))
    print({k: summary.get(k) for k in ("steps", "final_loss", "best_val", "kept_start")})


if __name__ == "__main__":
    main()
