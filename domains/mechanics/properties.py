"""Effective properties of a design: the oracle's answer (engineering constants, density, directional modulus)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from domains.mechanics.frame import solve
from domains.mechanics.lattices import Lattice, build

MODULI = ("E1", "E2", "G12")
PROPERTIES = ("E1", "E2", "G12", "nu12", "nu21", "rho")


@dataclass
class Properties:
    E1: float
    E2: float
    G12: float
    nu12: float
    nu21: float
    rho: float
    C: list  # 3x3, Voigt with engineering shear, per unit depth, wall material E = 1

    def to_dict(self) -> dict:
        return asdict(self)


def engineering_constants(C) -> dict:
    """E1, E2, G12, nu12 (= -e2/e1 under sigma1), nu21 from a 3x3 stiffness (compliance S = C^-1)."""
    s = np.linalg.inv(np.asarray(C, float))
    if abs(s[0, 1]) < 1e-12 * np.sqrt(s[0, 0] * s[1, 1]):  # round-off where there is no coupling (square)
        s[0, 1] = 0.0
    return {"E1": 1 / s[0, 0], "E2": 1 / s[1, 1], "G12": 1 / s[2, 2],
            "nu12": -s[0, 1] / s[0, 0] + 0.0, "nu21": -s[0, 1] / s[1, 1] + 0.0}  # + 0.0: no -0.0


def directional_modulus(C, phi) -> np.ndarray:
    """Young's modulus along directions at angles ``phi`` (radians) to x1: 1 / (a^T S a), a = (c^2, s^2, cs)."""
    s = np.linalg.inv(np.asarray(C, float))
    c, n = np.cos(phi), np.sin(phi)
    a = np.stack([c * c, n * n, c * n])
    return 1 / np.einsum("in,ij,jn->n", a, s, a)


def lattice_properties(lattice: Lattice) -> Properties:
    C = solve(lattice).C
    return Properties(**{k: float(v) for k, v in engineering_constants(C).items()},
                      rho=lattice.relative_density(), C=C.tolist())


def simulate(family: str, params: dict) -> Properties:
    """The oracle: a family's design (parameters checked) solved and homogenised."""
    return lattice_properties(build(family, params))
