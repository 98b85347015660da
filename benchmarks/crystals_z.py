"""Validity of generated structures by formula-unit count Z, for reduced formulas.

A reduced formula (``NaCl``) is sampled over several Z; this measures, per Z, the share of
valid samples (every check, CrystalNN bonds included, Wyckoff-snapped) and what the
allocation of samples over Z (in proportion to the model's header probability, over a set of
Z) gives in expectation:

    python benchmarks/crystals_z.py --formulas NaCl,MgO,TiO2 --n 8
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from domains.crystals import DEFAULT_CHECKPOINT  # noqa: E402

ALL_Z = (1, 2, 3, 4, 6, 8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formulas", required=True, help="comma-separated reduced formulas")
    ap.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    ap.add_argument("--n", type=int, default=8, help="samples per formula and Z")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    from sciar.runtime import set_threads

    set_threads(1)
    from domains.crystals.generate import CrystalGenerator, prompts_for
    from domains.crystals.prompts import Z_CHOICES
    from domains.crystals.validity import check_cif

    gen = CrystalGenerator(args.checkpoint)
    rows = []
    for f in args.formulas.split(","):
        ps, zs = [], []
        for z in ALL_Z:
            try:
                ps += gen.fitting(prompts_for(f, None, z))
                zs.append(z)
            except Exception:
                continue
        for z, p, lp in zip(zs, ps, gen.header_logprobs(ps)):
            smp = gen.sample([p], args.n, seed=args.seed, snap=True)
            valid = float(np.mean([bool(check_cif(s.text, bonds=True)["valid"]) for s in smp]))
            rows.append({"formula": f, "z": z, "logprob": float(lp), "valid": valid})
            print(json.dumps(rows[-1]), flush=True)
    by_z = {z: float(np.mean([r["valid"] for r in rows if r["z"] == z])) for z in ALL_Z if any(r["z"] == z for r in rows)}
    expected = {}
    for name, allowed in {"Z in 1,2,3,4,6,8": ALL_Z, f"Z in {','.join(map(str, Z_CHOICES))} (default)": Z_CHOICES}.items():
        v = []
        for f in dict.fromkeys(r["formula"] for r in rows):
            g = [r for r in rows if r["formula"] == f and r["z"] in allowed]
            if not g:
                continue
            lp = np.array([r["logprob"] for r in g])
            w = np.exp(lp - lp.max())
            v.append(float((w / w.sum() * np.array([r["valid"] for r in g])).sum()))
        expected[name] = float(np.mean(v))
    print("valid by Z:", ", ".join(f"Z={z} {v:.1%}" for z, v in by_z.items()))
    for name, v in expected.items():
        print(f"expected validity, samples spread over {name}: {v:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "valid_by_z": by_z, "expected": expected}, indent=1))


if __name__ == "__main__":
    main()
