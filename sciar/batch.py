"""A pandas batch runner that every domain uses for generation over a table of prompts.

Rows go in (a DataFrame, or a CSV/parquet file); a DataFrame comes out with one
row per generated object, the input columns repeated, and ``row_id``, ``status``
(``ok`` or ``error``) and ``error`` columns. Work proceeds in chunks; after each
chunk the output so far is written atomically, so a killed job loses at most one
chunk, and rerunning with the same output file resumes after the rows already
done. One bad row records its error and the batch goes on. Under ``torchrun`` every
process takes its shard of the rows and process 0 merges the parts (:func:`run_batch`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pandas as pd
from tqdm.auto import tqdm

from sciar.errors import DataError, SciarError, describe
from sciar.io import write_table_atomic
from sciar.tables import read_table

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
    their type. Returns the full output table (resumed rows included), in input order.

    Under ``torchrun`` (``WORLD_SIZE`` > 1, on one machine or several sharing the output's folder) process
    ``r`` of ``w`` takes rows ``r, r + w, ...``, writes them to its own part ``OUTPUT.part-r-of-w.EXT``
    (atomically after every chunk; a rerun resumes its own part), and when every process is done process 0
    merges the parts, in input order, into ``output`` and removes them. A row's result must depend only on
    the row (seed a row's randomness by the run's seed and its ``row_id``), so the merged output equals a
    one-process run.
    """
    df = read_table(rows) if isinstance(rows, (str, Path)) else rows.copy()
    if len(df) == 0:
        raise DataError("the input table has no rows")
    if "row_id" not in df.columns:
        df.insert(0, "row_id", range(len(df)))
    if df["row_id"].duplicated().any():
        raise DataError("row_id values must be unique")
    out_path = Path(output) if output is not None else None
    if out_path is not None:
        _check_output_suffix(out_path)
    prev = _previous_output(out_path) if resume and out_path is not None else None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _run_sharded(df, fn, out_path, prev, chunk_size, resume, desc, progress)
    done = _run_rows(df, fn, out_path, [prev] if prev is not None else [], chunk_size, desc, progress)
    return _in_input_order(done, df)


def _previous_output(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    prev = read_table(path)
    if "row_id" not in prev.columns:
        raise DataError(f"{path} exists but is not a sciar batch output (no row_id); move it away")
    return prev


def _run_rows(df: pd.DataFrame, fn: RowFn, out_path: Path | None, done_parts: list[pd.DataFrame], chunk_size: int,
              desc: str, progress: bool, skip: set | None = None) -> pd.DataFrame:
    """The rows of ``df`` not in ``done_parts`` (nor in ``skip``), written with ``done_parts`` to ``out_path``
    after every chunk; returns ``done_parts`` and the new rows."""
    done_ids = set().union(*(set(p["row_id"].tolist()) for p in done_parts)) | (skip or set())
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


def part_path(output: Path, rank: int, world: int) -> Path:
    """Where process ``rank`` of ``world`` keeps its shard of a batch's output."""
    return output.with_name(f"{output.stem}.part-{rank}-of-{world}{output.suffix}")


def _run_sharded(df, fn, out_path, prev, chunk_size, resume, desc, progress) -> pd.DataFrame:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from sciar.distributed import init_distributed

    if out_path is None:
        raise SciarError("a batch under torchrun needs an output file: each process writes its part beside it")
    # shards finish hours apart on uneven rows: the barrier waits as long as a batch may run
    info = init_distributed(torch.device("cpu"), timeout=timedelta(days=7))
    part = part_path(out_path, info.rank, info.world)
    mine = df.iloc[info.rank :: info.world]
    own = [_previous_output(part)] if resume and part.exists() else []
    merged_ids = set(prev["row_id"].tolist()) if prev is not None else set()
    _run_rows(mine, fn, part, [p for p in own if p is not None], chunk_size,
              f"{desc} [{info.rank + 1}/{info.world}]", progress, skip=merged_ids)
    dist.barrier()
    if info.main:
        parts = [part_path(out_path, r, info.world) for r in range(info.world)]
        frames = ([prev] if prev is not None else []) + [read_table(p) for p in parts if p.exists()]
        merged = _in_input_order(_combine(frames, []), df)
        write_table_atomic(merged, out_path)
        for p in parts:
            p.unlink(missing_ok=True)
    dist.barrier()
    return _in_input_order(read_table(out_path), df)


def _in_input_order(out: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """Output rows ordered as their input rows (a row's several results keep their order)."""
    if not len(out) or "row_id" not in out.columns:
        return out
    pos = {rid: i for i, rid in enumerate(df["row_id"].tolist())}
    key = out["row_id"].map(lambda r: pos.get(r, len(pos)))
    return out.iloc[key.argsort(kind="stable").to_numpy()].reset_index(drop=True)


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
