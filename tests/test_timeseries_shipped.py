"""The shipped series and pretrained checkpoint: `sciar timeseries forecast` works after install, and the
backbone forecasts a dataset it never saw better than seasonal naive."""

from pathlib import Path

import numpy as np
import pandas as pd

from cli import main
from domains.timeseries.data import read_series
from domains.timeseries.evaluate import evaluate, seasonal_naive
from domains.timeseries.pipeline import evaluate_model, load_forecaster, prepare
from sciar.paths import data_dir

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "timeseries"


def test_default_forecast_needs_nothing_else(tmp_path):
    out = tmp_path / "forecast.csv"
    assert main(["timeseries", "forecast", "--horizon", "120", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    hist = pd.read_csv(data_dir() / "timeseries" / "co2_weekly.csv")
    assert list(df.columns) == ["timestamp", "co2"] and len(df) == 120
    assert pd.Timestamp(df["timestamp"].iloc[0]) == pd.Timestamp(hist["date"].iloc[-1]) + pd.Timedelta("7D")
    # CO2 keeps rising with its yearly cycle: the forecast stays near the recent level and keeps a seasonal swing
    recent = hist["co2"].iloc[-104:]
    assert recent.min() - 5 < df["co2"].mean() < recent.max() + 15
    assert df["co2"].iloc[:52].max() - df["co2"].iloc[:52].min() > 2.0
    assert (tmp_path / "forecast.png").stat().st_size > 5000


def test_pretrained_backbone_zero_shot_beats_seasonal_naive_on_etth1():
    series = read_series(SHARED / "ETTh1.csv")
    prep = prepare(series, 672)
    model, ck = load_forecaster("timeseries-pretrained")
    assert ck.domain["stage"] == "pretrain"
    assert not any("ETT" in name for name in ck.config.get("corpus", []))
    zs = evaluate_model(model, prep, 672, [96, 336], max_windows=150)
    sn = seasonal_naive(24)
    sn.horizon = 336
    base = evaluate(sn, prep.test.values, 672, [96, 336], max_windows=150)
    assert zs["windows"] == base["windows"] == 150
    assert zs["avg"]["mse"] < 0.9 * base["avg"]["mse"]
    assert np.isfinite(zs["336"]["mae"])
