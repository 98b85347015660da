"""Shapes benchmark (MAR-3D style): reconstruction against the grid baseline, and generation. One run, one JSON.

Built so far: the grid baseline, signed-distance grids stored in as many floats as
the latent (16^3 = 4,096; 25^3 = 15,625), interpolated trilinearly for volume IoU
and meshed by the shared coarse-to-fine marching cubes at 128^3, scored on the
SHREC'16 test split (120 meshes); and, given a VAE checkpoint, the VAE on the
test split beside the same number of training meshes per class; given a generator
checkpoint (and its cache), COV, MMD and 1-NNA of the masked generator, the fitted
Gaussian and (given --causal) the causal baseline against the test split, and the
masked generator's seconds per shape, with the guidance scale chosen on the val split by the
class accuracy of a point-cloud classifier (fitted to the train split), that classifier's
accuracy on real test meshes and on generated ones, and the memorised shares.

    python benchmarks/shapes.py --json runs/bench-shapes.json --png domains/shapes/grid_baseline.png
    python benchmarks/shapes.py --vae runs/shapes-vae --json runs/bench-shapes.json
    python benchmarks/shapes.py --no-grid --generation-reference --generator runs/shapes-gen \
        --causal runs/shapes-causal --cache runs/shapes-cache --json runs/bench-gen.json
    python benchmarks/shapes.py --quick          # one test mesh per class, 64^3 meshes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHREC = ROOT.parent / "shared" / "data" / "shapes" / "shrec_16.tar.gz"


def main(argv=None) -> dict:
    from domains.shapes.bench import grid_baseline_report, render_grid_examples
    from domains.shapes.dataset import find_meshes, first_per_class, mesh_source
    from sciar.io import write_json_atomic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meshes", default=str(SHREC), help="mesh folder or .tar.gz (default: SHREC'16)")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--sizes", default="16,25", help="grid points per side; the first is reported as grid_baseline")
    ap.add_argument("--resolution", type=int, default=128, help="marching-cubes cells per side")
    ap.add_argument("--per-class", type=int, default=0, help="at most this many meshes per class (0: all)")
    ap.add_argument("--quick", action="store_true", help="one mesh per class, 64^3 meshes")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--csv", default=None, help="write the per-mesh rows here")
    ap.add_argument("--png", default=None, help="draw four meshes and their grid reconstructions here")
    ap.add_argument("--vae", default=None, help="also score this VAE checkpoint (keys vae and vae_train)")
    ap.add_argument("--generation-reference", action="store_true",
                    help="also score the training set used as the generator (generation.training_set)")
    ap.add_argument("--generator", default=None, help="also score this generator checkpoint, the fitted Gaussian on "
                    "its VAE's training latents and, given --causal, the causal baseline (generation.*; needs --cache)")
    ap.add_argument("--causal", default=None, help="a causal-baseline generator checkpoint (sciar shapes train --kind causal)")
    ap.add_argument("--cache", default=None, help="the prepared cache the generator was trained on (its latents)")
    ap.add_argument("--cfg", type=float, default=None, help="guidance scale of the generators (default: the one of "
                    "--scales whose val-split shapes the classifier labels best)")
    ap.add_argument("--scales", default="1,2,3,4,5", help="guidance scales tried on the val split")
    ap.add_argument("--val-per-class", type=int, default=0, help="val meshes per class for the guidance choice (0: all)")
    ap.add_argument("--gen-resolution", type=int, default=64, help="marching-cubes cells per side of generated meshes "
                    "for COV/MMD/1-NNA, class accuracy and memorisation (seconds per shape is taken at --resolution)")
    ap.add_argument("--speed-shapes", type=int, default=2, help="shapes timed for seconds per shape")
    ap.add_argument("--no-grid", action="store_true", help="skip the grid baseline")
    args = ap.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    per_class, resolution = (1, 64) if args.quick else (args.per_class, args.resolution)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        files = [f for f in find_meshes(mesh_source(args.meshes, tmp)) if f.split == args.split]
        if per_class:
            files = first_per_class(files, per_class)
        result, rows = ({}, None) if args.no_grid else grid_baseline_report(files, sizes, resolution)
        if args.generation_reference and not args.generator:  # the generator's report holds it
            from domains.shapes.bench import training_set_reference

            train = [f for f in find_meshes(mesh_source(args.meshes, tmp)) if f.split == "train"]
            result["generation"] = {"training_set": training_set_reference(train, files)}
        if args.generator:
            from domains.shapes.bench import generation_report

            if not args.cache:
                ap.error("--generator needs --cache (the cache it was trained on)")
            every = find_meshes(mesh_source(args.meshes, tmp))
            val = [f for f in every if f.split == "val"]
            val = first_per_class(val, args.val_per_class) if args.val_per_class else val
            scores = generation_report(args.generator, files, args.cache, args.causal, args.cfg,
                                       tuple(float(s) for s in args.scales.split(",")), val,
                                       [f for f in every if f.split == "train"],
                                       resolution=min(resolution, args.gen_resolution), speed_resolution=resolution,
                                       speed_shapes=args.speed_shapes)
            result.setdefault("generation", {}).update(scores.pop("generation"))
            result |= scores
        if args.vae:
            from domains.shapes.autoencode import load_vae
            from domains.shapes.bench import mean_metrics, vae_rows

            model = load_vae(args.vae)
            result["vae"] = mean_metrics(vae_rows(model, files, resolution))
            per = max(1, round(len(files) / max(1, len({f.label for f in files}))))
            train = first_per_class([f for f in find_meshes(mesh_source(args.meshes, tmp)) if f.split == "train"], per)
            result["vae_train"] = mean_metrics(vae_rows(model, train, resolution))
        if args.png:
            step = max(1, len(files) // 4)
            render_grid_examples(files[::step][:4], sizes, args.png, resolution)
    result |= {"split": args.split, "source": str(args.meshes), "resolution": resolution,
               "seconds": round(time.perf_counter() - t0, 1)}
    print(f"{len(files)} {args.split} meshes, marching cubes at {resolution}^3, {result['seconds']} s")
    print(f"{'':>8} {'floats':>7} {'IoU':>6} {'Chamfer':>9} {'F@0.02':>7} {'F@0.04':>7} {'empty':>6}")
    for size, m in result.get("grid_baseline_by_size", {}).items():
        print(f"{size + '^3':>8} {m['floats']:>7} {m['iou']:>6.3f} {m['chamfer']:>9.5f} {m['fscore_002']:>7.3f} "
              f"{m['fscore_004']:>7.3f} {m['empty']:>6}")
    for key in ("vae", "vae_train"):
        if key in result:
            m = result[key]
            print(f"{key:>8} {'':>7} {m['iou']:>6.3f} {m['chamfer']:>9.5f} {m['fscore_002']:>7.3f} "
                  f"{m['fscore_004']:>7.3f} {m['empty']:>6}   ({m['meshes']} meshes)")
    for name, m in result.get("generation", {}).items():
        print(f"generation {name}: COV {m['cov']:.3f}  MMD {m['mmd']:.5f}  1-NNA {m['nna']:.3f}  "
              f"({m['generated']} shapes against {m['reference']}{', %d empty' % m['empty'] if m.get('empty') else ''})")
    if "class_accuracy" in result:
        g = result["guidance"]
        print(f"classifier on real test meshes: {result['classifier_accuracy_real']:.3f}; guidance {g['chosen']:g}"
              + (f" (val accuracy by scale: {g['val_class_accuracy']})" if "val_class_accuracy" in g else ""))
        print("class accuracy of generated shapes: " + ", ".join(f"{k} {v:.3f}" for k, v in result["class_accuracy"].items()
                                                                 if k != "cfg"))
    if "memorised_share" in result:
        print("memorised share: " + ", ".join(f"{k} {v:.3f}" for k, v in result["memorised_share"].items()))
    if "seconds_per_shape" in result:
        print(f"masked generator: {result['seconds_per_shape']:.2f} s per shape (latents and mesh at "
              f"{result['speed']['resolution']}^3)")
    if args.json:
        write_json_atomic(args.json, result)
    if args.csv and rows is not None:
        rows.to_csv(args.csv, index=False)
    return result


if __name__ == "__main__":
    main()
