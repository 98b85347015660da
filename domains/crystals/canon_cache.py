"""Canonicalising many inputs at once: in worker processes, cached by content under ``build/crystals``,
with the unusable ones and why, and deduplicated by (reduced formula, space group)."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from domains.crystals.canonical import CANON_VERSION, SYMPREC, canonicalize
from domains.crystals.readers import cif_files_in, is_table, read_inputs
from sciar.errors import SciarError, describe


def _canon_one(item):
    try:
        c = canonicalize(item)
        return (c.cif, c.formula, c.reduced_formula, c.spacegroup, c.sg_number, c.n_atoms, c.volume_per_fu, None)
    except SciarError as e:
        return (None,) * 7 + (str(e),)
    except Exception as e:  # a pymatgen bug on one odd file must not stop a corpus
        return (None,) * 7 + (f"unparseable: {describe(e)}",)


def _canon_chunk(items):
    warnings.simplefilter("ignore")
    return [_canon_one(x) for x in items]


CANON_COLUMNS = ["canonical", "formula", "reduced_formula", "spacegroup", "sg_number", "n_atoms", "volume_per_fu", "reason"]


def canonicalize_records(records: pd.DataFrame, workers: int | None = None, progress: bool = True,
                         chunk: int = 64) -> pd.DataFrame:
    """Canonicalise every record's ``cif``; adds :data:`CANON_COLUMNS` (``reason`` set where unusable)."""
    from tqdm.auto import tqdm

    items = records["cif"].tolist()
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    results = []
    bar = tqdm(total=len(items), desc="canonicalise", unit="cif", disable=not progress, mininterval=2.0)
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            for res in ex.map(_canon_chunk, chunks):
                results.extend(res)
                bar.update(len(res))
    else:
        for c in chunks:
            res = _canon_chunk(c)
            results.extend(res)
            bar.update(len(res))
    bar.close()
    out = records.copy()
    cols = list(zip(*results)) if results else [[]] * len(CANON_COLUMNS)
    for name, col in zip(CANON_COLUMNS, cols):
        out[name] = list(col)
    out["sg_number"] = out["sg_number"].astype("Int64")
    out["n_atoms"] = out["n_atoms"].astype("Int64")
    return out


def cache_dir() -> Path:
    """Where canonical corpora are cached (``SCIAR_CACHE`` or the repo's build/ folder)."""
    env = os.environ.get("SCIAR_CACHE")
    from sciar.paths import data_dir

    return Path(env) if env else data_dir().parent / "build" / "crystals"


def load_canonical(paths, workers: int | None = None, progress: bool = True, cache: bool = True) -> pd.DataFrame:
    """Read and canonicalise inputs; results of file inputs are cached by content.

    Returns every record with :data:`CANON_COLUMNS`; rows with a ``reason`` are unusable.
    A shipped corpus table that already has a ``canonical`` column is taken as is.
    """
    from sciar.io import fingerprint, write_table_atomic
    from sciar.tables import read_table

    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = []
    for raw in paths:
        p = Path(raw)
        if p.is_file() and is_table(p):
            head = read_table(p) if p.name.endswith((".parquet", ".pq")) else None
            if head is not None and "canonical" in head.columns:
                frames.append(head)
                continue
        key = fingerprint([str(p.resolve()) if p.is_dir() else p, f"canon-v{CANON_VERSION}-{SYMPREC}"])
        if p.is_dir():
            files = cif_files_in(p)
            key = fingerprint([*files, f"canon-v{CANON_VERSION}-{SYMPREC}"]) if files else key
        cached = cache_dir() / f"canon-{key}.parquet"
        if cache and cached.is_file():
            try:
                frames.append(pd.read_parquet(cached))
                continue
            except Exception:  # a damaged cache is rebuilt
                pass
        df = canonicalize_records(read_inputs(p), workers=workers, progress=progress)
        if cache:
            try:
                write_table_atomic(df, cached)
            except OSError:
                pass  # a read-only tree still works, only slower
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def reasons_table(df: pd.DataFrame) -> pd.DataFrame:
    """The unusable records and why."""
    bad = df[df["reason"].notna()]
    return bad[["id", "source", "reason"]].reset_index(drop=True)


def dedup(df: pd.DataFrame) -> pd.DataFrame:
    """Keep one structure per (reduced formula, space group): the lowest volume per formula unit."""
    ok = df[df["reason"].isna()].copy() if "reason" in df.columns else df.copy()
    ok = ok.sort_values("volume_per_fu", kind="stable")
    ok = ok.drop_duplicates(["reduced_formula", "sg_number"], keep="first")
    return ok.sort_index()


def split_usable(df: pd.DataFrame, deduplicate: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the usable rows, deduplicated by :func:`dedup` if asked; the unusable ones and why)."""
    if "reason" not in df.columns:  # a corpus table: every row usable
        return (dedup(df) if deduplicate else df), pd.DataFrame(columns=["id", "source", "reason"])
    ok = dedup(df) if deduplicate else df[df["reason"].isna()]
    return ok, reasons_table(df)
