"""Reading tables: CSV in any common dialect (optionally compressed), parquet and JSON, with one-line errors.

Every adapter and the batch runner read their tables through :func:`read_table`.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
from pathlib import Path

import pandas as pd

from sciar.errors import DataError, one_line


def open_text(path: str | Path):
    """A text file, read through its compression (.gz, .xz, .bz2) where it has one."""
    path = Path(path)
    opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(path.suffix)
    if opener is not None:
        return opener(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def csv_dialect(path: str | Path) -> dict:
    """``read_csv`` options for the file's delimiter and decimal mark, read off its header line.

    A spreadsheet exported in a European locale separates fields by semicolons and writes decimal commas;
    read as commas it would split every number in two. The header alone decides the delimiter (the most
    frequent of ``, ; tab |``, commas on a tie), because data rows may hold quoted text with any of them
    (a CIF's multi-line fields start with semicolons).
    """
    with open_text(path) as f:
        header = f.readline()
        rows = [f.readline() for _ in range(20)]
    counts = {sep: header.count(sep) for sep in ",;\t|"}
    sep = max(counts, key=lambda k: (counts[k], k == ","))
    if counts[sep] == 0:
        sep = ","
    decimal = "," if sep == ";" and any(re.search(r"\d,\d", r) for r in rows) else "."
    return {"sep": sep, "decimal": decimal}


def read_table(path: str | Path, text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a table with a one-line :class:`DataError` for anything that is not one: CSV/TSV (any of the common
    delimiters and decimal marks, optionally gzip/xz/bz2-compressed), parquet (``.parquet``, ``.pq``) or a
    JSON array of records (``.json``, ``.json.gz``).

    ``text_columns`` of a CSV are read as the text they hold, only empty cells missing: pandas would read an
    id such as ``NA`` (Namibia, North America) or ``null`` as a missing value.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input table {path} not found")
    with open(path, "rb") as f:
        magic = f.read(8)
    if path.suffix.lower() in (".xls", ".xlsx", ".xlsm", ".ods") or magic.startswith(b"\xd0\xcf\x11\xe0"):
        raise DataError(f"{path} is a spreadsheet workbook: save the sheet as CSV (sciar reads CSV, TSV, "
                        f"parquet and JSON tables, also gzip/xz/bz2-compressed)")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if name.endswith((".json", ".json.gz")):
            return pd.read_json(path)
        dialect = csv_dialect(path)
        df = pd.read_csv(path, **dialect)
        text = [c for c in text_columns if c in df.columns]
        if text and isinstance(df.index, pd.RangeIndex):
            raw = pd.read_csv(path, usecols=text, dtype=str, keep_default_na=False, **dialect)
            df[text] = raw[text].replace("", None)
    except Exception as e:  # pandas and pyarrow raise many types for malformed files
        raise DataError(f"cannot read table {path}: {one_line(e, 160)}") from None
    if not isinstance(df.index, pd.RangeIndex):
        # pandas silently turns the first field into an index when every row has one field more than the header
        raise DataError(f"cannot read table {path}: its rows have one field more than its header line")
    return df
