"""A design at a glance: its unit cell, its deformed shape under uniaxial stress along x1, and its directional modulus."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sciar.io import atomic_path

from domains.mechanics.frame import solve
from domains.mechanics.lattices import Lattice
from domains.mechanics.properties import directional_modulus, engineering_constants


def _beam_curves(lattice: Lattice, disp: np.ndarray | None = None, strain: np.ndarray | None = None, scale: float = 0.0,
                 tiles=1, samples=12):
    """Centre lines of every wall over (2 tiles + 1)^2 cells, bent by the ends' displacements and rotations
    (axial linear, transverse cubic Hermite) when ``disp`` (n, 3) is given; ``strain`` (2x2) is the
    macroscopic strain, whose affine part jumps across each lattice translation."""
    start = lattice.nodes[lattice.edges[:, 0]]
    vec = lattice.edge_vectors()
    s = np.linspace(0, 1, samples)
    curves = []
    for k, ((i, j), (s1, s2)) in enumerate(zip(lattice.edges, lattice.shifts)):
        length = np.linalg.norm(vec[k])
        e = vec[k] / length
        n = np.array([-e[1], e[0]])
        pts = start[k] + np.outer(s, vec[k])
        if disp is not None:
            shift = s1 * lattice.a1 + s2 * lattice.a2
            # the far node's displacement includes the affine jump across the cell boundary
            ui, uj = disp[i, :2], disp[j, :2] + strain @ shift
            ai, aj = ui @ e, uj @ e
            ti, tj = ui @ n, uj @ n
            h1, h2, h3, h4 = 1 - 3 * s**2 + 2 * s**3, length * (s - 2 * s**2 + s**3), 3 * s**2 - 2 * s**3, length * (s**3 - s**2)
            along = (1 - s) * ai + s * aj
            across = h1 * ti + h2 * disp[i, 2] + h3 * tj + h4 * disp[j, 2]
            pts = pts + scale * (np.outer(along, e) + np.outer(across, n))
        for a in range(-tiles, tiles + 1):
            for b in range(-tiles, tiles + 1):
                off = a * lattice.a1 + b * lattice.a2
                if disp is not None:
                    off = off + scale * strain @ (a * lattice.a1 + b * lattice.a2)
                curves.append((pts + off, lattice.thickness[k]))
    return curves


def plot_design(lattice: Lattice, path: str | Path, title: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sol = solve(lattice)
    C = sol.C
    eps = np.linalg.solve(C, [1.0, 0.0, 0.0])  # uniaxial stress sigma1 = 1
    strain = np.array([[eps[0], eps[2] / 2], [eps[2] / 2, eps[1]]])
    disp = sol.node_displacements(lattice, eps)
    size = max(np.linalg.norm(lattice.a1), np.linalg.norm(lattice.a2))
    scale = 0.12 * size / max(np.abs(disp[:, :2]).max(), np.abs(strain).max() * size, 1e-30)

    fig = plt.figure(figsize=(13, 4.4))
    ax1, ax2 = fig.add_subplot(1, 3, 1), fig.add_subplot(1, 3, 2)
    ax3 = fig.add_subplot(1, 3, 3, projection="polar")
    lw = lambda t: 0.6 + 60 * t  # noqa: E731 (walls drawn thicker as they are)
    for pts, t in _beam_curves(lattice):
        ax1.plot(pts[:, 0], pts[:, 1], color="0.2", lw=lw(t), solid_capstyle="round")
    o = -0.5 * (lattice.a1 + lattice.a2) + lattice.nodes.mean(axis=0)
    cell = np.array([o, o + lattice.a1, o + lattice.a1 + lattice.a2, o + lattice.a2, o])
    ax1.plot(cell[:, 0], cell[:, 1], "r--", lw=1, label="unit cell")
    ax1.set_title("unit cell (3x3 tiles)")
    ax1.legend(loc="upper right", fontsize=8)
    for pts, t in _beam_curves(lattice):
        ax2.plot(pts[:, 0], pts[:, 1], color="0.8", lw=0.8)
    for pts, t in _beam_curves(lattice, disp, strain, scale):
        ax2.plot(pts[:, 0], pts[:, 1], color="C0", lw=lw(t) * 0.6)
    ax2.set_title("deformed under uniaxial stress along x1 (scaled)")
    for ax in (ax1, ax2):
        ax.set_aspect("equal")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
    phi = np.linspace(0, 2 * np.pi, 361)
    ax3.plot(phi, directional_modulus(C, phi), color="C3")
    ax3.set_title("directional modulus E(phi)", pad=14)
    k = engineering_constants(C)
    fig.suptitle(title + f"   E1={k['E1']:.3g}  E2={k['E2']:.3g}  G12={k['G12']:.3g}  nu12={k['nu12']:.3g}")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
