"""Hair files: one hairstyle as a cards CSV, a generated set as a parquet table, condition point clouds.

- cards CSV: columns ``card, x, y, z, width, thickness`` (metres, head frame), one row per control point in order;
- a set folder: ``hairstyles.parquet`` (the same columns plus ``hairstyle``) and ``styles.csv`` (one row per
  hairstyle: its parameters and ``split``);
- point clouds: PLY/OBJ/OFF (trimesh), ``.xyz``/``.txt``/``.csv`` (three numeric columns) or ``.npy``, metres.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from sciar.errors import DataError

COLUMNS = ["card", "x", "y", "z", "width", "thickness"]
MAX_CENTRE_DISTANCE = 0.3  # metres: a condition cloud whose centroid is farther from the head's centre is refused


def cards_table(cards: list[np.ndarray]) -> pd.DataFrame:
    rows = np.concatenate([np.concatenate([np.full((len(c), 1), i), c], 1) for i, c in enumerate(cards)])
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["card"] = df["card"].astype(int)
    return df


def table_cards(df: pd.DataFrame, where: str) -> list[np.ndarray]:
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{where}: missing columns {', '.join(missing)} (needs {', '.join(COLUMNS)})")
    if df.empty:
        raise DataError(f"{where}: no control points")
    vals = df[COLUMNS[1:]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(vals).all():
        raise DataError(f"{where}: NaN, infinite or non-numeric values in {int((~np.isfinite(vals)).any(1).sum())} rows")
    card = df["card"].to_numpy()
    return [vals[card == c] for c in pd.unique(card)]


def write_cards_csv(cards: list[np.ndarray], path: str | Path):
    from sciar.io import write_table_atomic

    write_table_atomic(cards_table(cards), Path(path))


def read_cards_csv(path: str | Path) -> list[np.ndarray]:
    """One hairstyle's cards from a cards table (CSV or parquet)."""
    sets = read_hairstyles(path)
    if len(sets) > 1:
        raise DataError(f"{path} holds {len(sets)} hairstyles; give one hairstyle's cards")
    return next(iter(sets.values()))


def read_hairstyles(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Every hairstyle of a cards table (CSV or parquet), by name: a set's ``hairstyles.parquet`` (a
    ``hairstyle`` column) gives ``path#i`` for each, a one-hairstyle table its path."""
    from sciar.tables import read_table

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    df = read_table(path)
    if "hairstyle" not in df.columns:
        return {str(path): table_cards(df, str(path))}
    return {f"{path}#{h}": table_cards(g, f"{path}#{h}") for h, g in df.groupby("hairstyle", sort=True)}


def write_set(hairstyles: list[list[np.ndarray]], styles: pd.DataFrame, folder: str | Path):
    from sciar.io import write_table_atomic

    folder = Path(folder)
    parts = []
    for i, cards in enumerate(hairstyles):
        t = cards_table(cards)
        t.insert(0, "hairstyle", i)
        parts.append(t)
    write_table_atomic(pd.concat(parts, ignore_index=True), folder / "hairstyles.parquet")
    write_table_atomic(styles, folder / "styles.csv")


def read_set(folder: str | Path) -> tuple[list[list[np.ndarray]], pd.DataFrame]:
    folder = Path(folder)
    if not (folder / "hairstyles.parquet").is_file() or not (folder / "styles.csv").is_file():
        raise DataError(f"{folder}: not a hairstyle set (needs hairstyles.parquet and styles.csv, as `sciar hair procedural` writes)")
    df = pd.read_parquet(folder / "hairstyles.parquet")
    styles = pd.read_csv(folder / "styles.csv")
    return [table_cards(g, f"{folder} hairstyle {h}") for h, g in df.groupby("hairstyle", sort=True)], styles


def read_points(path: str | Path, head=None) -> np.ndarray:
    """A point cloud (metres, head frame) as ``(n, 3)``; empty, unreadable, NaN or far-away clouds are a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            p = np.load(path, allow_pickle=False)
        elif suffix in (".xyz", ".txt", ".csv"):
            with warnings.catch_warnings():  # an empty file warns, then is refused below as empty
                warnings.simplefilter("ignore", UserWarning)
                p = np.loadtxt(path, delimiter="," if suffix == ".csv" else None, ndmin=2)
        else:
            import trimesh

            p = np.asarray(trimesh.load(path, process=False).vertices)
    except Exception as e:  # noqa: BLE001 - any reader failure is the file's problem
        raise DataError(f"{path}: not a readable point cloud ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 3 or len(p) == 0:
        raise DataError(f"{path}: no points (expected rows of x, y, z)")
    p = p[:, :3]
    if not np.isfinite(p).all():
        raise DataError(f"{path}: {int((~np.isfinite(p)).any(1).sum())} points have NaN or infinite coordinates")
    if head is not None:
        centre = head.bounds.mean(0)
        dist = float(np.linalg.norm(p.mean(0) - centre))
        if dist > MAX_CENTRE_DISTANCE:
            raise DataError(f"{path}: the points' centroid is {dist:.2f} m from the head's centre (at most "
                            f"{MAX_CENTRE_DISTANCE} m): give points in metres in the head's frame")
    return p
