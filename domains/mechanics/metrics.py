"""Scores for mechanics answers: forward errors of moduli and Poisson's ratios, and inverse designs verified by the oracle."""

from __future__ import annotations

import numpy as np

from sciar.errors import SciarError

from domains.mechanics.grammar import Prompt
from domains.mechanics.properties import MODULI, simulate

DESIGN_TOLERANCE = 0.05  # relative, on every requested modulus; absolute on a requested Poisson's ratio


def mare(true, pred) -> float:
    """Mean absolute relative error over all entries (moduli or stresses, not logs)."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    return float(np.mean(np.abs(pred - true) / np.abs(true)))


def r2_log(true, pred) -> float:
    """R^2 of base-10 logarithms of magnitudes, averaged over columns."""
    from sklearn.metrics import r2_score

    return float(r2_score(np.log10(np.abs(np.asarray(true, float))), np.log10(np.abs(np.asarray(pred, float)))))


def design_meets(request: Prompt, props: dict) -> bool:
    """Whether properties fulfil a Design request: each '=' within tolerance, each bound kept."""
    for name, op, want in request.items:
        got = props[name]
        if op == "<=" and not got <= want:
            return False
        if op == ">=" and not got >= want:
            return False
        if op == "=":
            err = abs(got / want - 1) if name in MODULI or name == "rho" else abs(got - want)
            if not err <= DESIGN_TOLERANCE:
                return False
    return True


def verify_design(request: Prompt, params: dict) -> tuple[bool, dict | None]:
    """Solve a proposed design and check it against the request; (False, None) if the oracle refuses it."""
    try:
        props = simulate(request.subject, params).to_dict()
    except SciarError:
        return False, None
    return design_meets(request, props), props
