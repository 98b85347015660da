"""`sciar timeseries ...` end to end on small slices of real data: train, forecast, evaluate, benchmark,
batch, and one-line errors (exit code 2) for bad input."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "timeseries"


@pytest.fixture(scope="module")
def hourly_csv(tmp_path_factory):
    """The first 2,400 hours of ETTh1 (a ratio split applies: not named ETT*)."""
    d = tmp_path_factory.mktemp("ts")
    df = pd.read_csv(SHARED / "ETTh1.csv").iloc[:2400]
    p = d / "hourly.csv"
    df.to_csv(p, index=False)
    return p


@pytest.fixture(scope="module")
def checkpoint(hourly_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "tiny"
    rc = main(["timeseries", "train", "--csv", str(hourly_csv), "--out", str(out), "--preset", "tiny", "--lookback", "192",
               "--max-steps", "20", "--no-progress", "--device", "cpu"])
    assert rc == 0
    return out


def test_train_writes_a_checkpoint(checkpoint):
    cfg = json.loads((checkpoint / "config.json").read_text())
    assert cfg["head"]["segment"] == 96 and cfg["head"]["context"] == 2
    assert cfg["data"]["target"] == "OT" and cfg["data"]["split"] == "ratio" and len(cfg["data"]["scaler"]["mean"]) == 7
    assert json.loads((checkpoint / "tokenizer.json").read_text()) == {"kind": "none"}
    assert (checkpoint / "train_log.csv").is_file()


def test_pretrain_on_synthetic_series_only(hourly_csv, tmp_path, capsys):
    assert main(["timeseries", "corpus", "--synthetic", "20000"]) == 0
    listed = capsys.readouterr().out
    assert "synthetic: " in listed and "synthetic_h_" not in listed  # one summary line, not a row per series
    out = tmp_path / "pre"
    rc = main(["timeseries", "pretrain", "--out", str(out), "--no-packages", "--synthetic", "20000", "--preset", "tiny",
               "--max-steps", "2", "--untimed-steps", "3", "--no-progress", "--device", "cpu"])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    domain = json.loads((out / "domain.json").read_text())
    corpus = domain["corpus"]
    assert domain["step"] == 2 and domain["untimed"]["steps"] == 3
    assert len(corpus) >= 4 and all(r["name"].startswith("synthetic_") for r in corpus)
    assert cfg["corpus"] == [f"synthetic: {len(corpus)} series, {sum(r['points'] for r in corpus):,} points"]
    fc = tmp_path / "f.csv"
    assert main(["timeseries", "forecast", "--checkpoint", str(out), "--csv", str(hourly_csv), "--horizon", "96",
                 "--out", str(fc), "--no-ensemble"]) == 0
    assert np.isfinite(pd.read_csv(fc)["OT"]).all()


def test_forecast_writes_timestamps_values_and_png(checkpoint, hourly_csv, tmp_path):
    out = tmp_path / "f.csv"
    rc = main(["timeseries", "forecast", "--checkpoint", str(checkpoint), "--csv", str(hourly_csv), "--horizon", "150",
               "--out", str(out), "--lookback", "192", "--quantiles", "0.1,0.9", "--samples", "20"])
    assert rc == 0
    df = pd.read_csv(out)
    assert list(df.columns) == ["timestamp", "OT", "OT_q0.1", "OT_q0.9"] and len(df) == 150
    last = pd.Timestamp(pd.read_csv(hourly_csv)["date"].iloc[-1])
    assert pd.Timestamp(df["timestamp"].iloc[0]) == last + pd.Timedelta("1h")
    assert pd.Timestamp(df["timestamp"].iloc[-1]) == last + pd.Timedelta("150h")
    assert np.isfinite(df["OT"]).all() and (df["OT_q0.1"] <= df["OT_q0.9"]).all()
    assert (tmp_path / "f.png").stat().st_size > 5000
    # all channels, in-context prompt from earlier segments
    out2 = tmp_path / "all.csv"
    assert main(["timeseries", "forecast", "--checkpoint", str(checkpoint), "--csv", str(hourly_csv), "--horizon", "10",
                 "--out", str(out2), "--all-channels", "--prompt-segments", "2", "--lookback", "192"]) == 0
    assert list(pd.read_csv(out2).columns) == ["timestamp", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


def test_forecast_of_the_target_ignores_other_columns(checkpoint, hourly_csv, tmp_path, capsys):
    df = pd.read_csv(hourly_csv)
    base = tmp_path / "base.csv"
    args = ["timeseries", "forecast", "--checkpoint", str(checkpoint), "--horizon", "24", "--lookback", "192"]
    assert main([*args, "--csv", str(hourly_csv), "--out", str(base)]) == 0
    df["station"] = "north"  # a text label and a gap in a channel that is not forecast
    df.loc[50, "HUFL"] = np.nan
    p = tmp_path / "labelled.csv"
    df.to_csv(p, index=False)
    assert main([*args, "--csv", str(p), "--out", str(tmp_path / "f.csv")]) == 0
    assert pd.read_csv(tmp_path / "f.csv").equals(pd.read_csv(base))
    capsys.readouterr()
    assert main([*args, "--csv", str(p), "--out", str(tmp_path / "all.csv"), "--all-channels"]) == 2
    assert "'station' is not numeric" in capsys.readouterr().err


def test_forecast_ensemble_averages_the_model_and_two_linear_maps(checkpoint, hourly_csv, tmp_path, capsys):
    from domains.timeseries.data import StandardScaler, read_series
    from domains.timeseries.evaluate import LinearMap

    args = ["timeseries", "forecast", "--checkpoint", str(checkpoint), "--csv", str(hourly_csv), "--horizon", "120",
            "--lookback", "192"]
    assert main(args + ["--out", str(tmp_path / "m.csv"), "--no-ensemble"]) == 0
    assert main(args + ["--out", str(tmp_path / "e.csv")]) == 0  # the default where the history suffices
    model, ens = pd.read_csv(tmp_path / "m.csv")["OT"].to_numpy(), pd.read_csv(tmp_path / "e.csv")["OT"].to_numpy()
    # the same maps fitted by hand on the series' history, in the checkpoint's training units
    s = read_series(hourly_csv)
    cfg = json.loads((checkpoint / "config.json").read_text())["data"]["scaler"]
    sc = StandardScaler(np.array([cfg["mean"][-1]]), np.array([cfg["std"][-1]]))
    x = sc.transform(s.values[:, -1:]).astype(np.float32)
    maps = [LinearMap(k).fit(x, 192, 120)(x[-192:].T)[0] for k in ("dlinear", "nlinear")]
    want = (sc.transform(model[:, None])[:, 0] + maps[0] + maps[1]) / 3
    np.testing.assert_allclose(sc.transform(ens[:, None])[:, 0], want, rtol=1e-4, atol=1e-4)
    # too little history for the maps: the model alone by default, one line and exit 2 when asked for them
    short = tmp_path / "short.csv"
    pd.read_csv(hourly_csv).iloc[:250].to_csv(short, index=False)
    args = ["timeseries", "forecast", "--checkpoint", str(checkpoint), "--csv", str(short), "--horizon", "120",
            "--lookback", "192", "--out", str(tmp_path / "s.csv")]
    assert main(args) == 0 and "the model alone" in capsys.readouterr().out
    assert main(args + ["--ensemble"]) == 2 and "--no-ensemble" in capsys.readouterr().err


@pytest.mark.parametrize("case,args,message", [
    ("horizon0", ["--horizon", "0"], "horizon must be at least 1"),
    ("horizon_huge", ["--horizon", "10000000"], "more than this tool forecasts"),
    ("nan", [], "missing"),
    ("dup", [], "duplicate timestamp"),
    ("unordered", [], "out of order"),
    ("short", [], "shorter than the lookback"),
    ("text", ["--target", "OT"], "not numeric"),
])
def test_bad_input_is_one_line_exit_2(case, args, message, checkpoint, hourly_csv, tmp_path, capsys):
    df = pd.read_csv(hourly_csv).iloc[:400]
    if case == "nan":
        df.loc[100, "OT"] = np.nan
    elif case == "dup":
        df.loc[50, "date"] = df.loc[49, "date"]
    elif case == "unordered":
        df.loc[[10, 11], "date"] = df.loc[[11, 10], "date"].to_numpy()
    elif case == "short":
        df = df.iloc[:100]
    elif case == "text":
        df["OT"] = df["OT"].astype(str)
        df.loc[5, "OT"] = "n/a?"
    p = tmp_path / "bad.csv"
    df.to_csv(p, index=False)
    capsys.readouterr()
    rc = main(["timeseries", "forecast", "--checkpoint", str(checkpoint), "--csv", str(p), "--out",
               str(tmp_path / "o.csv"), "--lookback", "192", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1 and err.startswith("error:")
    if case == "nan":  # an explicit fill policy makes it usable
        assert main(["timeseries", "forecast", "--checkpoint", str(checkpoint), "--csv", str(p), "--out",
                     str(tmp_path / "o.csv"), "--lookback", "192", "--fill", "interpolate", "--horizon", "5"]) == 0


def test_train_rejects_too_short_and_bad_options(hourly_csv, tmp_path, capsys):
    df = pd.read_csv(hourly_csv).iloc[:200]
    p = tmp_path / "short.csv"
    df.to_csv(p, index=False)
    rc = main(["timeseries", "train", "--csv", str(p), "--out", str(tmp_path / "x"), "--preset", "tiny",
               "--lookback", "192"])
    assert rc == 2 and "shorter than the lookback" in capsys.readouterr().err
    rc = main(["timeseries", "train", "--csv", str(hourly_csv), "--out", str(tmp_path / "x"), "--lookback", "100"])
    assert rc == 2 and "multiple of the segment" in capsys.readouterr().err
    rc = main(["timeseries", "train", "--csv", str(hourly_csv), "--out", str(tmp_path / "x"), "--adapter-only"])
    assert rc == 2 and "--init" in capsys.readouterr().err


def test_benchmark_json_and_evaluate(checkpoint, hourly_csv, tmp_path):
    js = tmp_path / "b.json"
    rc = main(["timeseries", "benchmark", "--csv", str(hourly_csv), "--lookback", "192", "--horizons", "96,192",
               "--json", str(js), "--checkpoint", str(checkpoint), "--zero-shot", str(checkpoint),
               "--max-windows", "40", "--no-progress", "--prompt-segments", "1"])
    assert rc == 0
    res = json.loads(js.read_text())
    # in-context: the zero-shot model with one earlier segment as a prompt, and as a longer lookback
    for m in ("zero_shot_prompt1", "zero_shot_lookback288"):
        assert res["methods"][m]["windows"] == res["methods"]["zero_shot"]["windows"] == 40
    assert res["methods"]["zero_shot_prompt1"]["avg"] != res["methods"]["zero_shot"]["avg"]
    for m in ("sciar", "sciar+linear", "dlinear", "nlinear", "seasonal_naive", "ets", "zero_shot", "zero_shot+linear"):
        r = res["methods"][m]
        assert set(r["96"]) == {"mse", "mae"} and r["avg"]["mse"] == pytest.approx((r["96"]["mse"] + r["192"]["mse"]) / 2)
        assert "target" in r
    assert res["methods"]["ets"]["channels"] == "target only"
    assert res["methods"]["sciar"]["avg"] == res["methods"]["zero_shot"]["avg"]  # same checkpoint, same windows
    assert res["methods"]["sciar+linear"]["avg"] == res["methods"]["zero_shot+linear"]["avg"]
    assert res["methods"]["sciar+linear"]["avg"] != res["methods"]["sciar"]["avg"]
    ev = tmp_path / "e.json"
    assert main(["timeseries", "evaluate", "--checkpoint", str(checkpoint), "--csv", str(hourly_csv), "--lookback",
                 "192", "--horizons", "96", "--max-windows", "40", "--json", str(ev)]) == 0
    assert json.loads(ev.read_text())["96"]["mse"] == pytest.approx(res["methods"]["sciar"]["96"]["mse"], rel=1e-5)
    # without --lookback, the checkpoint's own (192) is used, not a fixed 672
    ev2 = tmp_path / "e2.json"
    assert main(["timeseries", "evaluate", "--checkpoint", str(checkpoint), "--csv", str(hourly_csv),
                 "--horizons", "96", "--max-windows", "40", "--json", str(ev2)]) == 0
    got = json.loads(ev2.read_text())
    assert got["lookback"] == 192 and got["96"]["mse"] == pytest.approx(json.loads(ev.read_text())["96"]["mse"])
    assert main(["timeseries", "evaluate", "--checkpoint", str(checkpoint), "--csv", str(hourly_csv),
                 "--max-windows", "-1"]) == 2


def test_batch_long_and_wide_with_a_bad_series(checkpoint, hourly_csv, tmp_path):
    df = pd.read_csv(hourly_csv).iloc[:500]
    long = pd.concat([pd.DataFrame({"id": c, "date": df["date"], "value": df[c]}) for c in ("OT", "HUFL", "LULL")])
    long.loc[(long["id"] == "HUFL") & (long.index == 7), "value"] = np.nan
    lp = tmp_path / "long.csv"
    long.to_csv(lp, index=False)
    out = tmp_path / "fc.csv"
    rc = main(["timeseries", "batch", "--input", str(lp), "--output", str(out), "--checkpoint", str(checkpoint),
               "--horizon", "24", "--lookback", "192", "--no-progress"])
    assert rc == 0
    res = pd.read_csv(out)
    ok = res[res["status"] == "ok"]
    assert sorted(ok["series"].unique()) == ["LULL", "OT"] and len(ok) == 48
    assert ok["ensemble"].astype(bool).all()  # 500 rows hold 2 x 192 + 24: model + linear maps
    assert {"series", "timestamp", "step", "forecast"} <= set(res.columns) and np.isfinite(ok["forecast"]).all()
    bad = res[res["series"] == "HUFL"]
    assert len(bad) == 1 and bad["status"].iloc[0] == "error" and "missing" in bad["error"].iloc[0]
    wide = tmp_path / "wide.csv"
    df[["date", "OT", "HULL"]].to_csv(wide, index=False)
    out2 = tmp_path / "fc2.parquet"
    assert main(["timeseries", "batch", "--input", str(wide), "--output", str(out2), "--checkpoint", str(checkpoint),
                 "--horizon", "5", "--lookback", "192", "--no-progress", "--no-ensemble"]) == 0
    w = pd.read_parquet(out2)
    assert sorted(w["series"].unique()) == ["HULL", "OT"] and (w["status"] == "ok").all() and len(w) == 10
    assert not w["ensemble"].astype(bool).any()


def test_batch_ids_that_pandas_reads_as_missing(checkpoint, hourly_csv, tmp_path, capsys):
    """Namibia's code 'NA' is a series id, not a missing value; a row with no id at all is an error."""
    df = pd.read_csv(hourly_csv).iloc[:300]
    long = pd.concat([pd.DataFrame({"id": c, "date": df["date"], "value": df["OT"]}) for c in ("NA", "null", "DE")])
    lp = tmp_path / "long.csv"
    long.to_csv(lp, index=False)
    out = tmp_path / "fc.parquet"
    assert main(["timeseries", "batch", "--input", str(lp), "--output", str(out), "--checkpoint", str(checkpoint),
                 "--horizon", "4", "--lookback", "192", "--no-progress"]) == 0
    res = pd.read_parquet(out)
    assert list(res["series"].unique()) == ["NA", "null", "DE"] and (res["status"] == "ok").all()
    long.iloc[5, 0] = ""
    long.to_csv(lp, index=False)
    capsys.readouterr()
    assert main(["timeseries", "batch", "--input", str(lp), "--output", str(tmp_path / "x.csv"),
                 "--checkpoint", str(checkpoint), "--horizon", "4", "--lookback", "192", "--no-progress"]) == 2
    assert "1 rows have no series id in column 'id' (first at row 7)" in capsys.readouterr().err


def test_series_shorter_than_the_lookback_read_the_segments_they_have(checkpoint, hourly_csv, tmp_path, capsys):
    df = pd.read_csv(hourly_csv)
    p = tmp_path / "short.csv"
    df.iloc[:150].to_csv(p, index=False)  # the checkpoint reads 192; 150 rows hold one segment of 96
    assert main(["timeseries", "forecast", "--checkpoint", str(checkpoint), "--csv", str(p), "--horizon", "24",
                 "--out", str(tmp_path / "f.csv")]) == 0
    assert "lookback 96" in capsys.readouterr().out
    f = pd.read_csv(tmp_path / "f.csv")
    assert len(f) == 24 and np.isfinite(f["OT"]).all()
    long = pd.concat([pd.DataFrame({"id": k, "date": df["date"][:n], "value": df["OT"][:n]})
                      for k, n in (("long", 400), ("short", 150), ("tiny", 50))])
    lp = tmp_path / "long.csv"
    long.to_csv(lp, index=False)
    out = tmp_path / "b.csv"
    assert main(["timeseries", "batch", "--input", str(lp), "--output", str(out), "--checkpoint", str(checkpoint),
                 "--horizon", "24", "--no-progress"]) == 0
    res = pd.read_csv(out)
    ok = res[res["status"] == "ok"]
    assert ok.groupby("series")["lookback"].first().to_dict() == {"long": 192, "short": 96}
    tiny = res[res["series"] == "tiny"]
    assert tiny["status"].tolist() == ["error"] and "shorter than one segment of 96" in tiny["error"].iloc[0]


def test_benchmark_defaults_to_the_shipped_backbone_with_the_linear_maps(hourly_csv, tmp_path, capsys):
    """With no recipe the benchmark trains nothing: it scores the shipped backbone zero-shot, alone and
    averaged with the linear maps (what forecast does), and says which split it chose and why."""
    js = tmp_path / "b.json"
    rc = main(["timeseries", "benchmark", "--csv", str(hourly_csv), "--lookback", "192", "--horizons", "96",
               "--json", str(js), "--max-windows", "8", "--no-ets", "--no-progress", "--out", str(tmp_path / "runs")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "split            ratio: ETT columns, hourly, but 2400 rows" in out
    res = json.loads(js.read_text())
    assert res["recipe"] == "pretrained" and res["recommended"] == "zero_shot+linear"
    assert "sciar" not in res["methods"] and not (tmp_path / "runs").exists()  # nothing trained
    assert res["methods"]["zero_shot"]["checkpoint"].endswith("timeseries-pretrained")
    assert "averaged with the linear maps" in res["methods"]["zero_shot+linear"]["recipe"]
    assert main(["timeseries", "benchmark", "--csv", str(hourly_csv), "--recipe", "scratch", "--init", "x",
                 "--json", str(js)]) == 2

