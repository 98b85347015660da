"""Time-series benchmark: sciar against the baselines on every dataset in ../shared/data/timeseries.

For each dataset, in one run: seasonal naive, DLinear- and NLinear-style closed-form linear maps,
statsmodels exponential smoothing (target only), sciar trained on the dataset (optionally from
the pretrained backbone), and the pretrained backbone zero-shot. Prints a table with the ratios
to the DLinear-style baseline and to AutoTimes' published averages, and writes one JSON per
dataset plus a summary.

    python benchmarks/timeseries.py                       # every dataset, default preset
    python benchmarks/timeseries.py --datasets ETTh1.csv  # one
    python benchmarks/timeseries.py --full                # every test window on the large sets too

Large sets (ETTm1/ETTm2/Weather) are scored on evenly spaced test windows unless --full (the
count is in the JSON as ``windows``); ETTh1, Exchange and ILI always on every window (stride 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data" / "timeseries"
# AutoTimes (NeurIPS 2024), averages over horizons 96-720 at lookback 672 (MSE, MAE)
PUBLISHED = {"ETTh1.csv": (0.389, 0.422), "weather.csv.gz": (0.235, 0.273)}
# per-dataset protocol: ILI is too short for a 672-step lookback; the literature uses horizons 24-60 there
SETTINGS = {"national_illness.csv": {"lookback": 96, "horizons": [24, 36, 48, 60]}}
# Weather repeats one timestamp (2020-05-12 06:00); the protocol reads rows in file order
DUPLICATES = {"weather.csv.gz": "keep"}
LARGE = {"ETTm1.csv.gz", "ETTm2.csv.gz", "weather.csv.gz"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="*", help="file names in ../shared/data/timeseries (default: all)")
    ap.add_argument("--out", default="runs/bench-timeseries", help="checkpoints and JSON go here")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--init", default="timeseries-pretrained",
                    help="fine-tune from this backbone, kept if fine-tuning never beats it on validation ('' = from scratch)")
    ap.add_argument("--adapter-only", action="store_true", help="train only the adapter on the frozen backbone")
    ap.add_argument("--stats", action="store_true", help="train with the window-statistics inputs")
    ap.add_argument("--zero-shot", default="timeseries-pretrained", help="backbone scored zero-shot ('' to skip)")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--ablate-time", action="store_true", help="also train without calendar embeddings")
    ap.add_argument("--full", action="store_true", help="every test window on the large sets too")
    ap.add_argument("--max-windows", type=int, default=1000, help="windows scored on the large sets without --full")
    ap.add_argument("--no-ets", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt-segments", default="", help="also score the zero-shot backbone with this many earlier "
                    "segments as an in-context prompt, e.g. 1,2,4 (against the same history as a longer lookback)")
    ap.add_argument("--score-split", default="test", choices=["test", "val"],
                    help="score on the validation split instead (for choosing settings without looking at test)")
    ap.add_argument("--checkpoint", default=None, help="score this trained checkpoint instead of training (one dataset)")
    ap.add_argument("--in-context", action="store_true", help="only the zero-shot in-context benchmark on M4 Hourly "
                    "(414 series, horizon 48): prompts of 0-3 segments before a 384-step lookback")
    args = ap.parse_args(argv)

    from sciar.runtime import set_threads

    from domains.timeseries.bench import run_benchmark

    set_threads(args.threads)
    out = Path(args.out)
    if args.in_context:
        from domains.timeseries.bench import run_in_context

        m4 = SHARED / "m4"
        print("== M4 Hourly, zero-shot in-context (sMAPE/MASE on the original values, MSE/MAE standardised per series)")
        res = run_in_context(m4 / "Hourly-train.csv", m4 / "Hourly-test.csv", args.zero_shot or "timeseries-pretrained",
                             json_out=out / "m4_hourly_in_context.json")
        print(f"{res['series']} series, horizon {res['horizon']}; results: {out / 'm4_hourly_in_context.json'}")
        return
    prompts = [int(p) for p in args.prompt_segments.split(",") if p.strip()]
    names = args.datasets or sorted(p.name for p in SHARED.iterdir() if p.is_file() and ".csv" in p.name)
    summary = {}
    for name in names:
        st = SETTINGS.get(name, {"lookback": 672, "horizons": [96, 192, 336, 720]})
        mw = None if (args.full or name not in LARGE) else args.max_windows
        t0 = time.perf_counter()
        print(f"== {name}: lookback {st['lookback']}, horizons {st['horizons']}, "
              f"{'every' if mw is None else mw} {args.score_split} window{'' if mw == 1 else 's'}", flush=True)
        res = run_benchmark(SHARED / name, st["lookback"], st["horizons"], out / f"{name.split('.')[0]}.json",
                            init=args.init or None,
                            adapter_only=args.adapter_only, stats=args.stats,
                            zero_shot=args.zero_shot or None,
                            preset=args.preset, max_steps=args.max_steps,
                            out=out / name.split(".")[0], ets=not args.no_ets, max_windows=mw, progress=False,
                            duplicates=DUPLICATES.get(name, "error"), prompt_segments=prompts,
                            score_split=args.score_split, checkpoint=args.checkpoint)
        if args.ablate_time and not args.checkpoint:
            res["methods"]["sciar_no_time"] = without_calendar(SHARED / name, st, out / name.split(".")[0], mw, args)
            (out / f"{name.split('.')[0]}.json").write_text(json.dumps(res, indent=1))
        res["wall_seconds"] = round(time.perf_counter() - t0, 1)
        summary[name] = res
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        table(name, res)
    print(f"summary: {out / 'summary.json'}")


def without_calendar(csv: Path, st: dict, out: Path, max_windows, args) -> dict:
    """The ablation of the calendar embeddings: the same preset trained from scratch without them, scored on the
    same windows as the rest of the run."""
    from domains.timeseries.data import read_series
    from domains.timeseries.pipeline import evaluate_model, load_forecaster, prepare, train_on_series

    series = read_series(csv, duplicates=DUPLICATES.get(csv.name, "error"))
    summ = train_on_series(csv, out / "sciar_no_time", preset=args.preset, lookback=st["lookback"],
                           max_steps=args.max_steps, progress=False, series=series, time=False)
    model, _ = load_forecaster(out / "sciar_no_time")
    res = evaluate_model(model, prepare(series, st["lookback"]), st["lookback"], st["horizons"], max_windows,
                         split=args.score_split)
    print(f"sciar_no_time: avg mse {res['avg']['mse']:.4f} mae {res['avg']['mae']:.4f}", flush=True)
    return {**{k: v for k, v in res.items() if k != "per_channel"}, "train_seconds": summ["seconds"],
            "note": "same preset without calendar position embeddings"}


def table(name: str, res: dict):
    m = res["methods"]
    base = m["dlinear"]["avg"]["mse"]
    pub = PUBLISHED.get(name) if res.get("scored_split", "test") == "test" else None  # published: test figures
    print(f"{'method':<16}{'avg MSE':>9}{'avg MAE':>9}{'/dlinear':>10}" + (f"{'/AutoTimes':>12}" if pub else ""))
    for k, r in m.items():
        a = r["avg"]
        extra = f"{a['mse'] / pub[0]:>12.3f}" if pub and k != "ets" else ""
        note = "  (target only)" if k == "ets" else ""
        print(f"{k:<16}{a['mse']:>9.4f}{a['mae']:>9.4f}{a['mse'] / base:>10.3f}{extra}{note}")
    if "sciar" in m and "train_seconds" in m["sciar"]:
        print(f"sciar trained in {m['sciar']['train_seconds']} s ({m['sciar'].get('steps')} steps)")
    print(flush=True)


if __name__ == "__main__":
    main()
