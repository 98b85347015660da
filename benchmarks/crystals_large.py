"""Larger cells than the training data's 20 atoms: validity and speed on a fixed, seeded list of prompts.

    python benchmarks/crystals_large.py --formulas 12 --n 4 --json large.json

The list: the first ``--formulas`` distinct reduced formulas of MP-20's test split (shuffled with ``--seed``),
each with its formula-unit count Z raised so that the cell holds 21 to 52 atoms (Z drawn with the same seed
among the counts that do), and carbon-24's cells of 21, 22, 23 and 24 atoms (C21 ... C24). For each prompt,
``--n`` structures as ``sciar crystal sample`` makes them (grammar, Wyckoff snapping, bond fitting); printed:
the prompts refused as too large for the context (the one-line reason), the share of CIFs complete within the
context, valid (every check, CrystalNN bonds included) and the seconds per structure.
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


def prompt_list(data: Path, formulas: int, seed: int) -> list[tuple[str, str]]:
    """The fixed list of (source split, cell composition): MP-20 test formulas with Z raised into 21-52 atoms, then C21-C24."""
    import numpy as np
    import pandas as pd
    from pymatgen.core import Composition

    rng = np.random.default_rng(seed)
    test = pd.read_csv(data / "mp_20" / "test.csv.gz").sample(frac=1.0, random_state=seed)
    out, seen = [], set()
    for f in test["formula"]:
        red = Composition(f).reduced_composition
        key = red.reduced_formula
        zs = [z for z in range(1, 53) if 21 <= red.num_atoms * z <= 52]
        if key in seen or not zs:
            continue
        seen.add(key)
        z = int(rng.choice(zs))
        out.append(("mp_20", "".join(f"{el}{int(round(c * z))}" for el, c in red.items())))
        if len(out) == formulas:
            break
    return out + [("carbon_24", f"C{k}") for k in range(21, 25)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from domains.crystals import DEFAULT_CHECKPOINT

    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "crystals"))
    ap.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    ap.add_argument("--formulas", type=int, default=12, help="MP-20 test formulas in the list")
    ap.add_argument("--n", type=int, default=4, help="structures per prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    from domains.crystals.cif import cif_field
    from domains.crystals.generate import CrystalGenerator, make_prompt
    from domains.crystals.validity import check_cif
    from sciar.errors import SciarError

    gen = CrystalGenerator(args.checkpoint, threads=1)
    rows = []
    for split, comp in prompt_list(Path(args.data), args.formulas, args.seed):
        p = make_prompt(comp)
        t = time.perf_counter()
        try:
            samples = gen.sample([p], args.n, seed=args.seed)
        except SciarError as e:
            rows.append({"split": split, "composition": p.formula, "atoms": int(p.composition.num_atoms), "refused": str(e)})
            print(f"{p.formula:<16} refused: {e}", flush=True)
            continue
        secs = time.perf_counter() - t
        checks = [check_cif(s.text, bonds=True) if s.complete else None for s in samples]
        r = {"split": split, "composition": p.formula, "atoms": int(p.composition.num_atoms), "refused": None, "n": len(samples),
             "complete": sum(s.complete for s in samples), "valid": sum(bool(c and c["valid"]) for c in checks),
             "seconds_per_structure": round(secs / len(samples), 2), "tokens": [s.n_tokens for s in samples],
             "spacegroups": [cif_field(s.text, "_symmetry_space_group_name_H-M") for s in samples],
             "reasons": [c["reasons"] if c else "incomplete" for c in checks]}
        rows.append(r)
        print(f"{p.formula:<16} {r['atoms']:>3} atoms  complete {r['complete']}/{r['n']}  valid {r['valid']}/{r['n']}  "
              f"{r['seconds_per_structure']} s/structure  tokens {max(r['tokens'])} max", flush=True)
    done = [r for r in rows if not r["refused"]]
    total = sum(r["n"] for r in done)
    summary = {"prompts": len(rows), "refused": len(rows) - len(done), "structures": total,
               "complete_rate": sum(r["complete"] for r in done) / max(total, 1),
               "valid_rate": sum(r["valid"] for r in done) / max(total, 1),
               "seconds_per_structure": round(sum(r["seconds_per_structure"] * r["n"] for r in done) / max(total, 1), 2)}
    for name in ("mp_20", "carbon_24"):
        sel = [r for r in done if r["split"] == name]
        k = sum(r["n"] for r in sel)
        summary[name] = {"structures": k, "valid_rate": sum(r["valid"] for r in sel) / max(k, 1),
                         "complete_rate": sum(r["complete"] for r in sel) / max(k, 1)}
    print(json.dumps(summary), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "summary": summary, "rows": rows}, indent=1))
    return summary


if __name__ == "__main__":
    main()
