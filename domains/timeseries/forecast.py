"""Forecasting a user's series with a trained checkpoint: rolling forecasts, samples and quantiles,
in-context prompts, a PNG, and batch forecasting of a table of series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sciar.errors import DataError, SciarError

from .data import Series, StandardScaler, calendar, future_timestamps, segment_marks
from .evaluate import linear_ensemble, linear_maps
from .model import SegmentForecaster


MAX_HORIZON = 1_000_000  # about 40 s and 17 MB of CSV on 2 cores; far past any use of a rolled forecast


def check_horizon(horizon: int):
    if horizon < 1:
        raise DataError(f"the horizon must be at least 1 (got {horizon})")
    if horizon > MAX_HORIZON:
        raise DataError(f"a horizon of {horizon:,} steps is more than this tool forecasts (at most {MAX_HORIZON:,})")


def resolve_lookback(model: SegmentForecaster, lookback: int | None) -> int:
    S = model.head.segment
    lb = lookback or model.head.lookback
    if lb % S or lb < S:
        raise DataError(f"the lookback ({lb}) must be a positive multiple of the segment length {S}")
    return lb


def fitting_lookback(model: SegmentForecaster, series: Series, lookback: int | None = None) -> int:
    """The lookback to read: the one given, else the model's own, or for a shorter series the whole
    segments it has (the model reads any number of segments; a series shorter than one is an error)."""
    if lookback is not None:
        return resolve_lookback(model, lookback)
    S = model.head.segment
    if series.length < S:
        raise DataError(f"{series.name}: {series.length} rows is shorter than one segment of {S} steps, the least "
                        f"the model reads")
    return resolve_lookback(model, min(model.head.lookback, series.length // S * S))


def _marks(series: Series, start: int, n_ctx_seg: int, n_future_seg: int, S: int) -> np.ndarray:
    """Calendar marks of the context segments starting at row ``start`` and the future segments after the end."""
    step = series.step
    ctx_cal = calendar(series.timestamps[start:] if series.timestamps is not None else None, series.length - start, step)
    fut = future_timestamps(series.timestamps, step, n_future_seg * S) if series.timestamps is not None else None
    fut_cal = calendar(fut, n_future_seg * S, step)
    cal = np.concatenate([ctx_cal, fut_cal])
    return segment_marks(cal, S)[: n_ctx_seg + n_future_seg]


def ensemble_rows(lookback: int, horizon: int) -> int:
    """History the linear maps need: at least as many training windows as a map has inputs (lookback + 1)."""
    return 2 * lookback + horizon


def forecast_channel(
    model: SegmentForecaster, series: Series, column: str, horizon: int, lookback: int | None = None,
    samples: int = 0, quantiles: list[float] | None = None, prompt: np.ndarray | None = None, seed: int = 0,
    scaler: tuple[float, float] | None = None, ensemble: bool | None = None,
) -> dict:
    """Forecast one channel: ``{"mean": [H], "samples": [n, H] | None, "quantiles": {q: [H]}}`` in data units.

    ``scaler``: the (mean, deviation) the model was trained with for this channel (a dataset checkpoint's
    training split; the statistics embedding reads the level in those units); default: the series' own.
    ``ensemble``: average the model with DLinear- and NLinear-style maps fitted by least squares on this
    channel's own history (:func:`linear_ensemble`; needs :func:`ensemble_rows` of history). ``None`` (the
    default): wherever the history is long enough; ``out["ensemble"]`` says whether it was used."""
    check_horizon(horizon)
    S = model.head.segment
    lb = resolve_lookback(model, lookback)
    if series.length < lb:
        raise DataError(f"{series.name}: {series.length} rows is shorter than the lookback of {lb} "
                        f"({lb // S} segments of {S}); pass a shorter --lookback (a multiple of {S})")
    x = series.values[:, series.columns.index(column)]
    sc = StandardScaler(np.array([scaler[0]]), np.array([scaler[1]])) if scaler else StandardScaler.fit(x[:, None])
    xs = sc.transform(x[:, None])[:, 0].astype(np.float32)
    ctx = torch.from_numpy(xs[-lb:])[None]
    steps = -(-horizon // S)
    marks = torch.from_numpy(_marks(series, series.length - lb, lb // S, steps, S))[None] if model.time else None
    pr = None
    if prompt is not None:
        p = np.asarray(prompt, dtype=np.float32)
        p = p[len(p) % S :]
        if len(p) < S:
            raise DataError(f"the in-context prompt needs at least one segment of {S} steps")
        pr = torch.from_numpy(p)[None]
    mean = model.forecast(ctx, marks, horizon, prompt=pr)[0].numpy()
    shift = 0.0
    need = ensemble_rows(lb, horizon)
    if ensemble is None:
        ensemble = len(xs) >= need
    if ensemble:
        if len(xs) < need:
            raise DataError(f"{series.name}: --ensemble fits linear maps on the series' history, which needs at least "
                            f"{need} rows (as many windows as a map has inputs: 2 x lookback {lb} + horizon {horizon}; "
                            f"it has {len(xs)}); pass --no-ensemble for the model alone")
        ens = linear_ensemble(lambda c, _s: mean[None], linear_maps(xs[:, None], lb, horizon))(ctx.numpy(), None)[0]
        shift, mean = ens - mean, ens
    out = {"mean": sc.inverse(mean[:, None])[:, 0], "samples": None, "quantiles": {}, "ensemble": ensemble}
    if samples or quantiles:
        n = samples or 100
        resid = backtest_residual(model, xs, lb, series)
        paths = model.sample(ctx, marks, horizon, n, resid, seed=seed)[0].numpy() + shift  # moved with the ensemble
        paths = sc.inverse(paths.reshape(-1, 1)).reshape(n, horizon)
        out["samples"] = paths
        for q in quantiles or [0.1, 0.5, 0.9]:
            out["quantiles"][q] = np.quantile(paths, q, axis=0)
    return out


def checkpoint_scaler(ck, column: str) -> tuple[float, float] | None:
    """The (mean, deviation) a dataset checkpoint was trained with for ``column``; None for other columns and
    for backbones (the series' own statistics are used then)."""
    data = ck.config.get("data") or {}
    if column not in data.get("columns", []) or "scaler" not in data:
        return None
    i = data["columns"].index(column)
    return data["scaler"]["mean"][i], data["scaler"]["std"][i]


def prompt_values(model: SegmentForecaster, series: Series, column: str, lookback: int, prompt_segments: int = 0,
                  prompt_series: Series | None = None) -> np.ndarray | None:
    """An in-context prompt: the ``prompt_segments`` segments before the lookback, or the last whole segments
    of another series' target (as many as the model's context holds beside the lookback); None without either."""
    S = model.head.segment
    if prompt_segments:
        x = series.values[:, series.columns.index(column)]
        n = prompt_segments * S
        if len(x) < lookback + n:
            raise DataError(f"{series.name}: {len(x)} rows hold no {prompt_segments} prompt segments before the lookback")
        return x[len(x) - lookback - n : len(x) - lookback]
    if prompt_series is not None:
        p = prompt_series.values[:, prompt_series.columns.index(prompt_series.target)]
        return p[-(min(len(p) // S, model.cfg.block_size - lookback // S - 1) * S):]
    return None


def forecast_series(model: SegmentForecaster, ck, series: Series, columns: list[str], horizon: int,
                    lookback: int | None = None, samples: int = 0, quantiles: list[float] | None = None,
                    prompt_segments: int = 0, prompt_series: Series | None = None, seed: int = 0,
                    ensemble: bool | None = None) -> tuple[pd.DataFrame, dict, int]:
    """``sciar timeseries forecast``: every column of ``columns`` forecast ``horizon`` steps past the series'
    end. Returns the table (timestamps, one column per channel and its quantiles), the per-column results of
    :func:`forecast_channel` and the lookback read."""
    check_horizon(horizon)
    lb = fitting_lookback(model, series, lookback)
    frames, results = [], {}
    for c in columns:
        prompt = prompt_values(model, series, c, lb, prompt_segments, prompt_series)
        r = forecast_channel(model, series, c, horizon, lb, samples=samples, quantiles=quantiles, prompt=prompt,
                             seed=seed, scaler=checkpoint_scaler(ck, c), ensemble=ensemble)
        results[c] = r
        f = forecast_frame(series, c, r, horizon)
        frames.append(f if not frames else f.drop(columns=["timestamp"]))
    return pd.concat(frames, axis=1), results, lb


def backtest_residual(model: SegmentForecaster, xs: np.ndarray, lookback: int, series: Series, origins: int = 32) -> float:
    """Deviation of one-segment-ahead errors on the series' own history, in per-window normalised units
    (the noise level of sampled paths). Falls back to 0.3 when the history is too short to backtest."""
    S = model.head.segment
    last = len(xs) - lookback - S
    if last < 0:
        return 0.3
    starts = np.unique(np.linspace(0, last, min(origins, last + 1)).round().astype(int))
    ctx = torch.from_numpy(np.stack([xs[s : s + lookback] for s in starts]))
    tgt = np.stack([xs[s + lookback : s + lookback + S] for s in starts])
    marks = None
    if model.time is not None:
        cal = calendar(series.timestamps, series.length, series.step)
        marks = torch.from_numpy(np.stack([segment_marks(cal[s : s + lookback + S], S) for s in starts]))
    pred = model.forecast(ctx, marks, S).numpy()
    _, _, sd = model.normalise(ctx, lookback)
    return float(np.sqrt(np.mean(((pred - tgt) / sd.numpy()) ** 2)))


def forecast_frame(series: Series, column: str, result: dict, horizon: int) -> pd.DataFrame:
    ts = future_timestamps(series.timestamps, series.step, horizon)
    df = pd.DataFrame({"timestamp": ts if ts is not None else np.arange(series.length, series.length + horizon)})
    df[column] = result["mean"]
    for q, v in result["quantiles"].items():
        df[f"{column}_q{q:g}"] = v
    return df


def plot_forecast(series: Series, column: str, result: dict, horizon: int, path: str | Path, history: int | None = None):
    """History and forecast (with the quantile band, if any) as a PNG."""
    from sciar.io import pyplot, save_figure

    plt = pyplot()
    x = series.values[:, series.columns.index(column)]
    n_hist = min(len(x), history or max(3 * horizon, 672))
    t_hist = series.timestamps[-n_hist:] if series.timestamps is not None else np.arange(len(x) - n_hist, len(x))
    fut = future_timestamps(series.timestamps, series.step, horizon)
    t_fut = fut if fut is not None else np.arange(len(x), len(x) + horizon)
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(t_hist, x[-n_hist:], lw=0.8, color="0.3", label="history")
    ax.plot(t_fut, result["mean"], lw=1.0, color="C0", label="forecast")
    qs = sorted(result["quantiles"])
    if len(qs) >= 2:
        ax.fill_between(t_fut, result["quantiles"][qs[0]], result["quantiles"][qs[-1]], color="C0", alpha=0.2,
                        label=f"{qs[0]:g}-{qs[-1]:g} quantiles")
    ax.set_title(f"{series.name}: {column}, {horizon} steps ahead")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------- batch


def table_series(df: pd.DataFrame, layout: str = "auto", id_col: str = "id", time_col: str | None = None,
                 value_col: str = "value") -> dict[str, pd.DataFrame]:
    """Split a table of series into ``{id: frame(timestamp?, value)}``.

    ``long``: one row per observation (``id``, a timestamp column, ``value``); ``wide``: a time
    column and one column per series; ``rows``: one series per row, an id in the first column and the
    values after it, without timestamps (the M4 competition's files). ``auto`` picks long when the id and
    value columns exist, rows when there is no time column, the first column is a unique text id and the
    others are numbers, wide otherwise. Empty cells before a series' first value and after its last are
    padding (series of different spans share the table) and are trimmed; gaps inside stay.
    """
    from pandas.api.types import is_numeric_dtype

    from .data import find_time_column

    if layout == "auto":
        first = df.iloc[:, 0] if len(df.columns) > 1 else None
        if id_col in df.columns and value_col in df.columns:
            layout = "long"
        elif (first is not None and find_time_column(df, time_col) is None and not is_numeric_dtype(first)
              and first.is_unique and all(is_numeric_dtype(df[c]) for c in df.columns[1:])):
            layout = "rows"
        else:
            layout = "wide"
    if layout == "long":
        for c in (id_col, value_col):
            if c not in df.columns:
                raise DataError(f"a long table needs columns {id_col!r} and {value_col!r} (has {', '.join(map(str, df.columns))})")
        missing = df[id_col].isna().to_numpy()
        if missing.any():  # rows that belong to no series: the table is malformed, not one series
            raise DataError(f"{int(missing.sum())} rows have no series id in column {id_col!r} "
                            f"(first at row {int(np.flatnonzero(missing)[0]) + 2})")
        tcol = find_time_column(df, time_col)
        keep = [c for c in (tcol, value_col) if c is not None]
        return {str(k): g[keep].rename(columns={value_col: "value"}).reset_index(drop=True)
                for k, g in df.groupby(id_col, sort=False)}
    if layout == "rows":
        if len(df.columns) < 2:
            raise DataError("a table of series in rows needs an id column and value columns")
        ids = df.iloc[:, 0].astype(str)
        if not ids.is_unique:
            raise DataError(f"series id {ids[ids.duplicated()].iloc[0]!r} appears twice in the first column")
        values = df.iloc[:, 1:].reset_index(drop=True)
        return {k: _trim_padding(pd.DataFrame({"value": values.iloc[i].to_numpy()})) for i, k in enumerate(ids)}
    if layout != "wide":
        raise SciarError(f"unknown table layout {layout!r} (auto, long, wide, rows)")
    tcol = find_time_column(df, time_col)
    cols = [c for c in df.columns if c != tcol]
    if not cols:
        raise DataError("the wide table has no series columns")
    return {str(c): _trim_padding(df[[tcol, c] if tcol else [c]].rename(columns={c: "value"})) for c in cols}


def _trim_padding(g: pd.DataFrame) -> pd.DataFrame:
    first, last = g["value"].first_valid_index(), g["value"].last_valid_index()
    return g.loc[first:last].reset_index(drop=True) if first is not None else g  # all empty: the reader says so


def batch_forecast(model: SegmentForecaster, groups: dict[str, pd.DataFrame], horizon: int, output: str | Path,
                   lookback: int | None = None, fill: str = "error", quantiles: list[float] | None = None,
                   progress: bool = True, chunk_size: int = 16, ensemble: bool | None = None) -> pd.DataFrame:
    """Forecast every series of the table with :func:`sciar.batch.run_batch`: one output row per series and
    step; a series that cannot be forecast gets one row with status ``error`` and the batch goes on."""
    from sciar.batch import run_batch

    from .data import frame_to_series

    check_horizon(horizon)
    rows = pd.DataFrame({"series": list(groups)})

    def one(row: dict) -> list[dict]:
        g = groups[row["series"]]
        s = frame_to_series(g, str(row["series"]), target="value", fill=fill)
        lb = fitting_lookback(model, s, lookback)
        r = forecast_channel(model, s, "value", horizon, lb, quantiles=quantiles, ensemble=ensemble)
        df = forecast_frame(s, "value", r, horizon)
        df.insert(1, "step", np.arange(1, horizon + 1))
        df["ensemble"] = r["ensemble"]
        df["lookback"] = lb
        df = df.rename(columns={c: "forecast" + c[len("value"):] for c in df.columns if c.startswith("value")})
        df["timestamp"] = df["timestamp"].astype(str)
        return df.to_dict("records")

    return run_batch(rows, one, output=output, chunk_size=chunk_size, desc="forecast", progress=progress)
