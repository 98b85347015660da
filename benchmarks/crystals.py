"""Crystal benchmarks: structure prediction on every split with all three strategies, and generation speed.

    python benchmarks/crystals.py --limit 50 --json crystals.json             # shipped model, CPU
    python benchmarks/crystals.py --limit 300 --checkpoint CK --json out.json # a bigger run

For each split in ../shared/data/crystals/ (perov_5, carbon_24, mp_20; MP-20's train file is
a subset of the published one) it runs ``lm``, ``retrieval`` and ``hybrid`` on the same seeded
test subset and prints match rate and RMSE at n=1 and n=20, valid rate and count. Then it
times generation of 20 structures for one composition with the shipped model, with the KV
cache and without it (the reference), and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPLITS = ("perov_5", "carbon_24", "mp_20")


def speed(checkpoint: str, composition: str = "Na4Cl4", n: int = 20, repeats: int = 2, seed: int = 0) -> dict:
    """Seconds for n structures of one composition, KV cache on and off (grammar-constrained)."""
    from domains.crystals.generate import CrystalGenerator, make_prompt

    gen = CrystalGenerator(checkpoint)
    p = make_prompt(composition)
    out = {}
    for cache in (True, False):
        times = []
        for r in range(repeats if cache else 1):
            t = time.perf_counter()
            samples = gen.sample([p], n, seed=seed + r, use_cache=cache)
            times.append(time.perf_counter() - t)
        key = "kv_cache" if cache else "no_cache"
        out[key] = {"seconds": round(min(times), 2), "structures_per_s": round(n / min(times), 2),
                    "tokens": sum(s.n_tokens for s in samples)}
    out["speedup"] = round(out["no_cache"]["seconds"] / out["kv_cache"]["seconds"], 2)
    out["composition"], out["n"] = composition, n
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "crystals"))
    ap.add_argument("--checkpoint", default="crystal-small")
    ap.add_argument("--splits", nargs="*", default=list(SPLITS))
    ap.add_argument("--strategies", nargs="*", default=["retrieval", "lm", "hybrid"])
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    from domains.crystals.benchmark import format_result, run_benchmark

    results = {"limit": args.limit, "n": args.n, "seed": args.seed, "checkpoint": args.checkpoint, "runs": []}
    for split in args.splits:
        d = Path(args.data) / split
        for strat in args.strategies:
            r = run_benchmark(d / "test.csv.gz", d / "train.csv.gz", strat, checkpoint=args.checkpoint if strat != "retrieval" else None,
                              n=args.n, limit=args.limit, seed=args.seed, progress=False)
            r["split"] = split
            results["runs"].append(r)
            print(f"{split:<10} {format_result(r)}  ({r['seconds']} s)", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    if not args.no_speed:
        s = speed(args.checkpoint, n=args.n, seed=args.seed)
        results["speed"] = s
        print(f"generation of {s['n']} structures ({s['composition']}, 1 thread): KV cache {s['kv_cache']['seconds']} s "
              f"({s['kv_cache']['structures_per_s']} structures/s); without cache {s['no_cache']['seconds']} s; "
              f"ratio {s['speedup']}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
