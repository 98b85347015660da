"""``sciar shapes ...``: 3D shapes after MAR-3D. Built so far: data preparation, the shape VAE and the reconstruction benchmark.

Kept light: heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from sciar.io import output_file, output_folder

app = typer.Typer(
    help="3D shapes as continuous latent tokens (MAR-3D style): mesh data, metrics, the grid baseline and the shape VAE.",
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
    import torch

    from domains.shapes.autoencode import train_vae as run

    if threads:
        torch.set_num_threads(threads)
    summary = run(cache, out, preset, steps, batch_size, lr, seed, device)
    typer.echo(f"trained {summary['steps']} steps: final loss {summary['final_loss']:.4f}, best validation loss "
               f"{summary['best_val']:.4f}; checkpoint {out}")


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
    vae: Path = typer.Option(..., "--vae", help="A VAE checkpoint directory (sciar shapes train-vae)."),
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
    model = load_vae(vae)
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
):
    """Score reconstructions by IoU, Chamfer and F-scores: the grid baseline (signed-distance grids of the latent's
    size) and, given --vae, a trained VAE. The generation parts come with the generator."""
    import tempfile

    from domains.shapes.bench import grid_baseline_report, render_grid_examples
    from domains.shapes.dataset import find_meshes, first_per_class, mesh_source
    from sciar.errors import SciarError
    from sciar.io import write_json_atomic

    if split not in ("train", "val", "test"):
        raise SciarError(f"--split must be train, val or test (got {split!r})")
    grid_sizes = _sizes(sizes)
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
    if json_path:
        write_json_atomic(json_path, result)
        typer.echo(f"wrote {json_path}")
