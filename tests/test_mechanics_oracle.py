"""The frame oracle against closed forms (Gibson-Ashby with the axial correction, stretching limits,
square lattice), symmetry, an independent density estimate, Ajdari et al.'s hierarchical result, bad input."""

import math

import numpy as np
import pytest

from domains.mechanics.frame import solve
from domains.mechanics.lattices import Lattice, build
from domains.mechanics.properties import directional_modulus, engineering_constants, simulate
from sciar.errors import SciarError


def gibson_ashby(theta, h, t):
    """Bending-only (Gibson & Ashby 1997) and axially corrected (Masters & Evans 1996) honeycomb moduli."""
    th = math.radians(theta)
    c, s = math.cos(th), math.sin(th)
    e1 = t**3 * c / ((h + s) * s * s)
    e2 = t**3 * (h + s) / c**3
    nu12 = c * c / ((h + s) * s)
    g12 = t**3 * (h + s) / (h * h * (1 + 2 * h) * c)
    corr1 = 1 + t * t / math.tan(th) ** 2
    corr2 = 1 + (math.tan(th) ** 2 + 2 * h / c**2) * t * t
    return dict(E1=e1, E2=e2, nu12=nu12, G12=g12,
                E1_axial=e1 / corr1, E2_axial=e2 / corr2, nu12_axial=nu12 * (1 - t * t) / corr1)


@pytest.mark.parametrize("family,theta,h,t", [("honeycomb", 30, 1, 0.05), ("honeycomb", 15, 0.5, 0.15),
                                               ("honeycomb", 60, 2, 0.005), ("honeycomb", 45, 1.3, 0.1),
                                               ("reentrant", -30, 1.5, 0.05), ("reentrant", -10, 0.6, 0.02)])
def test_honeycomb_matches_gibson_ashby_with_axial_correction(family, theta, h, t):
    p = simulate(family, dict(theta=theta, h=h, t=t))
    ga = gibson_ashby(theta, h, t)
    assert p.E1 == pytest.approx(ga["E1_axial"], rel=1e-6)
    assert p.E2 == pytest.approx(ga["E2_axial"], rel=1e-6)
    assert p.nu12 == pytest.approx(ga["nu12_axial"], rel=1e-6)
    assert p.nu21 == pytest.approx(p.nu12 * p.E2 / p.E1, rel=1e-9)  # reciprocity


@pytest.mark.parametrize("theta,h", [(30, 1), (50, 1.7), (-25, 1.4)])
def test_honeycomb_bending_limit(theta, h):
    """As t -> 0 all four constants approach the bending-only forms, with an error of order t^2."""
    for t in (0.02, 0.005):
        p = simulate("honeycomb" if theta > 0 else "reentrant", dict(theta=theta, h=h, t=t))
        ga = gibson_ashby(theta, h, t)
        for k in ("E1", "E2", "G12", "nu12"):
            assert abs(getattr(p, k) / ga[k] - 1) < 10 * t * t, (k, t)


def test_regular_honeycomb_is_isotropic():
    for t in (0.01, 0.1):
        p = simulate("honeycomb", dict(theta=30, h=1, t=t))
        assert p.E1 == pytest.approx(p.E2, rel=1e-9)
        assert p.G12 == pytest.approx(p.E1 / (2 * (1 + p.nu12)), rel=1e-9)
        e = directional_modulus(np.array(p.C), np.linspace(0, np.pi, 13))
        assert np.allclose(e, p.E1, rtol=1e-9)


@pytest.mark.parametrize("family", ["triangular", "kagome"])
def test_stretching_lattices(family):
    """Pin-jointed: E = rho_sum / 3, nu = 1/3 exactly; rigid joints add bending of order t^2."""
    for t in (0.005, 0.05):
        lat = build(family, dict(t=t))
        truss = engineering_constants(solve(lat, bending=False).C)
        assert truss["E1"] == pytest.approx(lat.rho_sum / 3, rel=1e-10)
        assert truss["E2"] == pytest.approx(lat.rho_sum / 3, rel=1e-10)
        assert truss["nu12"] == pytest.approx(1 / 3, rel=1e-10)
        frame = engineering_constants(solve(lat).C)
        assert abs(frame["E1"] / (lat.rho_sum / 3) - 1) < t * t
        assert frame["G12"] == pytest.approx(frame["E1"] / (2 * (1 + frame["nu12"])), rel=1e-9)


def test_square_lattice():
    t = 0.03
    lat = build("square", dict(t=t))
    p = simulate("square", dict(t=t))
    assert p.E1 == pytest.approx(lat.rho_sum / 2, rel=1e-10)
    assert p.E2 == pytest.approx(lat.rho_sum / 2, rel=1e-10)
    assert abs(p.nu12) < 1e-12
    assert p.G12 == pytest.approx(t**3 / 2, rel=1e-9)  # walls bent in double curvature (Wang & McDowell 2004)
    assert p.rho == pytest.approx(2 * t - t * t, rel=1e-9)  # strips of width t, the crossings counted once


def _raster_density(lat: Lattice, n=1000) -> float:
    """Independent estimate: the share of points of a fine grid over one cell within t/2 of a wall (3x3 tiles)."""
    u, v = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n)
    pts = u.reshape(-1, 1) * lat.a1 + v.reshape(-1, 1) * lat.a2
    inside = np.zeros(len(pts), bool)
    start, vec = lat.nodes[lat.edges[:, 0]], lat.edge_vectors()
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            for p0, d, t in zip(start + i * lat.a1 + j * lat.a2, vec, lat.thickness):
                s = np.clip((pts - p0) @ d / (d @ d), 0, 1)
                inside |= np.linalg.norm(pts - p0 - s[:, None] * d, axis=1) <= t / 2
    return inside.mean()


@pytest.mark.parametrize("family,params", [("honeycomb", dict(theta=30, h=1, t=0.1)), ("kagome", dict(t=0.15))])
def test_density_counts_overlaps_once(family, params):
    lat = build(family, params)
    rho = lat.relative_density()
    assert rho == pytest.approx(_raster_density(lat), rel=5e-3)
    assert rho < lat.rho_sum


def test_hierarchical_honeycomb_ajdari():
    """Ajdari et al. (2012): at equal mass the first-order hierarchical honeycomb is up to about twice as
    stiff as the regular one, the optimum near gamma = 0.3; hexagonal symmetry keeps it isotropic."""
    ratios = {}
    for g in (0.1, 0.2, 0.25, 0.3, 0.35, 0.4):
        lat = build("hierarchical", dict(gamma=g, t=0.01))
        e = engineering_constants(solve(lat).C)
        t_regular = lat.rho_sum * math.sqrt(3) / 2  # regular honeycomb: rho_sum = 2 t / sqrt(3)
        ratios[g] = e["E1"] / simulate("honeycomb", dict(theta=30, h=1, t=t_regular)).E1
        assert e["E1"] == pytest.approx(e["E2"], rel=1e-9)
    best = max(ratios, key=ratios.get)
    assert 0.25 <= best <= 0.35 and 1.8 < ratios[best] < 2.1, ratios


def test_bad_designs_are_one_line_errors():
    with pytest.raises(SciarError, match="unknown lattice family 'hexagon'"):
        simulate("hexagon", dict(t=0.1))
    with pytest.raises(SciarError, match=r"theta=70 is outside its range \[15, 60\]"):
        simulate("honeycomb", dict(theta=70, t=0.1))
    with pytest.raises(SciarError, match="needs t"):
        simulate("square", {})
    with pytest.raises(SciarError, match="has no parameter 'gamma'"):
        simulate("square", dict(t=0.1, gamma=0.2))
    with pytest.raises(SciarError, match="must be a number"):
        simulate("square", dict(t="thin"))
    with pytest.raises(SciarError, match="reentrant walls touch"):
        simulate("reentrant", dict(theta=-45, h=1, t=0.05))
    lat = build("kagome", dict(t=0.05))
    lat.edges, lat.shifts, lat.thickness = lat.edges[:3], lat.shifts[:3], lat.thickness[:3]  # one triangle, not joined
    with pytest.raises(SciarError, match="disconnected"):
        solve(lat)


def test_continuum_square_lattice_agrees_with_the_bar():
    """scikit-fem plane-stress continuum of the square lattice's solid walls: under sigma1 the walls are bars,
    E1 = t (plus the joints' few percent); shear bends walls whose joints are rigid blocks, so G12 exceeds t^3/2."""
    from domains.mechanics.continuum import continuum_stiffness

    t = 0.1
    c = engineering_constants(continuum_stiffness(build("square", dict(t=t)), pixel=t / 8))
    assert 1.0 < c["E1"] / t < 1.04
    assert c["E2"] == pytest.approx(c["E1"], rel=1e-9)
    assert 1.05 < c["G12"] / (t**3 / 2) < 1.3
    assert 0 < c["nu12"] < 0.06
