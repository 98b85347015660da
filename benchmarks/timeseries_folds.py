"""Forecast combination on several validation periods: which of the backbone, the two linear maps and
their means forecasts best, judged on earlier periods of an ETT file rather than one validation split.

ETTh1's validation months (13-16) and test months (17-20) disagree about which method is best
(domains/timeseries/README.md), so a choice made on the validation split alone is a coin toss. This
scores each candidate on rolling origins: months 5-8, 9-12 and 13-16 (the validation split), each
with the linear maps fitted on every month before it, the backbone zero-shot (it never saw the file),
and reports each period's MSE (average over horizons 96/192/336/720, lookback 672, standardised by
the training split, every window with stride --stride) and the mean over periods of each
candidate's MSE relative to the period's best. The test months are not scored unless --with-test.

    python benchmarks/timeseries_folds.py                             # ETTh1
    python benchmarks/timeseries_folds.py --csv ../shared/data/timeseries/ETTm1.csv.gz --stride 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOOKBACK, HORIZONS = 672, [96, 192, 336, 720]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default=str(ROOT.parent / "shared" / "data" / "timeseries" / "ETTh1.csv"))
    ap.add_argument("--checkpoint", default="timeseries-pretrained", help="the backbone, scored zero-shot")
    ap.add_argument("--stride", type=int, default=2, help="score every STRIDE-th window")
    ap.add_argument("--with-test", action="store_true", help="also score the test months (17-20)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    from sciar.runtime import set_threads

    from domains.timeseries.data import calendar, read_series
    from domains.timeseries.evaluate import Memo, evaluate_many, linear_ensemble, linear_maps
    from domains.timeseries.pipeline import extended_calendar, load_forecaster, model_forecaster, prepare

    set_threads(args.threads)
    s = read_series(args.csv)
    if not s.name.startswith("ETT"):
        sys.exit("error: the periods are ETT's months (12/4/4 split); pass an ETT file")
    prep = prepare(s, LOOKBACK, "ett")
    month = prep.splits.train[1] // 12
    v = prep.scaler.transform(s.values).astype(np.float32)
    H = max(HORIZONS)
    cal = extended_calendar(calendar(s.timestamps, s.length, s.step), s, s.length, H + 96)
    model, _ = load_forecaster(args.checkpoint)
    periods = {"months 5-8": 4, "months 9-12": 8, "val (13-16)": 12} | ({"test (17-20)": 16} if args.with_test else {})
    rows = {}
    for name, m0 in periods.items():
        lo, hi = m0 * month, (m0 + 4) * month
        fit_end = min(lo, 12 * month)  # the test months: maps fitted on the training split, as in the benchmark
        part = v[lo - LOOKBACK : hi]
        zs = model_forecaster(model, cal[lo - LOOKBACK :], LOOKBACK, H)
        dl, nl = linear_maps(v[:fit_end], LOOKBACK, H)
        z = Memo(lambda c, st: zs(c, st)[:, :H])  # one backbone pass per chunk serves every candidate

        fns = {"dlinear": lambda c, st: dl(c), "nlinear": lambda c, st: nl(c), "zero_shot": z,
               "zs+dlinear": lambda c, st: (z(c, st) + dl(c)) / 2, "zs+nlinear": lambda c, st: (z(c, st) + nl(c)) / 2,
               "dlinear+nlinear": lambda c, st: (dl(c) + nl(c)) / 2,
               "zs+dlinear+nlinear": linear_ensemble(z, [dl, nl])}  # the shipped rule
        n_win = len(part) - LOOKBACK - min(HORIZONS) + 1
        res = evaluate_many(fns, part, LOOKBACK, HORIZONS, max_windows=-(-n_win // args.stride))
        rows[name] = {k: r["avg"]["mse"] for k, r in res.items()}
        print(f"{name:<14}" + "  ".join(f"{k} {x:.4f}" for k, x in rows[name].items()), flush=True)
    val_periods = [p for p in rows if not p.startswith("test")]
    rel = {k: float(np.mean([rows[p][k] / min(rows[p].values()) for p in val_periods])) for k in rows[val_periods[0]]}
    print("\nmean MSE relative to each period's best, over " + ", ".join(val_periods) + ":")
    for k, x in sorted(rel.items(), key=lambda kv: kv[1]):
        print(f"  {k:<20}{x:.4f}" + (f"   test {rows['test (17-20)'][k]:.4f}" if args.with_test else ""))


if __name__ == "__main__":
    main()
