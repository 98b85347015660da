"""The long-horizon protocol: every test window (stride 1), metrics on standardised data, and the baselines.

A forecaster is ``fn(ctx [N, L], start_rows [N]) -> [N, H]`` on standardised single-channel
windows (``start_rows``: the row of each window's first lookback step in the test part,
for methods that need calendar features). One call per chunk forecasts the longest
horizon; shorter horizons are its prefixes, scored on the windows valid for them.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd

from sciar.errors import DataError

Forecaster = Callable[[np.ndarray, np.ndarray], np.ndarray]


def seasonal_period(step: pd.Timedelta | None) -> int:
    """The seasonal-naive period: a day of sub-daily data, a week of daily data, a year of weekly/monthly data."""
    if step is None:
        return 1
    if step < pd.Timedelta("1D"):
        return max(1, int(round(pd.Timedelta("1D") / step)))
    if step < pd.Timedelta("7D"):
        return 7
    if step < pd.Timedelta("28D"):
        return 52
    if step < pd.Timedelta("89D"):
        return 12
    return 4 if step < pd.Timedelta("360D") else 1


def evaluate(fn: Forecaster, test: np.ndarray, lookback: int, horizons: list[int], channels: list[int] | None = None,
             chunk: int = 4096, max_windows: int | None = None) -> dict:
    """MSE/MAE per horizon over all test windows (stride 1) and channels, and their average.

    ``test``: standardised values ``[T, C]`` of the test part (beginning one lookback early).
    ``max_windows``: score only this many evenly spaced windows (reported as ``windows``).
    """
    return evaluate_many({"_": fn}, test, lookback, horizons, channels, chunk, max_windows)["_"]


def evaluate_many(fns: dict[str, Forecaster], test: np.ndarray, lookback: int, horizons: list[int],
                  channels: list[int] | None = None, chunk: int = 4096, max_windows: int | None = None) -> dict:
    """:func:`evaluate` for several forecasters over the same windows, called in order on each chunk
    (so a later one may combine an earlier one's forecasts of the same chunk)."""
    H = max(horizons)
    T, C = test.shape
    n_win = {h: T - lookback - h + 1 for h in horizons}
    if min(n_win.values()) < 1:
        raise DataError(f"the test part ({T - lookback} steps after the lookback) is shorter than the horizon {H}")
    chans = list(range(C)) if channels is None else channels
    starts_all = np.arange(n_win[min(horizons)])
    if max_windows and len(starts_all) > max_windows:
        starts_all = np.unique(np.linspace(0, len(starts_all) - 1, max_windows).round().astype(int))
    acc = {name: {k: {h: np.zeros(C) for h in horizons} for k in ("sse", "sae", "cnt")} for name in fns}
    secs = {name: 0.0 for name in fns}
    # pad the end so every window has H targets; windows that run past the data are masked per horizon
    padded = np.concatenate([test, np.full((H, C), np.nan, dtype=test.dtype)])
    pairs = np.array([(s, c) for s in starts_all for c in chans])
    for i in range(0, len(pairs), chunk):
        p = pairs[i : i + chunk]
        idx = p[:, 0][:, None] + np.arange(lookback + H)[None, :]
        win = padded[idx, p[:, 1][:, None]]
        ctx = win[:, :lookback].astype(np.float32)
        for name, fn in fns.items():
            t0 = time.perf_counter()
            pred = np.asarray(fn(ctx, p[:, 0]), dtype=np.float64)
            secs[name] += time.perf_counter() - t0
            if pred.ndim != 2 or pred.shape[0] != len(p) or pred.shape[1] < H:
                raise RuntimeError(f"forecaster {name} returned {pred.shape}, expected {(len(p), H)}")
            err = pred[:, :H] - win[:, lookback:]
            a = acc[name]
            for h in horizons:
                ok = p[:, 0] < n_win[h]
                e = err[ok, :h]
                ch = p[ok, 1]
                np.add.at(a["sse"][h], ch, np.square(e).sum(axis=1))
                np.add.at(a["sae"][h], ch, np.abs(e).sum(axis=1))
                np.add.at(a["cnt"][h], ch, h)
    results = {}
    for name, a in acc.items():
        sse, sae, cnt = a["sse"], a["sae"], a["cnt"]
        out = _summary({h: (sse[h][chans].sum(), sae[h][chans].sum(), cnt[h][chans].sum()) for h in horizons})
        out["per_channel"] = {int(c): _summary({h: (sse[h][c], sae[h][c], cnt[h][c]) for h in horizons}) for c in chans}
        out["windows"] = int(len(starts_all))
        out["seconds"] = round(secs[name], 2)
        results[name] = out
    return results


class Memo:
    """Remembers a forecaster's last chunk, so that a combination evaluated after it reuses the forecasts."""

    def __init__(self, fn: Forecaster):
        self.fn, self.key, self.value = fn, None, None

    def __call__(self, ctx, starts):
        key = (ctx.shape, float(ctx[:, -1].sum()), int(starts.sum()))
        if key != self.key:
            self.key, self.value = key, self.fn(ctx, starts)
        return self.value


def _summary(acc: dict) -> dict:
    out = {str(h): {"mse": float(a / n), "mae": float(b / n)} for h, (a, b, n) in acc.items()}
    out["avg"] = {k: float(np.mean([out[str(h)][k] for h in acc])) for k in ("mse", "mae")}
    return out


# ------------------------------------------------------------------------------------------------------ baselines


def seasonal_naive(period: int) -> Forecaster:
    def fn(ctx, _starts):
        last = ctx[:, -period:]
        H = fn.horizon
        reps = -(-H // period)
        return np.tile(last, (1, reps))[:, :H]

    fn.horizon = 0
    return fn


class LinearMap:
    """A closed-form least-squares linear map from the lookback to the horizon, shared by all channels.

    ``kind="dlinear"`` maps the raw window (a linear map spans DLinear's trend + remainder
    branches); ``kind="nlinear"`` subtracts the window's last value first and adds it back.
    A small ridge term keeps the normal equations well conditioned.
    """

    def __init__(self, kind: str = "dlinear", ridge: float = 1e-3):
        if kind not in ("dlinear", "nlinear"):
            raise ValueError(kind)
        self.kind, self.ridge = kind, ridge
        self.W: np.ndarray | None = None

    def fit(self, train: np.ndarray, lookback: int, horizon: int, max_rows: int = 200_000, seed: int = 0):
        T, C = train.shape
        n = T - lookback - horizon + 1
        if n < 1:
            raise DataError(f"the training part ({T} steps) is shorter than lookback {lookback} + horizon {horizon}")
        pairs = np.array([(s, c) for s in range(n) for c in range(C)])
        if len(pairs) > max_rows:
            pairs = pairs[np.random.default_rng(seed).choice(len(pairs), max_rows, replace=False)]
        L = lookback + 1  # + intercept
        xtx = np.zeros((L, L))
        xty = np.zeros((L, horizon))
        for i in range(0, len(pairs), 8192):
            p = pairs[i : i + 8192]
            idx = p[:, 0][:, None] + np.arange(lookback + horizon)[None, :]
            win = train[idx, p[:, 1][:, None]].astype(np.float64)
            X, Y = win[:, :lookback], win[:, lookback:]
            if self.kind == "nlinear":
                last = X[:, -1:]
                X, Y = X - last, Y - last
            X = np.concatenate([X, np.ones((len(X), 1))], axis=1)
            xtx += X.T @ X
            xty += X.T @ Y
        reg = self.ridge * np.trace(xtx) / L * np.eye(L)
        reg[-1, -1] = 0.0
        self.W = np.linalg.solve(xtx + reg, xty)
        self.lookback, self.horizon = lookback, horizon
        return self

    def __call__(self, ctx: np.ndarray, _starts=None) -> np.ndarray:
        X = ctx.astype(np.float64)
        last = X[:, -1:] if self.kind == "nlinear" else 0.0
        X = X - last
        out = np.concatenate([X, np.ones((len(X), 1))], axis=1) @ self.W
        return out + last


def linear_maps(train: np.ndarray, lookback: int, horizon: int) -> list[LinearMap]:
    """The DLinear- and NLinear-style maps fitted on ``train`` for ``horizon`` (the combination's members)."""
    return [LinearMap(kind).fit(train, lookback, horizon) for kind in ("dlinear", "nlinear")]


def linear_ensemble(model: Forecaster, maps: list[LinearMap]) -> Forecaster:
    """The mean of ``model`` and the :func:`linear_maps`, over the maps' horizon.

    Equal weights, chosen once and not per dataset: over three ETTh1 periods (months 5-8, 9-12 and the
    validation months 13-16, each with the maps fitted on the months before it) this mean of the zero-shot
    backbone and the two maps had the lowest MSE relative to the best candidate, ahead of either map, the
    backbone, and each pair (README, "Forecast combination")."""
    horizon = maps[0].horizon

    def fn(ctx, starts):
        return (np.asarray(model(ctx, starts))[:, :horizon] + maps[0](ctx) + maps[1](ctx)) / 3.0

    return fn


def ets_forecaster(train_target: np.ndarray, period: int, horizon: int, lookback: int | None = None) -> Forecaster:
    """statsmodels Holt-Winters (additive damped trend, additive season): parameters fitted once on the
    training part of the target, then re-run over each test window with those parameters fixed."""
    import warnings

    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    # Holt-Winters' heuristic start needs two full seasons in every window: otherwise a damped trend alone
    shortest = min(len(train_target), lookback or len(train_target))
    seasonal = "add" if period > 1 and shortest >= 2 * period else None
    sp = period if seasonal else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = ExponentialSmoothing(train_target.astype(np.float64), trend="add", damped_trend=True, seasonal=seasonal,
                                   seasonal_periods=sp, initialization_method="estimated").fit()
    params = {k: fit.params[k] for k in ("smoothing_level", "smoothing_trend", "smoothing_seasonal", "damping_trend")
              if fit.params.get(k) is not None and np.isfinite(fit.params[k])}

    def fn(ctx, _starts):
        out = np.empty((len(ctx), horizon))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, x in enumerate(ctx.astype(np.float64)):
                m = ExponentialSmoothing(x, trend="add", damped_trend=True, seasonal=seasonal, seasonal_periods=sp,
                                         initialization_method="heuristic" if seasonal else "estimated")
                out[i] = m.fit(**params, optimized=False).forecast(horizon)
        return out

    fn.params = params
    return fn
