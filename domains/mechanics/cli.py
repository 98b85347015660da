"""``sciar mechanics ...``: solve lattice designs with the frame oracle, write task datasets, score the baselines.

Kept light: heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from sciar.io import output_file

app = typer.Typer(
    help="MeLM-style mechanics: periodic beam lattices (honeycomb, re-entrant, triangular, square, kagome, "
         "hierarchical) solved by a frame oracle; forward and inverse tasks as text.",
    no_args_is_help=True,
    add_completion=False,
)

DEFAULT_CPSHUB = Path("../shared/data/mechanics/cpshub_sim_data.tar.xz")
BEAM_THEORY_LIMIT = 0.1  # t/l above which walls are too stubby for Euler-Bernoulli beams


def _set(text: str) -> dict:
    from sciar.errors import SciarError

    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.partition("=")
        if not eq or not name.strip():
            raise SciarError(f"--set takes name=value pairs separated by commas (got {part!r})")
        out[name.strip()] = value.strip()
    return out


def _families(text: str) -> list[str]:
    from domains.mechanics.lattices import FAMILIES, family_params

    names = list(FAMILIES) if text == "all" else [f.strip() for f in text.split(",") if f.strip()]
    for f in names:
        family_params(f)
    return names


def _note(params: dict) -> str | None:
    t = params.get("t", 0)
    if t > BEAM_THEORY_LIMIT:
        return (f"t/l = {t:g} > {BEAM_THEORY_LIMIT}: the walls are stubby; Euler-Bernoulli beams without shear "
                f"or finite joints are approximate here")
    return None


def _simulate_row(row: dict) -> list[dict]:
    """One design of a --input table: its family and parameter columns (empty cells take the defaults)."""
    import pandas as pd

    from sciar.errors import DataError

    from domains.mechanics.lattices import check_params, family_params
    from domains.mechanics.properties import simulate

    family = row.get("family")
    if not isinstance(family, str):
        raise DataError("no family given")
    given = {q.name: row[q.name] for q in family_params(family) if q.name in row and not pd.isna(row[q.name])}
    params = check_params(family, given)
    p = simulate(family, params).to_dict()
    C = p.pop("C")
    return [{**p, **{f"C{i}{j}": C[i][j] for i in range(3) for j in range(i, 3)}, "note": _note(params)}]


@app.command()
def simulate(
    family: Optional[str] = typer.Option(None, help="honeycomb, reentrant, triangular, square, kagome or hierarchical."),
    set_: str = typer.Option("", "--set", help="Parameters as name=value pairs, e.g. theta=30,h=1,t=0.02 (defaults fill the rest)."),
    input_: Optional[Path] = typer.Option(None, "--input", help="A table of designs (CSV/parquet): a family column and parameter columns."),
    output: Optional[Path] = typer.Option(None, callback=output_file, help="With --input: where the results table goes (.csv or .parquet)."),
    json_out: Optional[Path] = typer.Option(None, "--json", callback=output_file, help="Write E1, E2, G12, nu12, nu21, rho and C as JSON."),
    png: Optional[Path] = typer.Option(None, callback=output_file, help="Draw the unit cell, its deformed shape and its directional modulus."),
):
    """Solve one design (or a table of them) with the frame oracle and print its effective properties."""
    from sciar.errors import SciarError

    if input_ is not None:
        from sciar.batch import run_batch

        if family or set_ or png:
            raise SciarError("--input takes the designs from the table; leave out --family, --set and --png")
        df = run_batch(input_, _simulate_row, output=output, desc="designs")
        cols = [c for c in ("row_id", "family", "E1", "E2", "G12", "nu12", "rho", "status", "error") if c in df]
        typer.echo(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        if json_out:
            from sciar.io import write_json_atomic

            write_json_atomic(json_out, df.to_dict("records"))
        return
    if not family:
        raise SciarError("give --family (and --set) for one design, or --input for a table of them")
    from domains.mechanics.lattices import build
    from domains.mechanics.properties import lattice_properties

    lattice = build(family, _set(set_))
    props = lattice_properties(lattice).to_dict()
    note = _note(lattice.params)
    typer.echo(f"{family} " + ", ".join(f"{k}={v:g}" for k, v in lattice.params.items()))
    for k in ("E1", "E2", "G12", "nu12", "nu21", "rho"):
        typer.echo(f"  {k:<5} {props[k]:.4g}")
    if note:
        typer.echo(f"note: {note}")
    if json_out:
        from sciar.io import write_json_atomic

        write_json_atomic(json_out, {"family": family, "params": lattice.params, **props, "note": note})
    if png:
        from domains.mechanics.plot import plot_design

        plot_design(lattice, png, f"{family} " + " ".join(f"{k}={v:g}" for k, v in lattice.params.items()))
        typer.echo(f"wrote {png}")


@app.command()
def dataset(
    family: str = typer.Option("honeycomb", help="Families, comma separated, or 'all'; 'cpshub' for the CPShub task table."),
    n: int = typer.Option(20000, "-n", min=1, help="Designs per family (oracle data)."),
    seed: int = typer.Option(0, help="Random seed of the designs drawn."),
    out: Path = typer.Option(..., callback=output_file, help="Output table (.parquet or .csv)."),
    cpshub: Path = typer.Option(DEFAULT_CPSHUB, help="CPShub archive (cpshub_sim_data.tar.xz) or its folder, for --family cpshub."),
):
    """Write a task table: oracle-solved designs (Stiffness and Design pairs, a fixed held-out split) or CPShub's curves."""
    from sciar.errors import SciarError
    from sciar.io import write_table_atomic

    if out.suffix not in (".csv", ".parquet"):
        raise SciarError(f"--out {out} must end in .csv or .parquet")
    if family == "cpshub":
        from domains.mechanics.datasets import cpshub_tasks, read_cpshub

        df = cpshub_tasks(read_cpshub(cpshub, progress=True))
        write_table_atomic(df, out)
        typer.echo(f"wrote {len(df)} CPShub tasks ({df['run'].nunique()} lattices) to {out}")
        return
    from domains.mechanics.datasets import oracle_dataset

    df = oracle_dataset(_families(family), n, seed)
    write_table_atomic(df, out)
    counts = df["split"].value_counts().to_dict() if "split" in df else {}
    errors = int(df["error"].notna().sum())
    typer.echo(f"wrote {len(df)} designs to {out}: {counts.get('train', 0)} train, {counts.get('test', 0)} held out"
               + (f", {errors} the oracle refused (error column)" if errors else ""))


@app.command()
def tokenize(
    text: str = typer.Argument(..., help="A prompt or answer, e.g. 'Stiffness<honeycomb; theta=30; t=0.05>'."),
):
    """Show a prompt as the grammar writes it and the tokens the model will see."""
    from domains.mechanics.grammar import canonical, mechanics_tokenizer

    if "<" in text.split("[")[0]:
        text = canonical(text)
    tok = mechanics_tokenizer()
    ids = tok.encode(text)
    typer.echo(text)
    typer.echo(f"{len(ids)} tokens: " + " | ".join(tok.vocab[i] for i in ids))


@app.command()
def benchmark(
    json_out: Path = typer.Option(Path("mechanics-benchmark.json"), "--json", callback=output_file, help="Where to write the results."),
    n: int = typer.Option(2000, "-n", min=50, help="Oracle designs per family (train and held-out split by design)."),
    families: str = typer.Option("all", help="Families, comma separated, or 'all'."),
    requests: int = typer.Option(100, min=1, help="Inverse requests (from held-out designs)."),
    budget: int = typer.Option(20, min=1, help="Proposals (and oracle calls) per inverse request."),
    cpshub: Optional[Path] = typer.Option(DEFAULT_CPSHUB, help="CPShub archive (cpshub_sim_data.tar.xz) or its folder."),
    skip_cpshub: bool = typer.Option(False, "--skip-cpshub", help="Leave out the CPShub part."),
    quick: bool = typer.Option(False, help="Smaller hyperparameter grids (for a short run)."),
    seed: int = typer.Option(0, help="Seed of the designs and of random search."),
):
    """Forward and inverse baselines (kNN, gradient-boosted trees, MLP; kNN lookup, random search, least squares)."""
    from domains.mechanics.benchmark import run_benchmark

    res = run_benchmark(_families(families), n=n, requests=requests, budget=budget,
                        cpshub=None if skip_cpshub else cpshub, quick=quick, seed=seed, json_out=json_out)
    typer.echo(json.dumps({k: v for k, v in res.items() if k != "settings"}, indent=1, default=str))
