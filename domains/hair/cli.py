"""``sciar hair ...``: CHARM-style hair cards: procedural data, strands to cards, meshes, checks and the benchmark.

Light on purpose: numpy, trimesh and scikit-learn are imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from sciar.io import output_file, output_folder

app = typer.Typer(help="Anime hair cards as control-point sequences (CHARM): data, meshes, validity, benchmark.",
                  no_args_is_help=True)

DEFAULT_CHECKPOINT = "hair-tiny"  # shipped under data/checkpoints/ (see the README)
SHARED_STRANDS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hair" / "harolongo.data.gz"


def _section(value: str) -> str:
    if value not in ("quad", "triangle"):
        raise typer.BadParameter("--section is quad or triangle")
    return value


def _write_hairstyle(cards, head, out: Path, title: str):
    """cards.csv, cards.obj, cards.glb and preview.png (front, side, back) in ``out``."""
    from domains.hair.files import write_cards_csv
    from domains.hair.gallery import save_gallery
    from domains.hair.mesh import export_mesh, to_mesh

    write_cards_csv(cards, out / "cards.csv")
    mesh = to_mesh(cards, head)
    export_mesh(mesh, out / "cards.obj")
    export_mesh(mesh, out / "cards.glb")
    save_gallery([cards], [title], head, out / "preview.png")


@app.command()
def procedural(
    n: int = typer.Option(1000, "-n", min=1, help="How many hairstyles."),
    seed: int = typer.Option(0, help="Random seed (hairstyle i depends only on seed and i)."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_folder, help="Folder for hairstyles.parquet, styles.csv and gallery.png."),
    gallery: bool = typer.Option(True, help="Draw one hairstyle of each style (front, side, back) into gallery.png."),
):
    """Generate procedural anime hairstyles (the project's one synthetic data source) with their splits and checks."""
    from domains.hair.files import write_set
    from domains.hair.gallery import save_gallery
    from domains.hair.head import load_head
    from domains.hair.procedural import draw_set
    from domains.hair.validity import check_cards

    head = load_head()
    cards, styles = draw_set(seed, n, head)
    checks = [check_cards(c, head) for c in cards]
    styles["valid"] = [c["valid"] for c in checks]
    styles["inside_share"] = [c["inside_share"] for c in checks]
    write_set(cards, styles, out)
    if gallery:
        first = styles.groupby("style").head(1)
        save_gallery([cards[i] for i in first.index], [f"{r.style}, {r.n_cards} cards" for r in first.itertuples()], head, out / "gallery.png")
    counts = styles["split"].value_counts().to_dict()
    typer.echo(f"{n} hairstyles in {out} ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
               f"{int(styles['valid'].sum())} pass every check; largest inside-head share {styles['inside_share'].max():.4f}")


@app.command("from-strands")
def from_strands(
    file: Path = typer.Argument(..., help="USC-HairSalon strands (.data or .data.gz), in its own frame (centimetres)."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_folder, help="Folder for cards.csv, cards.obj, cards.glb, coverage.json, preview.png."),
):
    """Cluster strands into cards (fixed settings, see domains/hair/strands.py) and report coverage both ways."""
    from domains.hair.head import load_head
    from domains.hair.strands import coverage, read_strands, strands_to_cards
    from domains.hair.validity import check_cards
    from sciar.io import write_json_atomic

    head = load_head()
    strands = read_strands(file)
    cards = strands_to_cards(strands, head)
    _write_hairstyle(cards, head, out, f"{file.name}: {len(cards)} cards")
    cov = coverage(strands, cards, head)
    cov["checks"] = check_cards(cards, head)
    write_json_atomic(out / "coverage.json", cov)
    typer.echo(f"{len(strands)} strands -> {len(cards)} cards in {out}: strand points to cards median "
               f"{cov['strands_to_cards_median_mm']:.1f} mm (p90 {cov['strands_to_cards_p90_mm']:.1f}), card surface to strands "
               f"median {cov['cards_to_strands_median_mm']:.1f} mm (p90 {cov['cards_to_strands_p90_mm']:.1f}); card area "
               f"{cov['card_area_m2']:.3f} m^2")


@app.command()
def fit(
    points: Path = typer.Argument(..., help="A point cloud of hair (.ply/.obj/.xyz/.csv/.npy), metres, in the head's frame."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_folder, help="Folder for cards.csv, cards.obj, cards.glb, preview.png."),
    n_cards: int = typer.Option(60, min=1, max=130, help="Cards to fit."),
):
    """Fit cards directly to a point cloud (the geometric-fit baseline; no model): k-means clusters become cards."""
    from domains.hair.files import read_points
    from domains.hair.head import load_head
    from domains.hair.strands import points_to_cards
    from domains.hair.validity import check_cards

    head = load_head()
    cards = points_to_cards(read_points(points, head), head, {"n_cards": n_cards})
    _write_hairstyle(cards, head, out, f"{points.name}: {len(cards)} cards")
    r = check_cards(cards, head)
    typer.echo(f"{len(cards)} cards in {out} ({'valid' if r['valid'] else 'INVALID'}, inside head {r['inside_share']:.2%})")


@app.command()
def train(
    data: Path = typer.Option(..., help="A procedural set (`sciar hair procedural`'s folder: hairstyles.parquet, styles.csv)."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint folder (training resumes from it)."),
    preset: str = typer.Option("tiny", help="Model and budget: tiny (2 CPU cores) or charm (6 layers, width 768)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Optimizer steps (default: the preset's)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Hairstyles per micro-batch (default: the preset's)."),
    lr: Optional[float] = typer.Option(None, min=0.0, help="Peak learning rate (default: the preset's)."),
    ema: Optional[float] = typer.Option(None, min=0.0, max=0.9999, help="Decay of a moving average of the weights (0: none)."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch."),
):
    """Train the point-cloud-conditioned card model on procedural hairstyles (split 'train'; 'test' validates)."""
    from domains.hair.training import train_model
    from sciar.runtime import set_threads

    set_threads(threads)
    summary = train_model(data, preset, out, steps, batch_size, lr, ema)
    typer.echo(f"checkpoint in {out}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in summary.items() if isinstance(v, (int, float))))


@app.command()
def generate(
    points: Path = typer.Option(..., help="A point cloud of hair (.ply/.obj/.xyz/.csv/.npy), metres, in the head's frame."),
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, help="A checkpoint folder from `sciar hair train`, or a shipped name."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_folder, help="Folder for cards.csv, cards.obj, cards.glb, preview.png."),
    top_k: int = typer.Option(10, min=1, help="Sample among the k likeliest values of each field (1: greedy)."),
    temperature: float = typer.Option(1.0, min=1e-3, help="Sampling temperature."),
    seed: int = typer.Option(0, help="Seed of the sampling and of the cloud's subsample."),
    max_len: Optional[int] = typer.Option(None, min=4, help="Longest token sequence (default: the model's context)."),
    ema: Optional[bool] = typer.Option(None, "--ema/--no-ema", help="The checkpoint's moving-average weights or its last ones (default: the average where it has one)."),
):
    """Generate hair cards for a point cloud with a trained model (cached decoding; every sequence well formed)."""
    from domains.hair.files import read_points
    from domains.hair.head import load_head
    from domains.hair.training import generate_cards, load_hair_model
    from domains.hair.validity import check_cards

    head = load_head()
    cloud = read_points(points, head)
    cards = generate_cards(cloud, load_hair_model(checkpoint, ema), head, 1, top_k, temperature, seed, max_len)[0]
    _write_hairstyle(cards, head, out, f"{points.name}: {len(cards)} generated cards")
    r = check_cards(cards, head)
    typer.echo(f"{len(cards)} cards in {out} ({'valid' if r['valid'] else 'INVALID'}, inside head {r['inside_share']:.2%})")


@app.command()
def batch(
    input_: Path = typer.Option(..., "--input", help="CSV/parquet of prompts: column `points` (a cloud's path), optional `seed`."),
    output: Path = typer.Option(..., callback=output_file, help="Results table (.parquet or .csv); a rerun resumes it."),
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, help="A checkpoint folder from `sciar hair train`, or a shipped name."),
    cards_dir: Optional[Path] = typer.Option(None, help="Folder for each row's cards CSV (default: OUTPUT's name + _cards)."),
    top_k: int = typer.Option(10, min=1, help="Sample among the k likeliest values of each field (1: greedy)."),
    max_len: Optional[int] = typer.Option(None, min=4, help="Longest token sequence (default: the model's context)."),
):
    """Generate cards for a table of point clouds: one result row per prompt (a bad row gets an error and the batch goes on)."""
    from domains.hair.files import read_points, write_cards_csv
    from domains.hair.head import load_head
    from domains.hair.training import generate_cards, load_hair_model
    from domains.hair.validity import check_cards
    from sciar.batch import run_batch
    from sciar.errors import DataError

    head, model = load_head(), load_hair_model(checkpoint)
    folder = cards_dir or output.with_name(output.stem + "_cards")
    folder.mkdir(parents=True, exist_ok=True)

    def row(r: dict) -> list[dict]:
        if not isinstance(r.get("points"), str) or not r["points"]:
            raise DataError("the row has no `points` path")
        seed = int(r["seed"]) if "seed" in r and r["seed"] == r["seed"] else int(r["row_id"])
        cards = generate_cards(read_points(r["points"], head), model, head, 1, top_k, 1.0, seed, max_len)[0]
        path = folder / f"row_{r['row_id']}.csv"
        write_cards_csv(cards, path)
        c = check_cards(cards, head)
        return [{"n_cards": len(cards), "n_points": int(sum(len(x) for x in cards)), "valid": bool(c["valid"]),
                 "inside_share": float(c["inside_share"]), "cards": str(path)}]

    df = run_batch(input_, row, output=output, desc="hair batch")
    typer.echo(f"{int((df['status'] == 'ok').sum())} of {len(df)} rows generated into {output}")


@app.command("to-mesh")
def to_mesh_cmd(
    cards: Path = typer.Argument(..., help="Cards CSV (card, x, y, z, width, thickness; metres, head frame)."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_file, help="Mesh file: .obj or .glb (UVs along the cards)."),
    section: str = typer.Option("quad", callback=_section, help="Cross-section: quad (flat box) or triangle."),
):
    """Turn cards into a triangle mesh as CHARM does (cards lie flat over the head)."""
    from domains.hair.files import read_cards_csv
    from domains.hair.head import load_head
    from domains.hair.mesh import export_mesh, to_mesh

    c = read_cards_csv(cards)
    mesh = to_mesh(c, load_head(), section)
    export_mesh(mesh, out)
    typer.echo(f"{len(c)} cards -> {len(mesh.vertices)} vertices, {len(mesh.faces)} triangles in {out}")


@app.command("from-mesh")
def from_mesh_cmd(
    mesh: Path = typer.Argument(..., help="A card mesh (.obj/.glb) with vertices in sections, as to-mesh writes."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_file, help="Cards CSV to write."),
    section: str = typer.Option("quad", callback=_section, help="The mesh's cross-section: quad or triangle."),
):
    """Fit cards back to a card mesh: one card per connected part, one control point per section."""
    from domains.hair.files import write_cards_csv
    from domains.hair.head import load_head
    from domains.hair.mesh import from_mesh, load_mesh
    from domains.hair.tokens import orient_and_sort

    cards = orient_and_sort(from_mesh(load_mesh(mesh), section), load_head())
    write_cards_csv(cards, out)
    typer.echo(f"{len(cards)} cards ({sum(len(c) for c in cards)} control points) in {out}")


@app.command()
def check(
    cards: List[Path] = typer.Argument(..., help="Cards tables (CSV or parquet), or a set's hairstyles.parquet (every hairstyle checked)."),
    json_out: Optional[Path] = typer.Option(None, "--json", callback=output_file, help="Write the checks as JSON too."),
):
    """Validity checks: inside-head share, root-to-scalp distance, short cards, fields out of range, NaN."""
    from domains.hair.files import read_hairstyles
    from domains.hair.head import load_head
    from domains.hair.validity import check_cards
    from sciar.io import write_json_atomic

    head = load_head()
    results = {}
    for f, one in ((name, c) for path in cards for name, c in read_hairstyles(path).items()):
        r = check_cards(one, head)
        results[str(f)] = r
        typer.echo(f"{f}: {'valid' if r['valid'] else 'INVALID'}: {r['n_cards']} cards, inside head {r['inside_share']:.2%}, "
                   f"roots {r['root_to_scalp_median_mm']:.1f} mm (max {r['root_to_scalp_max_mm']:.1f}) from the scalp, "
                   f"{r['short_cards']} short cards, {r['out_of_range']} fields out of range")
    if json_out:
        write_json_atomic(json_out, results)


@app.command()
def benchmark(
    json_path: Path = typer.Option(..., "--json", callback=output_file, help="Where to write the results."),
    data: Optional[Path] = typer.Option(None, help="A set from `procedural` (default: generated here from --seed)."),
    seed: int = typer.Option(0, help="Seed of the generated set and of the conditions."),
    n_train: int = typer.Option(1000, min=1, help="Training hairstyles retrieval searches."),
    n_test: int = typer.Option(50, min=0, help="Held-out random draws scored."),
    n_region: int = typer.Option(20, min=0, help="Hairstyles of the held-out region (long hair over 0.5 m) scored."),
    strands: Optional[Path] = typer.Option(None, help=f"The real hairstyle's strands (default: {SHARED_STRANDS} if present)."),
    resamplings: int = typer.Option(10, min=1, help="Conditions drawn for the real hairstyle (scores averaged)."),
    train_sizes: str = typer.Option("100,300", help="Smaller training sets for retrieval's scaling (comma-separated)."),
    quick: bool = typer.Option(False, help="A small run: 60 training, 6 test, 3 region hairstyles, 2 real conditions."),
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, help="The model scored: a checkpoint folder or a shipped name."),
    model: bool = typer.Option(True, help="Score the model (--no-model: its entries null)."),
    baselines: bool = typer.Option(True, help="Score retrieval, the geometric fit and the quantised floor (--no-baselines: the model only)."),
    top_k: int = typer.Option(10, min=1, help="The model's sampling: the k likeliest values of each field (1: greedy)."),
):
    """Score the model, retrieval, the geometric fit and the quantised ground truth with CHARM's metrics."""
    from domains.hair.benchmark import run_benchmark
    from domains.hair.files import read_set
    from domains.hair.head import load_head
    from domains.hair.procedural import draw_set
    from domains.hair.strands import read_strands, strands_to_cards
    from sciar.io import write_json_atomic

    if quick:
        n_train, n_test, n_region, resamplings, train_sizes = 60, 6, 3, 2, "20,40"
    sizes = [int(s) for s in train_sizes.split(",") if s.strip()]
    if not baselines:
        n_train, sizes = 0, []  # retrieval's training set is not needed
    head = load_head()
    if data:
        cards, styles = read_set(data)
        pick = lambda split, k: [cards[i] for i in styles.index[styles["split"] == split][:k]]  # noqa: E731
        train, procedural = pick("train", n_train), {"test": pick("test", n_test), "heldout_region": pick("heldout_region", n_region)}
    else:
        train = draw_set(seed, n_train, head, {"train"})[0]
        procedural = {"test": draw_set(seed, n_test, head, {"test"})[0] if n_test else [],
                      "heldout_region": draw_set(seed, n_region, head, {"heldout_region"})[0] if n_region else []}
    path = strands or (SHARED_STRANDS if SHARED_STRANDS.is_file() else None)
    real = strands_to_cards(read_strands(path), head) if path else None
    if model:
        from domains.hair.training import generate_cards, load_hair_model

        net = load_hair_model(checkpoint)

        def sampler(cond, s):
            return generate_cards(cond, net, head, 1, top_k, 1.0, s)[0]
    else:
        sampler = None
    result = run_benchmark(train, procedural, real, head, sizes, resamplings, seed, sampler, baselines)
    result["settings"] = {"seed": seed, "n_test": len(procedural["test"]), "n_region": len(procedural["heldout_region"]),
                          "resamplings": resamplings, "strands": str(path) if path else None, "data": str(data) if data else None,
                          "checkpoint": checkpoint if model else None, "top_k": top_k if model else None}
    write_json_atomic(json_path, result)
    for part in ("procedural", "real"):
        if result[part]:
            for m, r in result[part].items():
                if r is None:
                    continue
                typer.echo(f"{part:<10} {m:<14} chamfer {r['chamfer']:9.1f} mm^2  emd {r['emd']:6.1f} mm  "
                           f"hausdorff {r['hausdorff']:6.1f} mm  iou {r['iou']:.3f}")
    typer.echo(f"written to {json_path}")
