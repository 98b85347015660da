"""``sciar shapes ...``: 3D shapes after MAR-3D: data, the shape VAE, the latent generator and the benchmark.

Kept light: heavy imports happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sciar.io import output_file, output_folder

SHIPPED = "shapes-small"  # the shipped generator (data/checkpoints; its VAE in vae/), as the adapter lists it

app = typer.Typer(
    help="3D shapes as continuous latent tokens (MAR-3D style): mesh data, the shape VAE, the generator, metrics.",
    no_args_is_help=True,
    add_completion=False,
)


def _sizes(text: str) -> tuple[int, ...]:
    from sciar.errors import SciarError

    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise SciarError(f"--sizes must be integers separated by commas (got {text!r})") from None
    if not sizes or any(s < 2 for s in sizes):
        raise SciarError(f"--sizes must be grid points per side, at least 2 (got {text!r})")
    return sizes


def _resolution(value: int) -> int:
    """Marching-cubes cells per side: the extraction refines a 32^3 grid by halving, so 32 times a power of two."""
    from sciar.errors import SciarError

    if value < 32 or value % 32 or (value // 32) & (value // 32 - 1):
        raise SciarError(f"--resolution must be 32, 64, 128, 256 ... (got {value})")
    return value


def _report_training(summary: dict, out: Path):
    typer.echo(f"trained {summary['steps']} steps: final loss {summary['final_loss']:.4f}, best validation loss "
               f"{summary['best_val']:.4f}; checkpoint {out}")


@app.command()
def prepare(
    meshes: Path = typer.Option(..., "--meshes", help="A folder of OBJ/PLY/STL/OFF/GLB meshes (classes from subfolder "
                                "names, splits from train/ and test/ folders), or a .tar.gz of one."),
    out: Path = typer.Option(..., "--out", callback=output_folder, help="Cache folder to write (resumes: meshes already "
                             "there are not read again)."),
    surface_points: int = typer.Option(4096, min=1, help="Surface points with normals per mesh (farthest-point sampled)."),
    near_points: int = typer.Option(8192, min=0, help="Occupancy query points near the surface per mesh."),
    uniform_points: int = typer.Option(8192, min=0, help="Occupancy query points uniform in [-1, 1]^3 per mesh."),
    val_per_class: int = typer.Option(2, min=0, help="Training meshes per class held out as the validation split."),
    seed: int = typer.Option(0, help="Seed of the sampling (the validation choice is fixed)."),
):
    """Read, repair, normalise and sample every mesh into a cache, with a per-mesh report (index.csv)."""
    from domains.shapes.cache import INDEX, prepare as prepare_cache
    from domains.shapes.dataset import find_meshes, mesh_source
    from domains.shapes.sampling import SamplingConfig

    files = find_meshes(mesh_source(meshes, out / "meshes"), val_per_class=val_per_class)
    config = SamplingConfig(surface_points=surface_points, near_points=near_points, uniform_points=uniform_points)
    report = prepare_cache(files, out, config, seed=seed)
    ok = report[report["error"] == ""]
    counts = ", ".join(f"{n} {s}" for s, n in ok["split"].value_counts().sort_index().items())
    typer.echo(f"{len(ok)} of {len(report)} meshes cached in {out} ({counts}; {ok['label'].nunique()} classes; "
               f"{int(ok['cached'].sum())} were there already)")
    for _, r in report[report["notes"] != ""].iterrows():
        typer.echo(f"repaired  {r['path']}: {r['notes']}")
    for _, r in report[report["error"] != ""].iterrows():
        typer.echo(f"skipped   {r['error']}")
    typer.echo(f"report    {out / INDEX}")


@app.command("train-vae")
def train_vae(
    cache: Path = typer.Option(..., "--cache", help="A cache written by 'sciar shapes prepare' (train and val splits)."),
    out: Path = typer.Option(..., "--out", callback=output_folder, help="Checkpoint directory to write (resumes if it "
                             "holds a run)."),
    preset: str = typer.Option("small", help="Size: tiny (tests, seconds), small (128 tokens x 32, width 128: the CPU "
                               "size), base (wider and deeper, for a GPU)."),
    steps: int = typer.Option(3000, min=1, help="Optimizer steps."),
    batch_size: int = typer.Option(8, min=1, help="Shapes per step."),
    lr: float = typer.Option(5e-4, min=0.0, help="Peak learning rate (cosine decay to a tenth)."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch."),
):
    """Train the shape VAE (surface points -> latent tokens -> occupancy) on a prepared cache."""
    from domains.shapes.autoencode import train_vae as run
    from sciar.runtime import set_threads

    set_threads(threads)
    summary = run(cache, out, preset, steps, batch_size, lr, seed, device)
    _report_training(summary, out)


@app.command()
def encode(
    vae: Path = typer.Option(..., "--vae", help="A VAE checkpoint directory (sciar shapes train-vae)."),
    cache: Path = typer.Option(..., "--cache", help="A cache written by 'sciar shapes prepare'."),
    out: Path = typer.Option(..., "--out", callback=output_file, help="Latents file to write (.safetensors)."),
    seed: int = typer.Option(0, help="Seed of the choice of surface points read by the encoder."),
):
    """Encode every mesh of a cache to latent tokens (posterior means), with the training split's latent scale."""
    from domains.shapes.autoencode import encode_cache, load_vae

    meta = encode_cache(load_vae(vae), cache, out, seed)
    typer.echo(f"encoded {meta['count']} meshes to {out}; training latents: mean {meta['mean']:.4f}, "
               f"std {meta['std']:.4f}")


@app.command()
def reconstruct(
    mesh: Path = typer.Argument(..., help="A mesh file (OBJ, PLY, STL, OFF, GLB)."),
    out: Path = typer.Option(..., "--out", callback=output_file, help="Output mesh (.obj, .ply, .stl, .off or .glb), "
                             "in the input's coordinates."),
    vae: str = typer.Option(SHIPPED, "--vae", help="A VAE checkpoint, or a generator checkpoint (its VAE); default: the shipped one."),
    resolution: int = typer.Option(128, callback=_resolution, help="Marching-cubes cells per side (32 times a power of two)."),
    seed: int = typer.Option(0, help="Seed of the surface sampling."),
):
    """Encode a mesh to latent tokens, decode and mesh them, and write the result mapped back to the input's frame."""
    import numpy as np

    from domains.shapes.autoencode import decode_mesh, encode, load_vae
    from domains.shapes.mesh import MESH_SUFFIXES, load_shape
    from domains.shapes.sampling import spread_surface
    from sciar.errors import SciarError
    from sciar.io import atomic_path

    if out.suffix.lower() not in MESH_SUFFIXES:
        raise SciarError(f"--out must end in one of {', '.join(MESH_SUFFIXES)} (got {out.name})")
    model = load_vae(_vae_dir(vae))
    shape = load_shape(mesh)
    surface, normals = spread_surface(shape.mesh, model.cfg.surface_points, np.random.default_rng(seed))
    _, result = decode_mesh(model, encode(model, surface, normals), resolution)
    if len(result.faces) == 0:
        raise SciarError(f"{mesh}: the decoded occupancy has no surface (the VAE sees nothing inside)")
    result.vertices = shape.frame.from_unit(result.vertices)
    with atomic_path(out) as tmp:
        result.export(tmp, file_type=out.suffix.lower().lstrip("."))
    typer.echo(f"wrote {out} ({len(result.faces)} faces)" + (f"; input repaired: {'; '.join(shape.notes)}" if shape.notes else ""))


@app.command()
def benchmark(
    meshes: Path = typer.Option(..., "--meshes", help="A mesh folder or .tar.gz (e.g. ../shared/data/shapes/shrec_16.tar.gz)."),
    json_path: Optional[Path] = typer.Option(None, "--json", callback=output_file, help="Write the results as JSON here."),
    split: str = typer.Option("test", help="Which split to score: train, val or test."),
    sizes: str = typer.Option("16,25", help="Grid points per side of the grid baselines; the first is the one reported "
                              "as grid_baseline (16^3 = 4,096 floats, the latent's size)."),
    per_class: int = typer.Option(0, min=0, help="Score at most this many meshes per class (0: all)."),
    resolution: int = typer.Option(128, callback=_resolution, help="Marching-cubes cells per side for the meshes (32 times a power of two)."),
    png: Optional[Path] = typer.Option(None, callback=output_file, help="Also draw a few meshes and their grid reconstructions here."),
    vae: Optional[Path] = typer.Option(None, "--vae", help="Also score this VAE checkpoint on the split (JSON key vae)."),
    generator: Optional[Path] = typer.Option(None, "--generator", help="Also score this generator, and the fitted "
                                             "Gaussian on its VAE's training latents, against the split (needs --cache)."),
    causal: Optional[Path] = typer.Option(None, "--causal", help="Also score this causal-baseline generator."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="The cache the generator was trained on."),
    cfg: Optional[float] = typer.Option(None, help="Guidance scale of the generators (default: the one of --scales "
                                        "whose val-split shapes the point-cloud classifier labels best)."),
    scales: str = typer.Option("1,2,3,4,5", help="Guidance scales tried on the val split."),
    gen_resolution: int = typer.Option(64, callback=_resolution, help="Marching-cubes cells per side of generated "
                                       "meshes for the generation metrics (seconds per shape uses --resolution)."),
):
    """Score reconstructions by IoU, Chamfer and F-scores: the grid baseline (signed-distance grids of the latent's
    size) and, given --vae, a trained VAE; given --generator, COV, MMD and 1-NNA of the generators and the training
    set, class accuracy of generated shapes by a point-cloud classifier, memorised shares and seconds per shape."""
    import tempfile

    from domains.shapes.bench import grid_baseline_report, render_grid_examples
    from domains.shapes.dataset import find_meshes, first_per_class, mesh_source
    from sciar.errors import SciarError
    from sciar.io import write_json_atomic

    if split not in ("train", "val", "test"):
        raise SciarError(f"--split must be train, val or test (got {split!r})")
    grid_sizes = _sizes(sizes)
    if generator and cache is None:
        raise SciarError("--generator needs --cache (the cache it was trained on)")
    _check_sampling(1.0 if cfg is None else cfg, 1)
    try:
        guidance = tuple(float(s) for s in scales.split(","))
    except ValueError:
        raise SciarError(f"--scales must be numbers separated by commas (got {scales!r})") from None
    for s in guidance:
        _check_sampling(s, 1)
    with tempfile.TemporaryDirectory() as tmp:
        files = [f for f in find_meshes(mesh_source(meshes, tmp)) if f.split == split]
        if per_class:
            files = first_per_class(files, per_class)
        if not files:
            raise SciarError(f"{meshes}: no meshes in the {split} split")
        result, _ = grid_baseline_report(files, grid_sizes, resolution)
        if vae:
            from domains.shapes.autoencode import load_vae
            from domains.shapes.bench import mean_metrics, vae_rows

            result["vae"] = mean_metrics(vae_rows(load_vae(vae), files, resolution))
        if generator:
            from domains.shapes.bench import generation_report

            every = find_meshes(mesh_source(meshes, tmp))
            result |= generation_report(generator, files, cache, causal, cfg, guidance,
                                        [f for f in every if f.split == "val"], [f for f in every if f.split == "train"],
                                        resolution=min(resolution, gen_resolution), speed_resolution=resolution)
        if png:
            step = max(1, len(files) // 4)
            render_grid_examples(files[::step][:4], grid_sizes, png, resolution)
    result |= {"split": split, "source": str(meshes)}
    for size, m in result["grid_baseline_by_size"].items():
        typer.echo(f"grid {size}^3 ({m['floats']} floats, {m['meshes']} meshes): IoU {m['iou']:.3f}  Chamfer "
                   f"{m['chamfer']:.5f}  F@0.02 {m['fscore_002']:.3f}  F@0.04 {m['fscore_004']:.3f}  "
                   f"empty {m['empty']}")
    if "vae" in result:
        m = result["vae"]
        typer.echo(f"VAE ({m['meshes']} meshes): IoU {m['iou']:.3f}  Chamfer {m['chamfer']:.5f}  F@0.02 "
                   f"{m['fscore_002']:.3f}  F@0.04 {m['fscore_004']:.3f}  empty {m['empty']}")
    for name, m in result.get("generation", {}).items():
        typer.echo(f"generation {name}: COV {m['cov']:.3f}  MMD {m['mmd']:.5f}  1-NNA {m['nna']:.3f}  "
                   f"({m['generated']} shapes against {m['reference']}, {m['empty']} empty)")
    if "class_accuracy" in result:
        typer.echo(f"classifier on real test meshes {result['classifier_accuracy_real']:.3f}; guidance "
                   f"{result['guidance']['chosen']:g}; class accuracy of generated shapes: "
                   + ", ".join(f"{k} {v:.3f}" for k, v in result["class_accuracy"].items() if k != "cfg"))
        typer.echo("memorised share: " + ", ".join(f"{k} {v:.3f}" for k, v in result["memorised_share"].items())
                   + f"; {result['seconds_per_shape']:.1f} s per shape at {resolution}^3")
    if json_path:
        write_json_atomic(json_path, result)
        typer.echo(f"wrote {json_path}")


def _vae_dir(name: str | Path) -> Path:
    """A VAE checkpoint, or the VAE inside a generator checkpoint (a directory or a shipped name)."""
    from domains.shapes.generator import VAE_DIR
    from sciar.paths import find_checkpoint

    path = find_checkpoint(name)
    return path / VAE_DIR if (path / VAE_DIR).is_dir() else path


def _check_sampling(cfg: float, steps: int):
    """Guidance and step count checked before anything is loaded."""
    from sciar.errors import SciarError

    if not cfg >= 1.0:
        raise SciarError(f"--cfg must be at least 1 (1 = no guidance), got {cfg}")
    if steps < 1:
        raise SciarError(f"--steps must be at least 1, got {steps}")


def _write_meshes(vae, latents, names: list[str], titles: list[str], out: Path, resolution: int,
                  frame=None) -> list[dict]:
    """Decode each latent set to a mesh, write ``out/NAME.obj`` atomically (mapped by ``frame`` from the normalised
    one, when given) and one PNG of all (normalised frame); a row per shape."""
    from domains.shapes.autoencode import decode_mesh
    from domains.shapes.render import render_meshes
    from sciar.errors import SciarError
    from sciar.io import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    rows, meshes = [], []
    for z, name in zip(latents, names):
        _, mesh = decode_mesh(vae, z, resolution)
        meshes.append(mesh)
        if len(mesh.faces) == 0:
            rows.append({"mesh": "", "faces": 0, "error": "the decoded occupancy has no surface"})
            continue
        path = out / f"{name}.obj"
        if frame is not None:
            mesh = mesh.copy()
            mesh.vertices = frame.from_unit(mesh.vertices)
        with atomic_path(path) as tmp:
            mesh.export(tmp, file_type="obj")
        rows.append({"mesh": str(path), "faces": len(mesh.faces), "error": ""})
    render_meshes(meshes, titles, out / "shapes.png")
    if not any(r["mesh"] for r in rows):
        raise SciarError(f"no shape has a surface: the VAE's decoder sees nothing inside any of them ({out / 'shapes.png'})")
    return rows


@app.command("train")
def train_generator(
    vae: Path = typer.Option(..., "--vae", help="A VAE checkpoint (sciar shapes train-vae); it is copied into the output."),
    cache: Path = typer.Option(..., "--cache", help="The cache the VAE was trained on (its latents are encoded once, "
                               "into CACHE/latents/)."),
    out: Path = typer.Option(..., "--out", callback=output_folder, help="Checkpoint directory to write (resumes)."),
    kind: str = typer.Option("masked", help="masked (the generator) or causal (the left-to-right baseline)."),
    preset: str = typer.Option("small", help="tiny (tests) or small (3 layers x 256, head 3 x 256: the CPU size)."),
    steps: int = typer.Option(5000, min=1, help="Optimizer steps."),
    batch_size: int = typer.Option(32, min=1, help="Shapes per step."),
    lr: float = typer.Option(4e-4, min=0.0, help="Peak learning rate (cosine decay to a tenth)."),
    ema: float = typer.Option(0.999, min=0.0, max=0.99999, help="Decay of the weights' moving average (sampled with)."),
    points: int = typer.Option(0, min=0, help="Also condition the masked generator on this many of each shape's "
                               "cached surface points (0: class only; 2048 as in MAR-3D)."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch."),
):
    """Train the class-conditional latent generator (masked autoregression with a diffusion head) on a VAE's latents."""
    from domains.shapes.generator import train_generator as run
    from sciar.runtime import set_threads

    set_threads(threads)
    summary = run(vae, cache, out, kind, preset, steps, batch_size, lr, ema, seed, device, points=points)
    _report_training(summary, out)


@app.command()
def generate(
    model: str = typer.Option(SHIPPED, "--model", help="A generator checkpoint (sciar shapes train) or a shipped name; default: the generator shipped with sciar (SHREC'16, 30 classes)."),
    class_name: str = typer.Option(..., "--class", help="The class to generate (one the generator was trained on)."),
    n: int = typer.Option(8, "-n", min=1, help="Shapes to generate."),
    cfg: float = typer.Option(3.0, help="Classifier-free guidance scale (1 = none)."),
    steps: int = typer.Option(16, help="Masked decoding steps (at most the number of latent tokens)."),
    temperature: float = typer.Option(1.0, min=1e-6, help="Temperature of the diffusion head's noise."),
    seed: int = typer.Option(0, help="Seed (shape i uses seed + i)."),
    points: Optional[Path] = typer.Option(None, "--points", help="A point cloud or mesh (PLY, OBJ, ...) to condition "
                                          "on as well (a generator trained with --points); meshes come out in its frame."),
    resolution: int = typer.Option(128, callback=_resolution, help="Marching-cubes cells per side."),
    out: Path = typer.Option(..., "--out", callback=output_folder, help="Folder for one OBJ per shape and shapes.png."),
):
    """Generate shapes of a class: latent tokens by the generator, meshes by the VAE's decoder."""
    import torch

    from domains.shapes.generator import load_generator, read_points

    _check_sampling(cfg, steps)
    gen = load_generator(model)
    label = gen.label(class_name)
    cloud = frame = None
    if points is not None:
        pts, frame = read_points(points, gen.points or 2048, seed)
        cloud = torch.as_tensor(pts, dtype=torch.float32)[None].repeat(n, 1, 1)
    z = gen.latents([label] * n, cfg=cfg, steps=steps, temperature=temperature, seed=seed, progress=True, points=cloud)
    rows = _write_meshes(gen.vae, z, [f"{class_name}-{seed + i}" for i in range(n)],
                         [f"{class_name} {seed + i}" for i in range(n)], out, resolution, frame)
    for r in rows:
        typer.echo(f"wrote {r['mesh']} ({r['faces']} faces)" if r["mesh"] else f"no mesh: {r['error']}")
    typer.echo(f"picture {out / 'shapes.png'}")


@app.command()
def interpolate(
    a: Path = typer.Argument(..., help="First mesh file."),
    b: Path = typer.Argument(..., help="Second mesh file."),
    vae: str = typer.Option(SHIPPED, "--vae", help="A VAE checkpoint, or a generator checkpoint (its VAE); default: the shipped one."),
    n: int = typer.Option(5, "-n", min=2, help="Shapes from A to B, both ends included."),
    seed: int = typer.Option(0, help="Seed of the surface sampling."),
    resolution: int = typer.Option(128, callback=_resolution, help="Marching-cubes cells per side."),
    out: Path = typer.Option(..., "--out", callback=output_folder, help="Folder for one OBJ per step and shapes.png."),
):
    """Encode two meshes and decode the straight line between their latent tokens (normalised frame)."""
    import numpy as np
    import torch

    from domains.shapes.autoencode import encode, load_vae
    from domains.shapes.mesh import load_shape
    from domains.shapes.sampling import spread_surface

    model = load_vae(_vae_dir(vae))
    ends = []
    for path in (a, b):
        surface, normals = spread_surface(load_shape(path).mesh, model.cfg.surface_points, np.random.default_rng(seed))
        ends.append(encode(model, surface, normals))
    t = torch.linspace(0, 1, n)
    z = [(1 - s) * ends[0] + s * ends[1] for s in t]
    rows = _write_meshes(model, z, [f"step-{i}" for i in range(n)], [f"t = {float(s):.2f}" for s in t], out, resolution)
    for r in rows:
        typer.echo(f"wrote {r['mesh']} ({r['faces']} faces)" if r["mesh"] else f"no mesh: {r['error']}")
    typer.echo(f"picture {out / 'shapes.png'}")


@app.command()
def batch(
    model: str = typer.Option(SHIPPED, "--model", help="A generator checkpoint (sciar shapes train) or a shipped name (default: the shipped one)."),
    input_path: Path = typer.Option(..., "--input", help="CSV or parquet with a 'class' column (optional 'seed')."),
    output: Path = typer.Option(..., "--output", callback=output_file, help="Results table (.csv or .parquet); resumes."),
    meshes: Optional[Path] = typer.Option(None, "--meshes", callback=output_folder, help="Folder for the meshes "
                                          "(default: OUTPUT's name without suffix, plus -meshes)."),
    cfg: float = typer.Option(3.0, help="Classifier-free guidance scale (1 = none)."),
    steps: int = typer.Option(16, help="Masked decoding steps."),
    seed: int = typer.Option(0, help="Seed of rows without a 'seed' column (row i uses seed + row_id)."),
    resolution: int = typer.Option(128, callback=_resolution, help="Marching-cubes cells per side."),
):
    """Generate one shape per row of a table; a row with a bad class gets its error and the rest go on."""
    from domains.shapes.autoencode import decode_mesh
    from domains.shapes.generator import load_generator
    from sciar.batch import read_table, run_batch
    from sciar.errors import DataError
    from sciar.io import atomic_path

    _check_sampling(cfg, steps)
    gen = load_generator(model)
    table = read_table(input_path)
    if "class" not in table.columns:
        raise DataError(f"{input_path}: no 'class' column")
    folder = meshes or output.with_name(output.stem + "-meshes")
    folder.mkdir(parents=True, exist_ok=True)

    def row(r: dict) -> list[dict]:
        s = int(r["seed"]) if "seed" in r and r["seed"] == r["seed"] else seed + int(r["row_id"])
        z = gen.latents([gen.label(str(r["class"]))], cfg=cfg, steps=steps, seed=s)
        _, mesh = decode_mesh(gen.vae, z[0], resolution)
        if len(mesh.faces) == 0:
            raise DataError("the decoded occupancy has no surface")
        path = folder / f"row-{r['row_id']}.obj"
        with atomic_path(path) as tmp:
            mesh.export(tmp, file_type="obj")
        return [{"mesh": str(path), "faces": len(mesh.faces), "watertight": bool(mesh.is_watertight)}]

    df = run_batch(table, row, output, desc="generate")
    typer.echo(f"{int((df['status'] == 'ok').sum())} of {len(df)} rows generated; {output}")
