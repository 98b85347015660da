"""``sciar mechanics ...``: solve lattice designs with the frame oracle, write task datasets, score the baselines.

Kept light: heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from sciar.io import output_file, output_folder

from domains.mechanics.ask import SAMPLES

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
    checkpoint: Optional[str] = typer.Option(None, help="Score this model too (checkpoint directory or shipped name, e.g. mechanics-tiny)."),
    held_out: Optional[int] = typer.Option(None, "--held-out", min=1, help="Score the forward task on at most this many held-out designs (a seeded draw; default all)."),
    data: Optional[List[Path]] = typer.Option(None, "--data", help="Oracle datasets to take the designs from instead of drawing -n per family (e.g. the checkpoint's own training tables); repeat for several."),
    threads: Optional[int] = typer.Option(1, min=1, help="CPU threads for torch."),
):
    """The model (with --checkpoint) against forward and inverse baselines (kNN, gradient-boosted trees, MLP; kNN lookup, random search, least squares)."""
    from domains.mechanics.benchmark import run_benchmark
    from sciar.runtime import set_threads

    set_threads(threads)
    res = run_benchmark(_families(families), n=n, requests=requests, budget=budget,
                        cpshub=None if skip_cpshub else cpshub, quick=quick, seed=seed, json_out=json_out,
                        checkpoint=checkpoint, held_out=held_out, tables=data or None)
    typer.echo(json.dumps({k: v for k, v in res.items() if k != "settings"}, indent=1, default=str))


@app.command()
def train(
    data: List[Path] = typer.Option(..., "--data", help="Task tables: oracle datasets, CPShub tasks, your own prompt/answer CSVs; repeat for several."),
    out: Path = typer.Option(..., "--out", callback=output_folder, help="Checkpoint directory to write (resumes if it holds a run)."),
    preset: str = typer.Option("tiny", help="Model and budget: tiny (3x4x128, 2 CPU cores, minutes), small (6x8x384, GPU)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Optimizer steps (default: the preset's)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Documents per step (default: the preset's)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: the preset's)."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    seed: int = typer.Option(1337, help="Random seed."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch (1 is fastest on a busy machine)."),
):
    """Train one language model on every task of the tables (loss on the answer tokens); held-out designs validate."""
    from domains.mechanics.model import train_mechanics_lm
    from sciar.runtime import set_threads

    set_threads(threads)
    s = train_mechanics_lm(data, out, preset, steps=steps, batch_size=batch_size, lr=lr, device=device, seed=seed)
    val = f", best validation loss {s['best_val']:.4f}" if s["n_val_docs"] else ""
    typer.echo(f"trained {s['params']:,} parameters for {s['steps']} steps on {s['n_train_docs']} documents "
               f"({', '.join(f'{k} {v}' for k, v in s['tasks'].items())}): final loss {s['final_loss']:.4f}{val}; "
               f"wrote {out}")


CHECKPOINT_HELP = "Checkpoint directory or shipped name."


def _load(checkpoint: str, threads: Optional[int]):
    from domains.mechanics.adapter import ADAPTER
    from sciar.runtime import set_threads

    set_threads(threads)
    model, _ = ADAPTER.load(checkpoint)
    return model


@app.command()
def ask(
    prompt: str = typer.Argument(..., help="A task prompt, e.g. 'Stiffness<honeycomb; theta=30; h=1; t=5.00e-2>' or 'Design<triangular; E1=1e-2; E2=1e-2>'."),
    checkpoint: str = typer.Option("mechanics-tiny", help=CHECKPOINT_HELP),
    n: int = typer.Option(SAMPLES, "-n", min=1, help="Answers sampled: a forward answer is their median, field by field; for Design, candidates solved by the oracle."),
    temperature: float = typer.Option(1.0, min=0.01, help="Sampling temperature."),
    seed: int = typer.Option(0, help="Random seed."),
    threads: Optional[int] = typer.Option(1, min=1, help="CPU threads for torch."),
):
    """Answer one prompt with the model (every answer parses: constrained decoding); the oracle's answer beside it."""
    from domains.mechanics.ask import ask as ask_fn

    res = ask_fn(_load(checkpoint, threads), prompt, n=n, temperature=temperature, seed=seed)
    typer.echo(res["prompt"])
    typer.echo(f"model:  {res['answer']}")
    if res.get("spread"):
        typer.echo("spread of the samples (upper / lower quartile - 1; above 0.05, expect errors of 10% or more): "
                   + ", ".join(f"{k}={v:.2g}" for k, v in res["spread"].items()))
    if "oracle" in res:
        typer.echo(f"oracle: {res['oracle']}")
        typer.echo("relative error: " + ", ".join(f"{k}={v:.3g}" for k, v in res["rel_error"].items())
                   + "; absolute error: " + ", ".join(f"{k}={v:.3g}" for k, v in res["abs_error"].items()))
    if "best" in res:
        b = res["best"]
        verdict = "meets the request" if not res["answer"].startswith("[infeasible") else (
            "no design found meets the request: nearest reachable design")
        typer.echo(f"oracle: {verdict}; verified error {b['error']:.3g} ({res['oracle_calls']} oracle calls): "
                   + ", ".join(f"{k}={b[k]:.3g}" for k in ("E1", "E2", "G12", "nu12", "rho")))


@app.command()
def design(
    family: str = typer.Option(..., help="Lattice family: honeycomb, reentrant, triangular, square, kagome, hierarchical."),
    target: str = typer.Option(..., help="Requested properties, e.g. 'E1=2.9e-4,E2=2.9e-4' (nu12, G12, rho too)."),
    max_density: Optional[float] = typer.Option(None, help="Upper bound on the relative density rho."),
    n: int = typer.Option(20, "-n", min=1, help="Candidates (samples, or MCTS simulations)."),
    search: str = typer.Option("sample", help="sample (constrained sampling) or mcts (tree search, reward: the oracle's verified error)."),
    out: Path = typer.Option(..., callback=output_folder, help="Folder for candidates.csv, summary.json and PNGs."),
    checkpoint: str = typer.Option("mechanics-tiny", help=CHECKPOINT_HELP),
    temperature: float = typer.Option(1.0, min=0.01, help="Sampling temperature."),
    top: int = typer.Option(3, min=0, help="PNGs of the best candidates."),
    seed: int = typer.Option(0, help="Random seed."),
    threads: Optional[int] = typer.Option(1, min=1, help="CPU threads for torch."),
):
    """Inverse design: candidates from the model, each re-solved by the oracle, ranked by verified error."""
    from domains.mechanics.design import design as design_fn
    from domains.mechanics.grammar import format_prompt, parse_prompt
    from sciar.io import write_json_atomic, write_table_atomic

    items = "; ".join(p.strip() for p in target.split(",") if p.strip())
    bound = f"; rho<={max_density}" if max_density is not None else ""
    request = parse_prompt(f"Design<{family}; {items}{bound}>")
    model = _load(checkpoint, threads)
    table, calls = design_fn(model, request, n=n, search=search, temperature=temperature, seed=seed, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    write_table_atomic(table, out / "candidates.csv")
    met = int(table["meets"].sum())
    write_json_atomic(out / "summary.json", {"request": format_prompt(request), "search": search, "candidates": len(table),
                                             "distinct": int(table.drop_duplicates(subset=[c for c in table if c not in ("rank", "logprob")]).shape[0]),
                                             "meeting": met, "oracle_calls": calls,
                                             "best": table.iloc[0].to_dict() if len(table) else None})
    if top:
        from domains.mechanics.lattices import build, family_params
        from domains.mechanics.plot import plot_design

        names = [q.name for q in family_params(family)]
        for _, r in table[table["error"] < float("inf")].drop_duplicates(subset=names).head(top).iterrows():
            params = {k: float(r[k]) for k in names}
            plot_design(build(family, params), out / f"candidate_{int(r['rank']):02d}.png",
                        f"#{int(r['rank'])} {family} " + " ".join(f"{k}={v:.3g}" for k, v in params.items())
                        + f"  error {r['error']:.3g}")
    cols = ["rank", *[q for q in table.columns if q in ("theta", "h", "gamma", "t")], "E1", "E2", "nu12", "rho", "error", "meets"]
    typer.echo(format_prompt(request))
    typer.echo(table[[c for c in cols if c in table]].head(10).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    typer.echo(f"{met} of {len(table)} candidates meet the request; {calls} oracle calls; wrote {out}")


@app.command()
def batch(
    input_: Path = typer.Option(..., "--input", help="Table (CSV/parquet) with a 'prompt' column."),
    output: Path = typer.Option(..., callback=output_file, help="Results table (.csv or .parquet); resumes if it exists."),
    checkpoint: str = typer.Option("mechanics-tiny", help=CHECKPOINT_HELP),
    n: int = typer.Option(SAMPLES, "-n", min=1, help="Answers sampled per prompt (forward: their median, field by field; Design: candidates solved by the oracle)."),
    seed: int = typer.Option(0, help="Random seed (each row's answers depend on it and the row only)."),
    threads: Optional[int] = typer.Option(1, min=1, help="CPU threads for torch."),
):
    """Answer a table of prompts (any task); a bad prompt gets status=error and a one-line error, the rest go on."""
    from domains.mechanics.ask import ask as ask_fn
    from sciar.batch import run_batch

    model = _load(checkpoint, threads)

    def row_fn(row: dict) -> list[dict]:
        prompt = row.get("prompt")
        if not isinstance(prompt, str):
            from sciar.errors import DataError

            raise DataError("no prompt given")
        res = ask_fn(model, prompt, n=n, seed=seed + int(row["row_id"]))
        rec = {"canonical": res["prompt"], "answer": res["answer"], "oracle": res.get("oracle")}
        rec.update({f"spread_{k}": v for k, v in res.get("spread", {}).items()})
        if "rel_error" in res:
            rec.update({f"rel_error_{k}": v for k, v in res["rel_error"].items()})
            rec.update({f"abs_error_{k}": v for k, v in res["abs_error"].items()})
        if "best" in res:
            rec.update(verified_error=res["best"]["error"], oracle_calls=res["oracle_calls"],
                       infeasible=res["answer"].startswith("[infeasible"))
        return [rec]

    df = run_batch(input_, row_fn, output=output, desc="prompts")
    bad = int((df["status"] == "error").sum())
    typer.echo(f"answered {len(df) - bad} of {len(df)} prompts ({bad} errors, see the error column); wrote {output}")
