"""Periodic frame solver: a unit cell of Euler-Bernoulli beams homogenised to its 3x3 in-plane stiffness.

Each wall is a frame element (axial stiffness EA/l, bending stiffness EI/l^3) with E = 1, a unit
depth out of plane (A = t, I = t^3/12) and rigid joints. The displacement of a node is the affine
part ``eps . x`` plus a periodic fluctuation ``w``; node rotations are periodic. For a wall from
node i to node j shifted by ``R``, the ends' displacements are ``w_i`` and ``w_j + eps . R`` (the
affine part ``eps . x_i`` common to both ends is a rigid translation). Minimising the energy over
the fluctuations for a macroscopic strain ``eps = (e11, e22, g12)`` (engineering shear) gives

    C = (K_ee - K_ew K_ww^-1 K_we) / A_cell,     sigma = C eps,

the effective stiffness per unit depth. Node 0's translation is pinned (the rigid modes); any
other zero-energy mode means the cell is disconnected, and the solver says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sciar.errors import SciarError

from domains.mechanics.lattices import Lattice


def element_stiffness(length, c, s, t, bending: bool = True) -> np.ndarray:
    """Global 6x6 stiffness of frame elements (u, v, phi at both ends), batched over walls: (m, 6, 6)."""
    m = len(length)
    ea = t / length
    ei = t**3 / 12 if bending else np.zeros_like(t)
    k = np.zeros((m, 6, 6))
    k[:, 0, 0] = k[:, 3, 3] = ea
    k[:, 0, 3] = k[:, 3, 0] = -ea
    b1, b2, b3 = 12 * ei / length**3, 6 * ei / length**2, ei / length
    for (i, j), v in {(1, 1): b1, (4, 4): b1, (1, 4): -b1, (1, 2): b2, (1, 5): b2, (2, 4): -b2, (4, 5): -b2,
                      (2, 2): 4 * b3, (5, 5): 4 * b3, (2, 5): 2 * b3}.items():
        k[:, i, j] = k[:, j, i] = v
    r = np.zeros((m, 6, 6))
    for o in (0, 3):
        r[:, o, o] = r[:, o + 1, o + 1] = c
        r[:, o, o + 1], r[:, o + 1, o] = s, -s
        r[:, o + 2, o + 2] = 1
    return np.einsum("mji,mjk,mkl->mil", r, k, r)


@dataclass
class FrameSolution:
    C: np.ndarray  # (3, 3) effective stiffness, Voigt with engineering shear
    fluctuation: np.ndarray  # (3 n, 3): node fluctuations (u, v, phi) per unit macroscopic strain component

    def node_displacements(self, lattice: Lattice, eps) -> np.ndarray:
        """Total node displacements (n, 3) under macroscopic strain ``eps`` (affine + fluctuation)."""
        eps = np.asarray(eps, float)
        w = (self.fluctuation @ eps).reshape(-1, 3)
        e = np.array([[eps[0], eps[2] / 2], [eps[2] / 2, eps[1]]])
        w[:, :2] += lattice.nodes @ e.T
        return w


def solve(lattice: Lattice, bending: bool = True) -> FrameSolution:
    """Homogenise a unit cell; ``bending=False`` makes it a pin-jointed truss (rotations dropped)."""
    n, m = len(lattice.nodes), len(lattice.edges)
    vec = lattice.edge_vectors()
    length = np.linalg.norm(vec, axis=1)
    if np.any(length < 1e-9):
        raise SciarError(f"{lattice.family or 'lattice'} has a wall of zero length")
    ke = element_stiffness(length, vec[:, 0] / length, vec[:, 1] / length, lattice.thickness, bending)
    # element end dofs as rows of the fluctuation vector (3 n) and of the strain (3)
    idx = np.concatenate([3 * lattice.edges[:, :1] + np.arange(3), 3 * lattice.edges[:, 1:] + np.arange(3)], axis=1)
    b = np.zeros((m, 6, 3))  # end j's translation gains eps . R
    b[:, 3, 0], b[:, 3, 2] = vec[:, 0], vec[:, 1] / 2
    b[:, 4, 1], b[:, 4, 2] = vec[:, 1], vec[:, 0] / 2
    kww = np.zeros((3 * n, 3 * n))
    np.add.at(kww, (idx[:, :, None], idx[:, None, :]), ke)
    kwe = np.zeros((3 * n, 3))
    np.add.at(kwe, idx, np.einsum("mij,mjk->mik", ke, b))
    kee = np.einsum("mji,mjk,mkl->il", b, ke, b)
    keep = np.ones(3 * n, bool)
    keep[:2] = False  # node 0's translation
    if not bending:
        keep[2::3] = False
    w = np.zeros((3 * n, 3))
    if keep.any() and bending:
        w[keep] = _solve_fluctuations(kww[np.ix_(keep, keep)], kwe[keep], lattice.family or "lattice")
    elif keep.any():  # a pin-jointed truss may have mechanisms (kagome's twist); they carry no strain energy
        w[keep] = -np.linalg.pinv(kww[np.ix_(keep, keep)], rcond=1e-10, hermitian=True) @ kwe[keep]
    c = (kee + kwe.T @ w) / lattice.area
    return FrameSolution(C=(c + c.T) / 2, fluctuation=w)


def _solve_fluctuations(kr, rhs, name):
    d = np.sqrt(np.diag(kr))
    if np.any(d <= 0):
        raise SciarError(f"{name} has a node joined to no wall: the lattice is disconnected")
    ev = np.linalg.eigvalsh(kr / d[:, None] / d[None, :])
    if ev[0] < 1e-12 * ev[-1]:
        raise SciarError(f"{name} is disconnected or a mechanism (a zero-energy mode in its cell)")
    return -np.linalg.solve(kr, rhs)
