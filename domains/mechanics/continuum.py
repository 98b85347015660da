"""A plane-stress continuum check of the beam model (scikit-fem): where do Euler-Bernoulli walls stop holding?

The walls are filled in as solid (the points within t/2 of a centre line, as for ``rho``) on a
rectangular periodic supercell, meshed by square pixels (bilinear quads) of the solid, and solved
for the periodic fluctuation under each unit macroscopic strain, with plane-stress elasticity
(E = 1, Poisson's ratio ``nu_solid``). Pixels make the slanted walls' edges staircases, so the
result is reported at two resolutions; short, stubby walls (t/l above about 0.1) make the joints'
finite size and shear matter, which the frame model leaves out.
"""

from __future__ import annotations

import numpy as np

from sciar.errors import SciarError

from domains.mechanics.lattices import Lattice


def rectangular_supercell(lattice: Lattice) -> tuple[float, float]:
    """Width and height of a rectangular period of the lattice (a1 horizontal; a2 vertical or half-way across)."""
    a1, a2 = lattice.a1, lattice.a2
    if abs(a1[1]) > 1e-12:
        raise SciarError("continuum check needs a1 along x1")
    if abs(a2[0]) < 1e-12:
        return a1[0], a2[1]
    if abs(2 * a2[0] - a1[0]) < 1e-12:
        return a1[0], 2 * a2[1]
    raise SciarError("this lattice has no rectangular supercell of one or two cells")


def solid_pixels(lattice: Lattice, pixel: float):
    """Grid size (nx, ny), the rectangle's size, and which pixels of the supercell are solid."""
    lx, ly = rectangular_supercell(lattice)
    nx, ny = int(round(lx / pixel)), int(round(ly / pixel))
    cx, cy = np.meshgrid((np.arange(nx) + 0.5) * lx / nx, (np.arange(ny) + 0.5) * ly / ny, indexing="ij")
    pts = np.stack([cx.ravel(), cy.ravel()], axis=1)
    start, vec = lattice.nodes[lattice.edges[:, 0]], lattice.edge_vectors()
    inside = np.zeros(len(pts), bool)
    for i in range(-2, 4):
        for j in range(-2, 5):
            off = i * lattice.a1 + j * lattice.a2
            for p0, d, t in zip(start + off, vec, lattice.thickness):
                s = np.clip((pts - p0) @ d / (d @ d), 0, 1)
                inside |= np.sum((pts - p0 - s[:, None] * d) ** 2, axis=1) <= (t / 2) ** 2
    return nx, ny, lx, ly, inside.reshape(nx, ny)


def continuum_stiffness(lattice: Lattice, pixel: float, nu_solid: float = 0.3) -> np.ndarray:
    """The 3x3 effective stiffness (engineering shear, per unit depth) of the solid walls in plane stress."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve
    from skfem import Basis, ElementQuad1, ElementVector, MeshQuad, asm
    from skfem.models.elasticity import lame_parameters, linear_elasticity

    nx, ny, lx, ly, solid = solid_pixels(lattice, pixel)
    gi, gj = np.nonzero(solid)
    corners = np.stack([(gi, gj), (gi + 1, gj), (gi + 1, gj + 1), (gi, gj + 1)])  # (4, 2, m) counterclockwise
    grid_id = corners[:, 0] * (ny + 1) + corners[:, 1]
    used, t = np.unique(grid_id, return_inverse=True)
    t = t.reshape(4, -1)
    ui, uj = used // (ny + 1), used % (ny + 1)
    mesh = MeshQuad(np.stack([ui * lx / nx, uj * ly / ny]).astype(float), t)
    basis = Basis(mesh, ElementVector(ElementQuad1()))
    lam, mu = lame_parameters(1.0, nu_solid)
    k = asm(linear_elasticity(2 * lam * mu / (lam + 2 * mu), mu), basis)  # plane-stress lambda
    # periodic fluctuation: the node at (nx, j) is the node at (0, j), and (i, ny) the one at (i, 0)
    reps, col = np.unique((ui % nx) * ny + (uj % ny), return_inverse=True)
    dofs = basis.nodal_dofs  # (2, n_nodes)
    n_free = 2 * len(reps)
    rows = np.concatenate([dofs[0], dofs[1]])
    cols = np.concatenate([2 * col, 2 * col + 1])
    p = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(basis.N, n_free))
    x, y = mesh.p
    affine = np.zeros((basis.N, 3))  # displacement of each dof under unit e11, e22, g12
    affine[dofs[0], 0], affine[dofs[1], 1] = x, y
    affine[dofs[0], 2], affine[dofs[1], 2] = y / 2, x / 2
    kpp = (p.T @ k @ p).tocsr()
    rhs = -(p.T @ (k @ affine))
    keep = np.arange(2, n_free)  # pin one node's translation
    w = np.zeros((n_free, 3))
    w[keep] = spsolve(kpp[keep][:, keep].tocsc(), rhs[keep])
    u = affine + p @ w
    c = affine.T @ (k @ u) / (lx * ly)
    return (c + c.T) / 2
