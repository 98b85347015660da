"""Where the beam model stops holding: frame-oracle moduli against a plane-stress continuum (scikit-fem) of the
same walls, at two pixel sizes (t/12 and t/24), for a few designs from t/l = 0.05 to 0.15.

    python benchmarks/mechanics_continuum.py

Prints continuum / beam ratios of E1, E2, G12 and both nu12 values.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DESIGNS = [("square", dict(t=0.05)), ("square", dict(t=0.1)), ("square", dict(t=0.15)),
           ("triangular", dict(t=0.1)), ("honeycomb", dict(theta=30, h=1, t=0.1)),
           ("honeycomb", dict(theta=30, h=1, t=0.15))]


def main():
    from domains.mechanics.continuum import continuum_stiffness
    from domains.mechanics.frame import solve
    from domains.mechanics.lattices import build
    from domains.mechanics.properties import engineering_constants

    print("| design | pixel | E1 cont/beam | E2 cont/beam | G12 cont/beam | nu12 cont | nu12 beam | s |")
    print("|---|---|---|---|---|---|---|---|")
    for family, params in DESIGNS:
        lat = build(family, params)
        beam = engineering_constants(solve(lat).C)
        for div in (12, 24):
            t0 = time.time()
            c = engineering_constants(continuum_stiffness(lat, params["t"] / div))
            name = family + " " + ", ".join(f"{k}={v:g}" for k, v in params.items())
            print(f"| {name} | t/{div} | {c['E1'] / beam['E1']:.3f} | {c['E2'] / beam['E2']:.3f} | "
                  f"{c['G12'] / beam['G12']:.3f} | {c['nu12']:.3f} | {beam['nu12']:.3f} | {time.time() - t0:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
