"""Crystal benchmarks: structure prediction on every split with all three strategies, and generation speed.

    python benchmarks/crystals.py --limit 50 --json crystals.json             # shipped model, CPU
    python benchmarks/crystals.py --splits --no-speed                         # only the held-out validity
    python benchmarks/crystals.py --limit 300 --checkpoint CK --json out.json # a bigger run

For each split in ../shared/data/crystals/ (perov_5, carbon_24, mp_20; MP-20's train file is
a subset of the published one) it runs ``retrieval``, ``samples`` (the model's first n samples),
``lm`` (its distinct structures from 2n samples, most often drawn first) and ``hybrid`` on the same seeded
test subset and prints match rate and RMSE at n=1 and n=20, valid rate and count. Then it
times generation of 20 structures for one composition with the shipped model, with the KV
cache and without it (the reference), and prints the ratio, and measures validity (every check,
CrystalNN bonds included) of n samples for each of k MP-20 test compositions whose reduced
formula is in none of the training data: raw, Wyckoff-snapped, and snapped with the cell scaled to
plausible bond lengths or its atoms nudged (what ``sample`` does by default).
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

from domains.crystals import DEFAULT_CHECKPOINT  # noqa: E402

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


MODES = [("raw", False, False), ("snapped", True, False), ("fitted", True, True)]  # (name, snap, fit)


def heldout_compositions(data: Path, k: int = 10, seed: int = 0, split: str = "test") -> list[str]:
    """k MP-20 ``split`` cell compositions (in a seeded order) whose reduced formula is in no training data."""
    import pandas as pd
    from pymatgen.core import Composition

    from domains.crystals.canonical import canonicalize
    from domains.crystals.readers import structure_from_cif

    seen = set(pd.read_parquet(ROOT / "data" / "crystals" / "default.parquet")["reduced_formula"])
    for name in SPLITS:
        seen |= {Composition(f).reduced_formula for f in pd.read_csv(data / name / "train.csv.gz")["formula"]}
    test = pd.read_csv(data / "mp_20" / f"{split}.csv.gz").sample(frac=1.0, random_state=seed)
    comps = []
    for cif in test["cif"]:
        if len(comps) == k:
            break
        try:
            c = canonicalize(structure_from_cif(cif, rebuild=False))
        except Exception:
            continue
        if c.reduced_formula not in seen:
            comps.append(c.formula)
    return comps


def validity_heldout(checkpoint: str, data: Path, k: int = 10, n: int = 20, seed: int = 0, bonds: bool = True,
                     split: str = "test", temperature: float = 1.0) -> dict:
    """Validity of n samples for each of k MP-20 ``split`` compositions whose reduced formula is in no training data."""
    import pandas as pd
    from pymatgen.core import Composition

    from domains.crystals.generate import CrystalGenerator, make_prompt
    from domains.crystals.validity import check_cif

    gen = CrystalGenerator(checkpoint)
    rows, comps = [], heldout_compositions(data, k, seed, split)
    for formula in comps:
        for mode, snap, fit in MODES:
            for smp in gen.sample([make_prompt(Composition(formula))], n, seed=seed, snap=snap, fit=fit,
                                  temperature=temperature):
                r = check_cif(smp.text, bonds=bonds)
                rows.append({"composition": formula, "mode": mode, "valid": r["valid"], "smact": r["smact"],
                             **{ch: r[ch] for ch in ("sensible", "formula", "multiplicity", "sites", "min_distance",
                                                     "bonds", "spacegroup")}})
    df = pd.DataFrame(rows)
    out = {"compositions": comps, "n": n, "bonds_checked": bonds, "split": split, "temperature": temperature}
    for mode, g in df.groupby("mode"):
        out[mode] = {"count": int(len(g)), "valid_rate": float(g["valid"].mean()),
                     **{f"{c}_rate": float(g[c].mean()) for c in g.columns if c not in ("composition", "mode", "valid")}}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "crystals"))
    ap.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    ap.add_argument("--splits", nargs="*", default=list(SPLITS))
    ap.add_argument("--strategies", nargs="*", default=["retrieval", "samples", "lm", "hybrid"])
    ap.add_argument("--draws", type=int, default=None, help="model samples per test structure (default 2n)")
    ap.add_argument("--spread", type=float, default=0.0,
                    help="spread the model's draws over its likeliest space groups (0: plain draws)")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-validity", action="store_true")
    ap.add_argument("--validity-k", type=int, default=10, help="held-out compositions for the validity figure")
    ap.add_argument("--on", choices=["test", "val"], default="test",
                    help="the split to score: val to choose settings (e.g. hybrid:<weight>) without looking at test")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the validity figure")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    from sciar.runtime import set_threads

    set_threads(1)
    from domains.crystals.benchmark import format_result, run_benchmarks

    results = {"limit": args.limit, "n": args.n, "seed": args.seed, "checkpoint": args.checkpoint, "runs": []}
    for split in args.splits:
        d = Path(args.data) / split
        t = time.perf_counter()
        rs = run_benchmarks(d / f"{args.on}.csv.gz", d / "train.csv.gz", args.strategies, checkpoint=args.checkpoint,
                            n=args.n, limit=args.limit, seed=args.seed, progress=False, draws=args.draws,
                            spread=args.spread)
        for r in rs:
            r["split"] = split
            results["runs"].append(r)
            print(f"{split:<10} {format_result(r)}", flush=True)
        print(f"{split:<10} ({time.perf_counter() - t:.0f} s for all strategies)", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    if not args.no_validity:
        v = validity_heldout(args.checkpoint, Path(args.data), k=args.validity_k, n=args.n, seed=args.seed,
                             split=args.on, temperature=args.temperature)
        results["validity_heldout"] = v
        for key, *_ in MODES:
            if key in v:
                print(f"validity on {len(v['compositions'])} held-out MP-20 compositions x {v['n']} ({key}): "
                      f"{v[key]['valid_rate']:.1%} valid (" + ", ".join(f"{c[:-5]} {x:.0%}" for c, x in v[key].items()
                                                              if c.endswith("_rate") and c != "valid_rate") + ")",
                      flush=True)
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
