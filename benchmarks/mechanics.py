"""Mechanics benchmark: forward and inverse baselines on the frame oracle's designs and on CPShub, one JSON.

    python benchmarks/mechanics.py --json mechanics.json                 # full: 2000 designs per family
    python benchmarks/mechanics.py --quick -n 150 --requests 30 --json q.json   # a short run

The same as ``sciar mechanics benchmark``; ``--checkpoint mechanics-tiny`` adds the model's rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    from domains.mechanics.benchmark import run_benchmark
    from domains.mechanics.lattices import FAMILIES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("mechanics-benchmark.json"))
    ap.add_argument("-n", type=int, default=2000, help="oracle designs per family")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--budget", type=int, default=20)
    ap.add_argument("--cpshub", type=Path, default=ROOT.parent / "shared" / "data" / "mechanics" / "cpshub_sim_data.tar.xz")
    ap.add_argument("--skip-cpshub", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smaller hyperparameter grids")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="score this model too (directory or shipped name)")
    ap.add_argument("--held-out", type=int, default=None, help="score the forward task on at most this many held-out designs")
    ap.add_argument("--data", type=Path, action="append", default=None,
                    help="oracle datasets to take the designs from (repeat), instead of drawing -n per family")
    a = ap.parse_args(argv)
    res = run_benchmark(a.families.split(","), a.n, a.requests, a.budget, None if a.skip_cpshub else a.cpshub,
                        a.quick, a.seed, a.json, checkpoint=a.checkpoint,
                        held_out=a.held_out, tables=a.data)
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
