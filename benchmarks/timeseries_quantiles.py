"""Calibration of `sciar timeseries forecast --quantiles` on a dataset's test period.

At evenly spaced origins in the test split, each forecast sees only the rows before its origin
(as a user would), and the 10/50/90% quantiles of the target are scored against what followed:
coverage of the 10-90% band (nominal 0.80), its mean width and the mean pinball loss, both in the
deviation of the history. Two ways of getting quantiles, same forecasts:
- ``sampled`` (what `forecast` ships): 100 rolled paths, each segment with Gaussian noise at the
  model's one-segment backtest error (the band widens as errors compound);
- ``residual`` (the reference): the forecast plus the empirical quantiles, step by step, of the same
  forecaster's errors at up to 64 origins on the history (split-conformal style).

    python benchmarks/timeseries_quantiles.py --horizon 96 --origins 60
    python benchmarks/timeseries_quantiles.py --horizon 720 --origins 40
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QS = (0.1, 0.5, 0.9)


def residual_errors(model, series, xs, lookback, horizon, mean_fn, origins=64) -> np.ndarray:
    """Errors ``[K, horizon]`` of ``mean_fn`` at up to ``origins`` evenly spaced origins of the history."""
    import torch

    from domains.timeseries.forecast import _marks

    S = model.head.segment
    os_ = np.arange(lookback, len(xs) - horizon + 1)
    os_ = os_[np.unique(np.linspace(0, len(os_) - 1, min(origins, len(os_))).round().astype(int))]
    ctx = torch.from_numpy(np.stack([xs[o - lookback : o] for o in os_]))
    marks = None
    if model.time is not None:
        marks = torch.from_numpy(np.stack([_marks(series, o - lookback, lookback // S, -(-horizon // S), S) for o in os_]))
    return np.stack([xs[o : o + horizon] for o in os_]) - mean_fn(ctx, marks)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default=str(ROOT.parent / "shared" / "data" / "timeseries" / "ETTh1.csv"))
    ap.add_argument("--checkpoint", default="timeseries-pretrained")
    ap.add_argument("--horizon", type=int, default=336)
    ap.add_argument("--origins", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    from sciar.runtime import set_threads

    from domains.timeseries.data import Series, StandardScaler, read_series, standard_splits
    from domains.timeseries.evaluate import linear_ensemble, linear_maps
    from domains.timeseries.forecast import forecast_channel
    from domains.timeseries.pipeline import load_forecaster

    set_threads(args.threads)
    H = args.horizon
    s = read_series(args.csv)
    model, _ = load_forecaster(args.checkpoint)
    lb = model.head.lookback
    lo, hi = standard_splits(s, lb).test
    c = s.columns.index(s.target)
    rows = {"sampled": [], "residual": []}
    for r in np.linspace(lo + lb, hi - H, args.origins).round().astype(int):
        hist = Series(s.name, s.values[:r], s.columns, s.timestamps[:r] if s.timestamps is not None else None, s.target)
        truth = s.values[r : r + H, c]
        out = forecast_channel(model, hist, s.target, H, lb, quantiles=list(QS), samples=100)
        x = hist.values[:, c]
        sc = StandardScaler.fit(x[:, None])
        xs = sc.transform(x[:, None])[:, 0].astype(np.float32)

        maps = linear_maps(xs[:, None], lb, H) if out["ensemble"] else None

        def mean_fn(ctx, marks):  # the same forecaster as `out["mean"]`: the model, with the maps where it used them
            m = model.forecast(ctx, marks, H).numpy()
            return linear_ensemble(lambda *_: m, maps)(ctx.numpy(), None) if out["ensemble"] else m

        E = residual_errors(model, hist, xs, lb, H, mean_fn)
        mean_s = sc.transform(out["mean"][:, None])[:, 0]
        resid = [sc.inverse((mean_s + np.quantile(E, q, axis=0))[:, None])[:, 0] for q in QS]
        rows["sampled"].append(([out["quantiles"][q] for q in QS], truth, sc.std[0]))
        rows["residual"].append((resid, truth, sc.std[0]))
    print(f"{s.name}, target {s.target}, horizon {H}, {args.origins} test origins; 10-90% band (nominal coverage 0.80)")
    print(f"{'quantiles':<10}{'coverage':>10}{'width/sd':>10}{'pinball/sd':>12}")
    pins = {}
    for k, rs in rows.items():
        cov = np.mean([np.mean((t >= q[0]) & (t <= q[2])) for q, t, _ in rs])
        width = np.mean([np.mean(q[2] - q[0]) / sd for q, _, sd in rs])
        pins[k] = np.mean([np.mean([np.mean(np.maximum(a * (t - v), (a - 1) * (t - v))) for a, v in zip(QS, q)]) / sd
                           for q, t, sd in rs])
        print(f"{k:<10}{cov:>10.3f}{width:>10.3f}{pins[k]:>12.4f}")
    print(f"pinball loss, sampled / residual: {pins['sampled'] / pins['residual']:.3f}")


if __name__ == "__main__":
    main()
