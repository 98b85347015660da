"""Batch generation over a table of compositions (``sciar crystal batch``): the table's columns under the
names users give them, and one row function that samples or searches as each row asks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from domains.crystals import DEFAULT_CHECKPOINT
from sciar.errors import DataError, SciarError

MODES = ("sample", "search")

# the batch's column names, and what tables call them
ALIASES = {"composition": ("composition", "formula", "reduced_formula", "pretty_formula"),
           "spacegroup": ("spacegroup", "space_group", "spacegroup_symbol", "spg", "sg"),
           "n": ("n",), "count": ("count",), "z": ("z",), "mode": ("mode",)}


def column_renames(columns) -> dict:
    """Renames that let a table say Formula, Space Group or COUNT for the batch's own column names."""
    key = {str(c).strip().lower().replace(" ", "_").replace("-", "_"): c for c in columns}
    renames = {}
    for name, aliases in ALIASES.items():
        if name in columns:
            continue
        found = next((key[a] for a in aliases if a in key), None)
        if found is not None and found not in renames:
            renames[found] = name
    return renames


def read_prompts(path: str | Path) -> pd.DataFrame:
    """The input table with the batch's column names; DataError without a composition column."""
    from sciar.tables import read_table

    df = read_table(path)
    df = df.rename(columns=column_renames(df.columns))
    if "composition" not in df.columns:
        raise DataError(f"{path} needs a 'composition' column (or formula; has {', '.join(map(str, df.columns))})")
    return df


def row_function(checkpoint: str = DEFAULT_CHECKPOINT, mode: str = "sample", n: int = 5, energy: str = "cgcnn",
                 bonds: bool = False, temperature: float = 1.0, top_k: int | None = 10, seed: int = 0,
                 simulations: int = 200, width: int = 5):
    """``fn(row) -> [result, ...]`` for :func:`sciar.batch.run_batch`: plain sampling, or an MCTS search toward
    low formation energy (its best structure), by the row's ``mode`` column or else ``mode``. Each mode's
    model and scorer are built on first use, so a table of one mode never loads the other's."""
    if mode not in MODES:
        raise SciarError(f"unknown mode {mode!r} (sample or search)")
    built = {}

    def build(m: str):
        if m == "sample":
            from domains.crystals.sampling import batch_fn

            return batch_fn(checkpoint, n=n, energy=energy, bonds=bonds, temperature=temperature, top_k=top_k,
                            seed=seed)
        from domains.crystals.search import search_row_fn

        return search_row_fn(checkpoint, simulations=simulations, width=width,
                             scorer=energy if energy != "none" else "cgcnn", seed=seed)

    def fn(row: dict) -> list[dict]:
        m = row.get("mode")
        m = mode if not isinstance(m, str) or not m.strip() else m.strip()
        if m not in MODES:
            raise SciarError(f"unknown mode {m!r} (sample or search)")
        if m not in built:
            built[m] = build(m)
        return built[m](row)

    return fn
