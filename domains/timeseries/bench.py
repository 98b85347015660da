"""``sciar timeseries benchmark``: ours and the baselines on one dataset, in the same run, one protocol.

Protocol (the long-horizon literature's): the standard splits, a StandardScaler fitted on
the training split, every test window with stride 1, MSE/MAE on the standardised data
averaged over windows, horizon steps and channels. Each method also reports its figures on
the target channel alone (``target``), where the exponential-smoothing baseline is scored.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sciar.io import write_json_atomic

from .data import read_series
from .evaluate import LinearMap, Memo, ets_forecaster, evaluate, evaluate_many, seasonal_naive, seasonal_period
from .pipeline import evaluate_model, load_forecaster, prepare, split_forecaster, train_on_series


def _strip(res: dict, target_idx: int) -> dict:
    out = {k: v for k, v in res.items() if k != "per_channel"}
    if "per_channel" in res and target_idx in res["per_channel"]:
        out["target"] = res["per_channel"][target_idx]["avg"]
    return out


def run_benchmark(csv, lookback: int, horizons: list[int], json_out, checkpoint=None, init=None, adapter_only=False,
                  zero_shot=None, preset="default", max_steps=None, ablate_time=False, out="runs/timeseries-bench",
                  split="auto", fill="error", ets=True, max_windows=None, device="auto", progress=True,
                  log=print, duplicates="error") -> dict:
    series = read_series(csv, fill=fill, duplicates=duplicates)
    prep = prepare(series, lookback, split)
    tgt = series.columns.index(series.target)
    H = max(horizons)
    period = seasonal_period(series.step)
    methods: dict[str, dict] = {}
    info: dict = {"dataset": series.name, "rows": series.length, "channels": len(series.columns),
                  "target": series.target, "lookback": lookback, "horizons": horizons, "split": prep.splits.kind,
                  "split_rows": {"train": prep.splits.train, "val": prep.splits.val, "test": prep.splits.test},
                  "protocol": "standardised by the training split; every test window (stride 1) unless max_windows; "
                              "MSE/MAE averaged over windows, steps and channels"}

    def record(name, res, **extra):
        methods[name] = {**_strip(res, tgt), **extra}
        log(f"{name}: avg mse {res['avg']['mse']:.4f} mae {res['avg']['mae']:.4f} ({res['seconds']} s)")
        write_json_atomic(json_out, {**info, "methods": methods})

    # ---------------------------------------------------------------------------------------------- baselines
    sn = seasonal_naive(period)
    sn.horizon = H
    record("seasonal_naive", evaluate(sn, prep.test.values, lookback, horizons, max_windows=max_windows), period=period)
    for kind in ("dlinear", "nlinear"):
        per_h, t0 = {}, time.perf_counter()
        for h in horizons:  # one closed-form fit per horizon, as the literature trains one model per horizon
            lm = LinearMap(kind).fit(prep.train.values, lookback, h)
            per_h[h] = evaluate(lm, prep.test.values, lookback, [h], max_windows=max_windows)
        res = _merge(per_h, horizons)
        res["seconds"] = round(time.perf_counter() - t0, 2)
        record(kind, res, fit="closed-form least squares, shared by all channels, one map per horizon")

    # --------------------------------------------------------------------------------------------------- ours
    run_dir = Path(out)
    t0 = time.perf_counter()
    if checkpoint is not None:
        model, ck = load_forecaster(checkpoint)
        train_info = {"checkpoint": str(ck.path)}
    else:
        summ = train_on_series(csv, run_dir / "sciar", init=init, adapter_only=adapter_only, preset=preset,
                               lookback=lookback, split=split, fill=fill, max_steps=max_steps, device=device,
                               progress=progress, series=series)
        model, ck = load_forecaster(run_dir / "sciar")
        train_info = {"checkpoint": str(ck.path), "train_seconds": summ["seconds"], "steps": summ["steps"],
                      "trainable_params": summ["trainable_params"], "preset": preset, "init": init,
                      "adapter_only": adapter_only, "kept_start": summ.get("kept_start"),
                      "start_val": summ.get("start_val"), "best_val": summ.get("best_val")}
    dev = "cuda" if device in ("auto", "cuda") and _cuda() else "cpu"
    model.to(dev)
    # ours, and ours averaged with the NLinear-style map (one pass of the model serves both)
    ours = Memo(split_forecaster(model, prep, lookback, H, dev))
    nl = LinearMap("nlinear").fit(prep.train.values, lookback, H)
    both = evaluate_many({"sciar": ours, "ens": lambda c, s: 0.5 * (ours(c, s)[:, :H] + nl(c))}, prep.test.values,
                         lookback, horizons, max_windows=max_windows)
    record("sciar", both["sciar"], **train_info)
    record("sciar+nlinear", both["ens"], note="mean of the sciar forecast and the NLinear-style map fitted for the "
                                              "longest horizon")

    if ablate_time and checkpoint is None:
        summ = train_on_series(csv, run_dir / "sciar_no_time", init=None, preset=preset, lookback=lookback,
                               split=split, fill=fill, max_steps=max_steps, device=device, progress=progress,
                               series=series, time=False)
        m2, _ = load_forecaster(run_dir / "sciar_no_time")
        m2.to(dev)
        record("sciar_no_time", evaluate_model(m2, prep, lookback, horizons, max_windows, device=dev),
               train_seconds=summ["seconds"], note="same preset without calendar position embeddings")

    if zero_shot is not None:
        zs, zck = load_forecaster(zero_shot)
        zs.to(dev)
        record("zero_shot", evaluate_model(zs, prep, lookback, horizons, max_windows, device=dev),
               checkpoint=str(zck.path), note="pretrained backbone, never trained on this dataset")

    # ------------------------------------------------------------------------------------- exponential smoothing
    if ets:
        t0 = time.perf_counter()
        fn = ets_forecaster(prep.train.values[:, tgt], period, H, lookback)
        res = evaluate(fn, prep.test.values, lookback, horizons, channels=[tgt], max_windows=max_windows)
        res["seconds"] = round(time.perf_counter() - t0, 2)
        record("ets", res, channels="target only", period=period, params={k: float(v) for k, v in fn.params.items()},
               model="statsmodels Holt-Winters, additive damped trend and season; parameters fitted on the "
                     "training split, re-run over each test window")
    result = {**info, "methods": methods}
    write_json_atomic(json_out, result)
    return result


def _merge(per_h: dict, horizons: list[int]) -> dict:
    out = {str(h): per_h[h][str(h)] for h in horizons}
    out["avg"] = {k: float(np.mean([out[str(h)][k] for h in horizons])) for k in ("mse", "mae")}
    chans = per_h[horizons[0]]["per_channel"].keys()
    out["per_channel"] = {}
    for c in chans:
        pc = {str(h): per_h[h]["per_channel"][c][str(h)] for h in horizons}
        pc["avg"] = {k: float(np.mean([pc[str(h)][k] for h in horizons])) for k in ("mse", "mae")}
        out["per_channel"][c] = pc
    out["windows"] = per_h[horizons[0]]["windows"]
    return out


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
