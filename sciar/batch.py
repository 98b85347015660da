"""A pandas batch runner that every domain uses for generation over a table of prompts.

Rows go in (a DataFrame, or a CSV/parquet file); a DataFrame comes out with one
row per generated object, the input columns repeated, and ``row_id``, ``status``
(``ok`` or ``error``) and ``error`` columns. Work proceeds in chunks; after each
chunk the output so far is written atomically, so a killed job loses at most one
chunk, and rerunning with the same output file resumes after the rows already
done. One bad row records its error and the batch goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
from tqdm.auto import tqdm

from sciar.errors import DataError, SciarError, describe
from sciar.io import write_table_atomic
from sciar.tables import csv_dialect, open_text, read_table  # noqa: F401 (read_table: the batch's input)

RowFn = Callable[[dict], list[dict]]


def _check_output_suffix(path: Path):
    if path.suffix not in (".csv", ".parquet"):
        raise SciarError(f"output {path} must end in .csv or .parquet")


def run_batch(
    rows: pd.DataFrame | str | Path,
    fn: RowFn,
    output: str | Path | None = None,
    chunk_size: int = 16,
    resume: bool = True,
    desc: str = "batch",
    progress: bool = True,
) -> pd.DataFrame:
    """Run ``fn(row_dict) -> [result_dict, ...]`` over every row.

    Exceptions from ``fn`` become one ``status="error"`` row with the message; a
    :class:`SciarError` keeps its own message, other exceptions are prefixed with
    their type. Returns the full output table (resumed rows included).
    """
    df = read_table(rows) if isinstance(rows, (str, Path)) else rows.copy()
    if len(df) == 0:
        raise DataError("the input table has no rows")
    if "row_id" not in df.columns:
        df.insert(0, "row_id", range(len(df)))
    if df["row_id"].duplicated().any():
        raise DataError("row_id values must be unique")
    out_path = Path(output) if output is not None else None
    done_parts: list[pd.DataFrame] = []
    if out_path is not None:
        _check_output_suffix(out_path)
        if resume and out_path.exists():
            prev = read_table(out_path)
            if "row_id" not in prev.columns:
                raise DataError(f"{out_path} exists but is not a sciar batch output (no row_id); move it away")
            done_parts.append(prev)
    done_ids = set(done_parts[0]["row_id"].tolist()) if done_parts else set()
    todo = df[~df["row_id"].isin(done_ids)]
    bar = tqdm(total=len(df), initial=len(df) - len(todo), desc=desc, unit="row", disable=not progress)
    records: list[dict] = []
    n_err = 0
    for start in range(0, len(todo), chunk_size):
        for _, row in todo.iloc[start : start + chunk_size].iterrows():
            base = row.to_dict()
            try:
                results = fn(dict(base))
                if not results:
                    raise DataError("produced no output")
                for r in results:
                    records.append({**base, **r, "status": r.get("status", "ok"), "error": r.get("error")})
            except KeyboardInterrupt:
                if out_path is not None and records:  # the rows finished in this chunk are kept for the resume
                    write_table_atomic(_combine(done_parts, records), out_path)
                raise
            except Exception as e:  # one bad row must not stop the batch
                records.append({**base, "status": "error", "error": describe(e)})
                n_err += 1
            bar.update(1)
            bar.set_postfix(errors=n_err)
        if out_path is not None:
            write_table_atomic(_combine(done_parts, records), out_path)
    bar.close()
    result = _combine(done_parts, records)
    if out_path is not None and not len(todo):
        write_table_atomic(result, out_path)
    return result


def _combine(parts: list[pd.DataFrame], records: list[dict]) -> pd.DataFrame:
    frames = [p for p in parts if len(p)] + ([pd.DataFrame(records)] if records else [])
    if not frames:
        return pd.DataFrame(columns=["row_id", "status", "error"])
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    # parquet wants one type per column: keep mixed object columns as text
    for c in out.columns:
        if out[c].dtype == object and out[c].map(type).nunique() > 1:
            out[c] = out[c].map(lambda v: v if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
    return out
