"""``sciar crystal ...``: canonical CIFs, training, generation, validity, benchmarks, batch.

Light on purpose: heavy libraries (torch, pymatgen) are imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    help="Crystal structures as CIF text: a CrystaLLM-style language model (train, sample, evaluate, benchmark, batch).",
    no_args_is_help=True,
)

DEFAULT_CHECKPOINT = "crystal-small"


def _echo_table(df, max_rows: int = 40):
    import pandas as pd

    with pd.option_context("display.max_rows", max_rows, "display.width", 200, "display.max_columns", 20):
        typer.echo(df.to_string(index=False))


@app.command()
def canonicalize(
    inputs: List[Path] = typer.Argument(..., help="CIF files, folders of CIFs, or tables (.csv/.csv.gz/.parquet) with a 'cif' column."),
    out: Path = typer.Option(..., "--out", "-o", help="Output table (.parquet or .csv) of canonical CIFs."),
    reasons: Optional[Path] = typer.Option(None, help="Where to write the table of unusable inputs and why (default: beside --out)."),
    dedup: bool = typer.Option(True, help="Keep one structure per (formula, space group): the lowest volume per formula unit."),
    workers: int = typer.Option(2, help="Worker processes."),
):
    """Canonicalise CIFs as CrystaLLM does (symmetrized, data_<cell composition>, atom-type block, 4 decimals)."""
    from domains.crystals.cif import dedup as dedup_fn, load_canonical, reasons_table
    from sciar.io import write_table_atomic

    df = load_canonical(inputs, workers=workers, cache=False)
    bad = reasons_table(df)
    ok = dedup_fn(df) if dedup else df[df["reason"].isna()]
    ok = ok.drop(columns=[c for c in ("cif", "reason") if c in ok.columns])
    write_table_atomic(ok, out)
    rpath = reasons or out.with_name(out.name.split(".")[0] + "_reasons.csv")
    write_table_atomic(bad, rpath)
    typer.echo(f"{len(df)} inputs: {len(ok)} canonical CIFs written to {out}; {len(bad)} unusable (reasons in {rpath})")
    if len(bad):
        _echo_table(bad["reason"].str.split(r" \(|:", regex=True).str[0].value_counts().rename_axis("reason").reset_index())
