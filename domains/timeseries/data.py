"""Reading and checking time series; the standard splits; calendar features; training windows.

A :class:`Series` is one table of aligned channels (``[T, C]`` float32) with
optional timestamps. Readers: Informer/Autoformer CSVs (a ``date`` column and
numeric channels, ``OT`` the usual target), Monash ``.tsf`` files, and long
(``id, timestamp, value``) or wide tables for batch forecasting.

Everything that cannot be used is a one-line :class:`DataError`: missing values
(unless a ``fill`` policy is given), duplicate or unordered timestamps, non-numeric
channels, series too short for the lookback plus one segment.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sciar.tables import open_text, read_table
from sciar.errors import DataError, one_line

FILL_POLICIES = ("error", "ffill", "interpolate", "zero", "drop")
TIME_COLUMNS = ("date", "ds", "ts", "timestamp", "time", "datetime", "month", "date_time", "week", "period", "year")  # any case


@dataclass
class Series:
    """Aligned channels of one source: ``values[T, C]`` and optional ``timestamps`` (length T)."""

    name: str
    values: np.ndarray
    columns: list[str]
    timestamps: pd.DatetimeIndex | None = None
    target: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.values.shape[0]

    @property
    def step(self) -> pd.Timedelta | None:
        """The sampling interval (the most common gap between timestamps)."""
        if self.timestamps is None or len(self.timestamps) < 2:
            return None
        return pd.Series(self.timestamps[1:] - self.timestamps[:-1]).mode().iloc[0]

    def channel(self, name: str) -> "Series":
        if name not in self.columns:
            raise DataError(f"{self.name}: no column {name!r} (columns: {', '.join(self.columns)})")
        i = self.columns.index(name)
        return Series(self.name, self.values[:, i : i + 1], [name], self.timestamps, name, dict(self.meta))


# ----------------------------------------------------------------------------------------------------- reading


def read_csv_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    df = read_table(path)
    if len(df) == 0 or len(df.columns) == 0:
        raise DataError(f"{path}: empty table")
    return df


def find_time_column(df: pd.DataFrame, time_col: str | None = None) -> str | None:
    if time_col is not None:
        if time_col not in df.columns:
            raise DataError(f"no time column {time_col!r} (columns: {', '.join(map(str, df.columns))})")
        return time_col
    by_name = {str(c).strip().lower(): c for c in df.columns}
    for c in TIME_COLUMNS:
        if c in by_name:
            return by_name[c]
    first = df.columns[0]  # an unnamed time column comes first: text that reads as dates, not numbers
    col = df[first].dropna().head(20).astype(str)
    if len(df.columns) > 1 and len(col) and not pd.api.types.is_numeric_dtype(df[first]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            is_date = pd.to_datetime(col, errors="coerce", format="mixed").notna().all()
        if is_date and pd.to_numeric(col, errors="coerce").isna().all():
            return first
    return None


def _numeric_timestamps(col: pd.Series) -> pd.DatetimeIndex | None:
    """Numbers as times: years (1000-2999), YYYYMMDD dates, else Unix time in s, ms, us or ns by magnitude;
    None for a step counter (evenly rising whole numbers too small for Unix time: t = 0, 1, 2, ...), which
    orders the rows but holds no dates."""
    v = col.to_numpy(np.float64)
    whole = bool(np.all(v == np.round(v)))
    if whole and v.min() >= 1000 and v.max() <= 2999:
        return pd.DatetimeIndex(pd.to_datetime(col.astype(np.int64).astype(str), format="%Y"))
    if whole and v.min() >= 1e7 and v.max() < 1e8:
        try:
            return pd.DatetimeIndex(pd.to_datetime(col.astype(np.int64).astype(str), format="%Y%m%d"))
        except ValueError:
            pass
    size = float(np.median(np.abs(v)))
    if size < 1e8:  # Unix seconds before 1973: a counter, or a month number beside a year column
        d = np.diff(v)
        if whole and len(d) and d[0] > 0 and np.all(d == d[0]):
            return None
        raise ValueError(f"values from {v.min():g} to {v.max():g}")
    unit = "s" if size < 1e11 else "ms" if size < 1e14 else "us" if size < 1e17 else "ns"
    return pd.DatetimeIndex(pd.to_datetime(v, unit=unit))


def parse_timestamps(col: pd.Series, where: str) -> pd.DatetimeIndex | None:
    """The time column as timestamps; None for a numeric step counter."""
    if col.isna().any():
        raise DataError(f"{where}: missing timestamp at row {int(np.flatnonzero(col.isna().to_numpy())[0]) + 2}")
    # One format inferred for the whole column, else day-first (13/07/2016), else each value on its own. A
    # day-first column whose first days are 12 or less parses month-first without error but out of order,
    # so an unordered parse gives way to an ordered day-first one; check_timestamps reports what stays unordered.
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        try:
            return _numeric_timestamps(col)
        except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime) as e:
            raise DataError(f"{where}: time column {col.name!r} holds numbers that are not years, YYYYMMDD dates "
                            f"or Unix times ({e})") from None
    parsed, error = [], None
    year_first = bool(re.match(r"\s*\d{4}\D", str(col.iloc[0])))  # ISO dates are never day-first
    for kwargs in ({}, {} if year_first else {"dayfirst": True}, {"format": "mixed"}):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "could not infer format" and dayfirst notes
                ts = pd.DatetimeIndex(pd.to_datetime(col, **kwargs))
        except (ValueError, TypeError) as e:
            error = error or e
            continue
        if ts.is_monotonic_increasing:
            return ts
        parsed.append(ts)
    if parsed:
        return parsed[0]
    raise DataError(f"{where}: timestamps do not parse ({one_line(error)})")


def check_timestamps(ts: pd.DatetimeIndex, where: str, duplicates: str = "error"):
    dup = ts.duplicated()
    if dup.any() and duplicates != "keep":
        i = int(np.flatnonzero(dup)[0])
        raise DataError(f"{where}: duplicate timestamp {ts[i]} (row {i + 2}); pass --duplicates keep to use the rows as given")
    if not ts.is_monotonic_increasing:
        i = int(np.flatnonzero(np.diff(ts.asi8) < 0)[0]) + 1
        raise DataError(f"{where}: timestamps out of order at row {i + 2} ({ts[i]} after {ts[i - 1]})")


def _duration(step: pd.Timedelta) -> str:
    """``1 hour``, ``15 minutes``, ``7 days``: pandas prints ``0 days 01:00:00``."""
    for unit, name in (("1D", "day"), ("1h", "hour"), ("1min", "minute"), ("1s", "second")):
        u = pd.Timedelta(unit)
        if step >= u and step % u == pd.Timedelta(0):
            n = step // u
            return f"{n} {name}{'s' if n != 1 else ''}"
    return str(step)


def timestamp_gaps(ts: pd.DatetimeIndex | None, step: pd.Timedelta | None) -> str | None:
    """Words for the places where the timestamps skip steps, or None for a regular series.

    The model reads rows as consecutive steps, so a gap shifts every calendar feature after it;
    a pattern pandas recognises (business days, month ends) is regular, not a gap.
    """
    if ts is None or step is None or len(ts) < 3 or step <= pd.Timedelta(0):
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if ts.inferred_freq is not None:
            return None
    ratio = np.asarray((ts[1:] - ts[:-1]) / step, dtype=float)  # not asi8: its unit follows the index's resolution
    where = np.flatnonzero(ratio > 1.5)
    if not len(where):
        return None
    i = int(where[0])
    missing = int(round(ratio[i])) - 1
    more = f"; {len(where)} places in all" if len(where) > 1 else ""
    return (f"the timestamps skip {missing} steps of {_duration(step)} between rows {i + 2} and {i + 3} "
            f"({ts[i]} to {ts[i + 1]}{more}): the rows are read as consecutive steps")


def apply_fill(values: np.ndarray, fill: str, where: str, columns: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Missing values: an error, or filled by an explicit policy. Returns (values, kept-rows mask or None)."""
    if fill not in FILL_POLICIES:
        raise DataError(f"unknown fill policy {fill!r} ({', '.join(FILL_POLICIES)})")
    bad = ~np.isfinite(values)
    if not bad.any():
        return values, None
    r, c = np.argwhere(bad)[0]
    if fill == "error":
        raise DataError(
            f"{where}: {int(bad.sum())} missing or non-finite values (first in column {columns[c]!r} at row {r + 2}); "
            f"pass --fill ffill|interpolate|zero|drop to fill them"
        )
    if fill == "drop":
        keep = ~bad.any(axis=1)
        return values[keep], keep
    df = pd.DataFrame(values).replace([np.inf, -np.inf], np.nan)
    if fill == "zero":
        df = df.fillna(0.0)
    elif fill == "ffill":
        df = df.ffill().bfill()
    else:
        df = df.interpolate(limit_direction="both")
    out = df.to_numpy(np.float32)
    if not np.isfinite(out).all():
        raise DataError(f"{where}: a column has no values at all; nothing to fill from")
    return out, None


def numeric_columns(df: pd.DataFrame, cols: list[str], where: str) -> np.ndarray:
    out = np.empty((len(df), len(cols)), dtype=np.float32)
    for j, c in enumerate(cols):
        col = df[c]
        if col.dtype == object or pd.api.types.is_string_dtype(col):
            num = pd.to_numeric(col, errors="coerce")
            bad = num.isna() & col.notna()
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(f"{where}: column {c!r} is not numeric (row {i + 2}: {str(col.iloc[i])[:30]!r})")
            col = num
        elif not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
            raise DataError(f"{where}: column {c!r} is not numeric ({col.dtype})")
        out[:, j] = col.to_numpy(np.float64, na_value=np.nan)
    return out


def frame_to_series(
    df: pd.DataFrame, name: str, target: str | None = None, columns: list[str] | None = None,
    fill: str = "error", time_col: str | None = None, duplicates: str = "error", target_only: bool = False,
) -> Series:
    """A Series from a wide table: a time column (optional) and numeric channels.

    ``target_only``: keep only the target channel, so that other columns (text labels, gaps) do not matter.

    ``duplicates="keep"`` accepts repeated timestamps and uses the rows in file order (the long-horizon
    benchmarks' protocol reads rows, not dates: Weather has one repeated timestamp).
    """
    if duplicates not in ("error", "keep"):
        raise DataError(f"unknown duplicates policy {duplicates!r} (error or keep)")
    tcol = find_time_column(df, time_col)
    ts = None
    if tcol is not None and (ts := parse_timestamps(df[tcol], name)) is not None:
        check_timestamps(ts, name, duplicates)
    cols = [str(c) for c in df.columns if c != tcol]
    df = df.rename(columns=str)
    if columns:
        missing = [c for c in columns if c not in cols]
        if missing:
            raise DataError(f"{name}: no column {missing[0]!r} (columns: {', '.join(cols)})")
        cols = list(columns)
    if target is not None and target not in cols:
        raise DataError(f"{name}: no target column {target!r} (columns: {', '.join(cols)})")
    if not cols:
        raise DataError(f"{name}: no value columns")
    if target is None:
        target = "OT" if "OT" in cols else cols[-1]
    if target_only:
        cols = [target]
    values = numeric_columns(df, cols, name)
    values, keep = apply_fill(values, fill, name, cols)
    if keep is not None and ts is not None:
        ts = ts[keep]
    return Series(name, values, cols, ts, target)


def read_csv(path: str | Path, target: str | None = None, columns: list[str] | None = None, fill: str = "error",
             time_col: str | None = None, duplicates: str = "error", target_only: bool = False) -> Series:
    """An Informer-format CSV (``date`` + numeric channels) as a Series."""
    path = Path(path)
    return frame_to_series(read_csv_table(path), path.name, target, columns, fill, time_col, duplicates, target_only)


_TSF_FREQ = {
    "4_seconds": "4s", "minutely": "1min", "10_minutes": "10min", "half_hourly": "30min", "hourly": "1h",
    "daily": "1D", "weekly": "7D", "monthly": "MS", "quarterly": "QS", "yearly": "YS",
}


def read_tsf(path: str | Path, fill: str = "error") -> list[Series]:
    """A Monash ``.tsf`` file: one Series per line of ``@data`` (``?`` marks a missing value)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    attrs: list[tuple[str, str]] = []
    freq = None
    out: list[Series] = []
    in_data = False
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                low = line.lower()
                if low.startswith("@attribute"):
                    parts = line.split()
                    if len(parts) != 3:
                        raise DataError(f"{path}:{lineno}: bad @attribute line")
                    attrs.append((parts[1], parts[2]))
                elif low.startswith("@frequency"):
                    freq = line.split()[1] if len(line.split()) > 1 else None
                elif low.startswith("@data"):
                    in_data = True
                continue
            fields_ = line.split(":")
            if len(fields_) != len(attrs) + 1:
                raise DataError(f"{path}:{lineno}: expected {len(attrs)} attributes and the values, got {len(fields_)} fields")
            meta = {a[0]: v for a, v in zip(attrs, fields_[:-1])}
            raw = fields_[-1].split(",")
            try:
                vals = np.array([np.nan if v.strip() == "?" else float(v) for v in raw], dtype=np.float32)
            except ValueError:
                raise DataError(f"{path}:{lineno}: non-numeric value in the series") from None
            name = str(meta.get("series_name", f"T{len(out) + 1}"))
            ts = None
            start = next((v for (a, kind), v in zip(attrs, fields_[:-1]) if kind == "date"), None)
            if start is not None and freq in _TSF_FREQ:
                stamp = start.strip()
                if " " in stamp:  # Monash writes "1996-03-18 00-00-00"
                    day, clock = stamp.split(" ", 1)
                    stamp = f"{day} {clock.replace('-', ':')}"
                try:
                    ts = pd.date_range(pd.Timestamp(stamp), periods=len(vals), freq=_TSF_FREQ[freq])
                except (ValueError, TypeError):
                    ts = None
            vals2, keep = apply_fill(vals[:, None], fill, f"{path.name}:{name}", [name])
            if keep is not None and ts is not None:
                ts = ts[keep]
            out.append(Series(name, vals2.astype(np.float32), [name], ts, name, {"frequency": freq, **meta}))
    if not in_data:
        raise DataError(f"{path}: no @data section; not a .tsf file")
    if not out:
        raise DataError(f"{path}: no series in @data")
    return out


def read_series(path: str | Path, target: str | None = None, fill: str = "error", time_col: str | None = None,
                duplicates: str = "error", target_only: bool = False) -> Series:
    """One Series from a CSV (wide) or the first series of a ``.tsf`` file (``target_only``: see
    :func:`frame_to_series`)."""
    path = Path(path)
    if path.suffix == ".tsf" or path.name.endswith(".tsf.gz"):
        series = read_tsf(path, fill)
        if target is not None:
            match = [s for s in series if s.name == target]
            if not match:
                raise DataError(f"{path}: no series named {target!r}")
            return match[0]
        return series[0]
    return read_csv(path, target=target, fill=fill, time_col=time_col, duplicates=duplicates, target_only=target_only)


# ------------------------------------------------------------------------------------------------------ splits


@dataclass
class Splits:
    """Row ranges ``[start, end)`` of train, val and test; val/test start one lookback earlier."""

    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]
    kind: str
    reason: str = ""  # why this split (what "auto" saw), for the user and the benchmark's JSON


ETT_COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")  # the ETT files' channels after the date
ETT_STEPS = (pd.Timedelta("1h"), pd.Timedelta("15min"))


def _ett_rows(series: Series) -> tuple[int, int, int]:
    """The ends of the ETT split's 12, 16 and 20 months in rows of the series' sampling step."""
    step = series.step
    per_hour = 1 if step is None else max(1, int(round(pd.Timedelta("1h") / step)))
    month = 30 * 24 * per_hour
    return 12 * month, 16 * month, 20 * month


def auto_split(series: Series) -> tuple[str, str]:
    """(kind, reason): the ETT split for an ETT file, known by its name (ETT*) or by its layout (the columns
    date, HUFL, HULL, MUFL, MULL, LUFL, LULL, OT at an hourly or 15-minute step) when it holds the 20 months
    that split needs; 70/10/20 by time otherwise."""
    named = series.name.upper().startswith("ETT")
    layout = tuple(series.columns) == ETT_COLUMNS and series.step in ETT_STEPS
    if not (named or layout):
        return "ratio", "not an ETT file (name or columns): 70/10/20 by time"
    seen = f"named {series.name}" if named else f"ETT columns, {'hourly' if series.step == ETT_STEPS[0] else '15-minute'}"
    te = _ett_rows(series)[2]
    if series.length < te:
        return "ratio", (f"{seen}, but {series.length} rows are fewer than the ETT split's 20 months ({te} rows): "
                         "70/10/20 by time")
    return "ett", f"{seen}: ETT's 12/4/4 months"


def standard_splits(series: Series, lookback: int, kind: str = "auto") -> Splits:
    """Informer's splits: ETT 12/4/4 months (by rows of the sampling step), the others 70/10/20."""
    n = series.length
    reason = f"asked for ({kind})"
    if kind == "auto":
        kind, reason = auto_split(series)
    if kind == "ett":
        tr, va, te = _ett_rows(series)
        if n < te:
            raise DataError(f"{series.name}: {n} rows is shorter than the ETT split of 20 months ({te} rows)")
        s = Splits((0, tr), (tr - lookback, va), (va - lookback, te), "ett", reason)
    elif kind == "ratio":
        n_train, n_test = int(n * 0.7), int(n * 0.2)
        n_val = n - n_train - n_test
        s = Splits((0, n_train), (n_train - lookback, n_train + n_val), (n - n_test - lookback, n), "ratio", reason)
    else:
        raise DataError(f"unknown split kind {kind!r} (auto, ett, ratio)")
    if s.val[0] < 0 or s.test[0] < 0:
        raise DataError(f"{series.name}: {n} rows are too few for a lookback of {lookback} with the standard splits")
    return s


class StandardScaler:
    """Per-channel mean and deviation of the training split."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    @classmethod
    def fit(cls, values: np.ndarray) -> "StandardScaler":
        std = values.std(axis=0)
        return cls(values.mean(axis=0), np.where(std > 1e-8, std, 1.0))

    def transform(self, v):
        return (v - self.mean) / self.std

    def inverse(self, v):
        return v * self.std + self.mean

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


# --------------------------------------------------------------------------------------------- calendar features

# index tables: hour, weekday, day of month, month, sampling-step class; the last index of each means "unknown"
CALENDAR_SIZES = (25, 8, 32, 13, 13)
_STEP_CLASSES = ["1min", "5min", "10min", "15min", "30min", "1h", "6h", "1D", "7D", "30D", "91D", "365D"]


def step_class(step: pd.Timedelta | None) -> int:
    if step is None:
        return len(_STEP_CLASSES)
    secs = np.array([pd.Timedelta(s).total_seconds() for s in _STEP_CLASSES])
    return int(np.argmin(np.abs(np.log(secs) - np.log(max(step.total_seconds(), 1.0)))))


def calendar(ts: pd.DatetimeIndex | None, n: int, step: pd.Timedelta | None) -> np.ndarray:
    """Integer calendar features ``[n, 5]`` for each time step (all "unknown" without timestamps)."""
    if ts is None:
        return np.tile(np.array([s - 1 for s in CALENDAR_SIZES], dtype=np.int64), (n, 1))
    sc = step_class(step)
    fine = step is not None and step < pd.Timedelta("1D")
    hour = ts.hour.to_numpy() if fine else np.full(n, 24)
    return np.stack([hour, ts.day_of_week.to_numpy(), ts.day.to_numpy() - 1, ts.month.to_numpy() - 1,
                     np.full(n, sc)], axis=1).astype(np.int64)


def future_timestamps(ts: pd.DatetimeIndex | None, step: pd.Timedelta | None, n: int) -> pd.DatetimeIndex | None:
    """The ``n`` timestamps after the series' last one."""
    if ts is None or step is None:
        return None
    freq = None
    if len(ts) >= 3:
        import warnings

        with warnings.catch_warnings():  # pandas 3 warns that the string will become an offset; both work below
            warnings.simplefilter("ignore")
            freq = ts[-min(len(ts), 50):].inferred_freq
    if freq is not None:
        try:
            return pd.date_range(ts[-1], periods=n + 1, freq=freq)[1:]
        except ValueError:
            pass
    return pd.DatetimeIndex([ts[-1] + step * (i + 1) for i in range(n)])


def segment_marks(cal: np.ndarray, segment: int) -> np.ndarray:
    """Per segment: calendar features of its first and last step, ``[n_seg, 10]`` from ``cal[n_seg*segment, 5]``."""
    n_seg = cal.shape[0] // segment
    c = cal[: n_seg * segment].reshape(n_seg, segment, -1)
    return np.concatenate([c[:, 0], c[:, -1]], axis=1)


# ---------------------------------------------------------------------------------------------- training windows


@dataclass
class Part:
    """One stretch of standardised values ``[T, C]`` with its calendar ``[T, 5]``, a source of windows."""

    values: np.ndarray
    cal: np.ndarray
    name: str = ""


class SegmentWindows:
    """Random windows of ``(context + 1) * segment`` steps from single channels, for :func:`sciar.train.train`.

    Each window is one channel of one part (channel independence). ``get_batch``
    returns ``x [B, L]`` (values) and ``marks [B, n_seg, 10]`` (calendar of each
    segment's first and last step). ``time_dropout``: the fraction of training windows whose
    calendar is replaced by the "unknown" entries that series without timestamps get, so that
    a model trained on timestamped series has seen them.
    """

    def __init__(self, train: list[Part], val: list[Part] | None, segment: int, context: int,
                 val_horizons: list[int] | None = None, time_dropout: float = 0.0):
        if not 0.0 <= time_dropout <= 1.0:
            raise ValueError(f"time_dropout must lie in [0, 1] (got {time_dropout})")
        self.segment, self.context, self.time_dropout = segment, context, time_dropout
        # validation batches carry the horizons to score by rolling the model (SegmentForecaster.rolled_loss)
        self.val_horizons = list(val_horizons) if val_horizons else None
        self.length = (context + 1) * segment
        self.splits = {"train": self._index(train, "train")}
        if val:
            idx = self._index(val, "val", required=False)
            if idx is not None:
                self.splits["val"] = idx

    @property
    def has_val(self) -> bool:
        return "val" in self.splits

    def _index(self, parts: list[Part], name: str, required: bool = True):
        rows = []  # (part, channel, n_starts)
        for i, p in enumerate(parts):
            n = p.values.shape[0] - self.length + 1
            if n > 0:
                for c in range(p.values.shape[1]):
                    rows.append((i, c, n))
        if not rows:
            if required:
                raise DataError(f"the {name} split has no window of {self.length} steps "
                                f"(lookback {self.context * self.segment} + one segment of {self.segment})")
            return None
        counts = np.array([r[2] for r in rows], dtype=np.int64)
        return parts, rows, np.cumsum(counts), int(counts.sum())

    def num_windows(self, split: str = "train") -> int:
        return self.splits[split][3]

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        parts, rows, cum, total = self.splits[split]
        flat = torch.randint(total, (batch_size,), generator=generator).numpy()
        which = np.searchsorted(cum, flat, side="right")
        xs, ms = [], []
        for w, f in zip(which, flat):
            pi, c, n = rows[w]
            start = int(f - (cum[w] - n))
            p = parts[pi]
            xs.append(p.values[start : start + self.length, c])
            ms.append(segment_marks(p.cal[start : start + self.length], self.segment))
        marks = np.stack(ms)
        if split == "train" and self.time_dropout > 0:
            drop = torch.rand(batch_size, generator=generator).numpy() < self.time_dropout
            marks[drop] = segment_marks(calendar(None, self.length, None), self.segment)
        batch = {"x": torch.from_numpy(np.stack(xs)).float(), "marks": torch.from_numpy(marks)}
        if split == "val" and self.val_horizons:
            batch["horizons"] = torch.tensor(self.val_horizons)
        return batch
