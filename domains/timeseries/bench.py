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

from sciar.errors import SciarError
from sciar.io import write_json_atomic

from .data import read_series
from .evaluate import (LinearMap, Memo, ets_forecaster, evaluate, evaluate_many, linear_ensemble, linear_maps,
                       seasonal_naive, seasonal_period)
from .pipeline import (evaluate_model, load_forecaster, model_forecaster, prepare, split_forecaster, split_values,
                       train_on_series)


ENSEMBLE_NOTE = ("mean of the model's forecast and the DLinear- and NLinear-style maps fitted on the training split "
                 "for the longest horizon")
RECIPES = ("pretrained", "scratch", "finetune")
PRETRAINED = "timeseries-pretrained"  # the shipped backbone: what forecast uses and the benchmark scores by default


def _strip(res: dict, target_idx: int) -> dict:
    out = {k: v for k, v in res.items() if k != "per_channel"}
    if "per_channel" in res and target_idx in res["per_channel"]:
        out["target"] = res["per_channel"][target_idx]["avg"]
    return out


def run_benchmark(csv, lookback: int, horizons: list[int], json_out, checkpoint=None, init=None, adapter_only=False,
                  zero_shot=None, preset="default", max_steps=None, out="runs/timeseries-bench",
                  split="auto", fill="error", ets=True, max_windows=None, device="auto", progress=True,
                  log=print, duplicates="error", prompt_segments: list[int] | None = None, stats: bool = False,
                  score_split: str = "test", recipe: str | None = None) -> dict:
    """Ours against the baselines on one dataset, in one run; writes ``json_out`` after every method.

    ``recipe``: what "ours" is. ``pretrained`` (the default when no ``checkpoint`` or ``init`` is given): the
    shipped backbone zero-shot, alone and averaged with the linear maps as ``sciar timeseries forecast`` does
    (that average is the recommendation); ``scratch``: a model trained on this dataset from scratch;
    ``finetune``: the backbone ``init`` (default the shipped one) fine-tuned on it. ``checkpoint`` scores a
    trained checkpoint instead. Every method's entry says its recipe.
    """
    if score_split not in ("test", "val"):
        raise SciarError(f"--score-split must be test or val (got {score_split!r})")
    if recipe is None:
        recipe = "finetune" if init is not None else ("checkpoint" if checkpoint is not None else "pretrained")
    if recipe not in RECIPES + ("checkpoint",):
        raise SciarError(f"unknown recipe {recipe!r} ({', '.join(RECIPES)})")
    if recipe in ("scratch", "pretrained") and init is not None:
        raise SciarError(f"--init fine-tunes a backbone: use it with --recipe finetune, not {recipe}")
    if recipe == "finetune" and init is None:
        init = PRETRAINED
    if recipe == "pretrained" and zero_shot is None:
        zero_shot = PRETRAINED
    series = read_series(csv, fill=fill, duplicates=duplicates)
    prep = prepare(series, lookback, split)
    scored = getattr(prep, score_split).values  # val: model selection without looking at the test split
    tgt = series.columns.index(series.target)
    H = max(horizons)
    period = seasonal_period(series.step)
    methods: dict[str, dict] = {}
    info: dict = {"dataset": series.name, "rows": series.length, "channels": len(series.columns),
                  "target": series.target, "lookback": lookback, "horizons": horizons, "split": prep.splits.kind,
                  "split_reason": prep.splits.reason, "recipe": recipe,
                  "recommended": "zero_shot+linear" if recipe == "pretrained" else "sciar+linear",
                  "split_rows": {"train": prep.splits.train, "val": prep.splits.val, "test": prep.splits.test},
                  "scored_split": score_split,
                  "protocol": "standardised by the training split; every test window (stride 1) unless max_windows; "
                              "MSE/MAE averaged over windows, steps and channels"}

    def record(name, res, **extra):
        methods[name] = {**_strip(res, tgt), **extra}
        log(f"{name}: avg mse {res['avg']['mse']:.4f} mae {res['avg']['mae']:.4f} ({res['seconds']} s)")
        write_json_atomic(json_out, {**info, "methods": methods})

    # ---------------------------------------------------------------------------------------------- baselines
    sn = seasonal_naive(period)
    sn.horizon = H
    record("seasonal_naive", evaluate(sn, scored, lookback, horizons, max_windows=max_windows), period=period)
    for kind in ("dlinear", "nlinear"):
        per_h, t0 = {}, time.perf_counter()
        for h in horizons:  # one closed-form fit per horizon, as the literature trains one model per horizon
            lm = LinearMap(kind).fit(prep.train.values, lookback, h)
            per_h[h] = evaluate(lm, scored, lookback, [h], max_windows=max_windows)
        res = _merge(per_h, horizons)
        res["seconds"] = round(time.perf_counter() - t0, 2)
        record(kind, res, fit="closed-form least squares, shared by all channels, one map per horizon")

    # --------------------------------------------------------------------------------------------------- ours
    run_dir = Path(out)
    t0 = time.perf_counter()
    if recipe == "pretrained" and checkpoint is None:
        model = None  # the backbone is scored zero-shot below
    elif checkpoint is not None:
        model, ck = load_forecaster(checkpoint)
        train_info = {"checkpoint": str(ck.path), "recipe": "a trained checkpoint"}
    else:
        summ = train_on_series(csv, run_dir / "sciar", init=init, adapter_only=adapter_only, preset=preset,
                               lookback=lookback, split=split, fill=fill, max_steps=max_steps, device=device,
                               progress=progress, series=series, stats=stats)
        model, ck = load_forecaster(run_dir / "sciar")
        train_info = {"checkpoint": str(ck.path), "train_seconds": summ["seconds"], "steps": summ["steps"],
                      "trainable_params": summ["trainable_params"], "preset": preset, "init": init,
                      "adapter_only": summ["adapter_only"], "stats": summ["stats"], "kept_start": summ.get("kept_start"),
                      "start_val": summ.get("start_val"), "best_val": summ.get("best_val"),
                      "recipe": f"fine-tuned from {init}" if init is not None else "trained from scratch"}
    dev = "cuda" if device in ("auto", "cuda") and _cuda() else "cpu"
    maps = linear_maps(prep.train.values, lookback, H)  # fitted once, for ours and the zero-shot backbone
    if model is not None:
        model.to(dev)
        # ours, and ours averaged with the DLinear- and NLinear-style maps (one pass of the model serves both)
        ours = Memo(split_forecaster(model, prep, lookback, H, dev, score_split))
        both = evaluate_many({"sciar": ours, "ens": linear_ensemble(ours, maps)}, scored,
                             lookback, horizons, max_windows=max_windows)
        record("sciar", both["sciar"], **train_info)
        record("sciar+linear", both["ens"], note=ENSEMBLE_NOTE, recipe=f"{train_info['recipe']}, averaged with the linear maps")

    if zero_shot is not None:
        zs, zck = load_forecaster(zero_shot)
        zs.to(dev)
        zfn = Memo(split_forecaster(zs, prep, lookback, H, dev, score_split))
        both = evaluate_many({"zs": zfn, "ens": linear_ensemble(zfn, maps)}, scored,
                             lookback, horizons, max_windows=max_windows)
        record("zero_shot", both["zs"], checkpoint=str(zck.path), note="pretrained backbone, never trained on this dataset",
               recipe="the pretrained backbone, zero-shot")
        record("zero_shot+linear", both["ens"], checkpoint=str(zck.path), note=ENSEMBLE_NOTE,
               recipe="the pretrained backbone, zero-shot, averaged with the linear maps (what forecast does)")
        S = zs.head.segment
        for p in prompt_segments or []:
            # in-context: the p segments before each test window's lookback as a prompt, against the same
            # history given as a longer plain lookback (the same test windows either way)
            record(f"zero_shot_prompt{p}", evaluate_model(zs, prep, lookback, horizons, max_windows, device=dev,
                                                          prompt_segments=p, split=score_split),
                   checkpoint=str(zck.path), prompt_segments=p, note=f"zero-shot, {p} earlier segments as a prompt")
            values, cal = split_values(zs, prep, score_split, H, p * S)
            fn = model_forecaster(zs, cal, lookback + p * S, H, device=dev)
            record(f"zero_shot_lookback{lookback + p * S}",
                   evaluate(fn, values, lookback + p * S, horizons, max_windows=max_windows),
                   checkpoint=str(zck.path), note=f"zero-shot, the same {p} segments as part of a longer lookback")

    # ------------------------------------------------------------------------------------- exponential smoothing
    if ets:
        t0 = time.perf_counter()
        fn = ets_forecaster(prep.train.values[:, tgt], period, H, lookback)
        res = evaluate(fn, scored, lookback, horizons, channels=[tgt], max_windows=max_windows)
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


# ------------------------------------------------------------------------------------------ in-context forecasting


def read_m4(path) -> list[np.ndarray]:
    """An M4 competition file (id column ``V1``, then one series per row, padded with empty cells)."""
    import pandas as pd

    from sciar.errors import DataError

    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    from .forecast import table_series

    return [g["value"].to_numpy(dtype=np.float64) for g in table_series(df, layout="rows").values()]


def smape(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(200.0 * np.abs(pred - true) / np.maximum(np.abs(pred) + np.abs(true), 1e-8)))


def run_in_context(train_csv, test_csv, checkpoint="timeseries-pretrained", lookback: int = 384,
                   prompts: tuple[int, ...] = (0, 1, 2, 3), period: int = 24, json_out=None, log=print) -> dict:
    """In-context forecasting on an M4 set, zero-shot: the backbone forecasts each series' test horizon from
    its last ``lookback`` steps, with the ``p`` segments before them put in front as a prompt (``p`` in
    ``prompts``; 0 = no prompt), against the same backbone given those steps as a longer lookback instead,
    and seasonal naive. Metrics: M4's sMAPE and MASE (seasonal period ``period``) on the original values, and
    MSE/MAE on values standardised by each series' training part."""
    import torch

    from sciar.errors import DataError

    train, test = read_m4(train_csv), read_m4(test_csv)
    if len(train) != len(test):
        raise DataError(f"{train_csv} holds {len(train)} series, {test_csv} {len(test)}")
    model, ck = load_forecaster(checkpoint)
    S = model.head.segment
    H = min(len(t) for t in test)
    need = lookback + max(prompts) * S
    keep = [i for i, x in enumerate(train) if len(x) >= need and len(x) > period]
    if not keep:
        raise DataError(f"no series holds the lookback ({lookback}) plus {max(prompts)} prompt segments of {S}")
    mu = np.array([train[i].mean() for i in keep])[:, None]
    sd = np.array([train[i].std() + 1e-8 for i in keep])[:, None]
    scale = np.array([np.mean(np.abs(train[i][period:] - train[i][:-period])) + 1e-8 for i in keep])[:, None]
    truth = np.stack([test[i][:H] for i in keep])

    def tail(n):
        return np.stack([(train[i][-n:] - mu[j, 0]) / sd[j, 0] for j, i in enumerate(keep)]).astype(np.float32)

    def score(pred_std: np.ndarray, **extra) -> dict:
        pred = pred_std[:, :H] * sd + mu
        z, zt = pred_std[:, :H], (truth - mu) / sd
        return {"smape": smape(pred, truth), "mase": float(np.mean(np.abs(pred - truth) / scale)),
                "mse": float(np.mean((z - zt) ** 2)), "mae": float(np.mean(np.abs(z - zt))), **extra}

    methods = {}
    sn = tail(period)
    methods["seasonal_naive"] = score(np.tile(sn, (1, -(-H // period))), period=period)
    from .data import calendar, segment_marks

    def marks(n_seg):  # M4 gives no timestamps: every segment gets the calendar's "unknown" entries
        if model.time is None:
            return None
        m = segment_marks(calendar(None, n_seg * S, None), S)
        return torch.from_numpy(np.repeat(m[None], len(keep), axis=0))

    fut = -(-H // S)
    with torch.no_grad():
        for p in prompts:
            ctx = torch.from_numpy(tail(lookback + p * S))
            prompt = ctx[:, : p * S] if p else None
            pm = marks(p) if p else None
            pred = model.forecast(ctx[:, p * S :], marks(lookback // S + fut), H, prompt=prompt, prompt_marks=pm).numpy()
            methods[f"prompt_{p}"] = score(pred, lookback=lookback, prompt_segments=p)
            if p:  # the same history as a plain lookback
                pred = model.forecast(ctx, marks(lookback // S + p + fut), H).numpy()
                methods[f"lookback_{lookback + p * S}"] = score(pred, lookback=lookback + p * S, prompt_segments=0)
    for k, v in methods.items():
        log(f"{k:<16} sMAPE {v['smape']:7.3f}  MASE {v['mase']:6.3f}  MSE {v['mse']:.4f}  MAE {v['mae']:.4f}")
    result = {"dataset": Path(train_csv).name, "series": len(keep), "of": len(train), "horizon": H,
              "checkpoint": str(ck.path), "calendar": "unknown (M4 has no timestamps)", "methods": methods}
    if json_out:
        write_json_atomic(json_out, result)
    return result
