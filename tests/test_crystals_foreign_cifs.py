"""`sciar crystal evaluate` on correct crystals written by other programs: each check's outcome as worked out
by hand for every file (True passed, False failed, None does not apply), not merely that all pass."""

import numpy as np

from domains.crystals.tokenizer import normalise_spacegroup
from domains.crystals.validity import check_cif, evaluate_files, rates

# ICSD style: a database code as the block name, the formula per formula unit with Z = 4, uncertainties,
# charges in the type symbols, loop columns in the database's order, the pre-1983 symbol 'F m 3 m'
NACL_ICSD = """#(C) hand written in the style of the ICSD
data_18189-ICSD
_database_code_ICSD 18189
_chemical_name_systematic 'Sodium chloride'
_chemical_formula_structural 'Na Cl'
_chemical_formula_sum 'Cl1 Na1'
_cell_length_a 5.6402(1)
_cell_length_b 5.6402(1)
_cell_length_c 5.6402(1)
_cell_angle_alpha 90.
_cell_angle_beta 90.
_cell_angle_gamma 90.
_cell_volume 179.43
_cell_formula_units_Z 4
_symmetry_space_group_name_H-M 'F m 3 m'
_symmetry_Int_Tables_number 225
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_symmetry_multiplicity
_atom_site_Wyckoff_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_B_iso_or_equiv
_atom_site_occupancy
Na1 Na1+ 4 a 0 0 0 1.63(2) 1.
Cl1 Cl1- 4 b 0.5 0.5 0.5 1.26(2) 1.
"""

# COD style: a numeric block name, one formula (per formula unit, Z = 8), no multiplicities, a setting suffix
SI_COD = """data_9008566
loop_
_publ_author_name
'Wyckoff, R. W. G.'
_chemical_formula_sum 'Si'
_space_group_IT_number 227
_symmetry_space_group_name_Hall '-F 4vw 2vw 3'
_symmetry_space_group_name_H-M 'F d -3 m :1'
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_cell_length_a 5.43070
_cell_length_b 5.43070
_cell_length_c 5.43070
_cell_formula_units_Z 8
loop_
_atom_site_label
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Si 0.00000 0.00000 0.00000
"""

# symmetry from the symbol alone (no operations listed), the cell's full content as the formula sum
CU = """data_Cu
_chemical_formula_sum 'Cu4'
_cell_length_a 3.6149
_cell_length_b 3.6149
_cell_length_c 3.6149
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'F m -3 m'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Cu1 Cu 0 0 0 1
"""

# a disordered alloy: Cu and Au share the fcc site half and half
CUAU_DISORDERED = """data_CuAu
_chemical_formula_sum 'Cu2 Au2'
_cell_length_a 3.87
_cell_length_b 3.87
_cell_length_c 3.87
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'F m -3 m'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_symmetry_multiplicity
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Cu1 Cu 4 0 0 0 0.5
Au1 Au 4 0 0 0 0.5
"""

# rock salt KCl in P1 with Cartesian coordinates (a cubic cell: x = a * fractional x)
KCL_CARTESIAN = "data_KCl\n_chemical_formula_sum 'K4 Cl4'\n" + "".join(
    f"_cell_length_{k} 6.293\n" for k in "abc") + "".join(f"_cell_angle_{k} 90\n" for k in ("alpha", "beta", "gamma")) + \
    "_symmetry_space_group_name_H-M 'P 1'\nloop_\n_atom_site_label\n_atom_site_type_symbol\n" \
    "_atom_site_Cartn_x\n_atom_site_Cartn_y\n_atom_site_Cartn_z\n" + "".join(
        f"{el}{i} {el} {6.293 * x:.4f} {6.293 * y:.4f} {6.293 * z:.4f}\n"
        for i, (x, y, z) in enumerate([(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)])
        for el, (dx, dy, dz) in (("K", (0, 0, 0)), ("Cl", (0.5, 0, 0)))
        for x, y, z in [((x + dx) % 1, (y + dy) % 1, (z + dz) % 1)])


def _checks(r) -> dict:
    return {k: r[k] for k in ("formula", "multiplicity", "sites", "min_distance", "spacegroup", "bonds")}


def test_old_and_new_spellings_of_space_groups():
    assert normalise_spacegroup("F m 3 m") == normalise_spacegroup("Fm-3m") == normalise_spacegroup("225") == "Fm-3m"
    assert normalise_spacegroup("Ia3d") == "Ia-3d" and normalise_spacegroup("P m 3") == "Pm-3"
    assert normalise_spacegroup("F d -3 m :1") == "Fd-3m" and normalise_spacegroup("P 42/m n m") == "P4_2/mnm"
    assert normalise_spacegroup("P 21 3") == "P2_13"  # a digit before the 3: no bar to restore


def test_database_style_cifs_pass_every_check_that_applies():
    r = check_cif(NACL_ICSD)
    # formula: 'Na Cl' and 'Cl1 Na1' (the block name is a database code); multiplicity 4 + 4 = Z (4) x NaCl;
    # 'F m 3 m' is Fm-3m (225), as spglib finds
    assert _checks(r) == dict(formula=True, multiplicity=True, sites=True, min_distance=True, spacegroup=True, bonds=True)
    assert r["valid"] and r["kind"] == "ordered" and r["detected_spacegroup"] == "Fm-3m"
    r = check_cif(SI_COD)
    # one formula only, no multiplicity column: those two checks do not apply; Si8 = Z (8) x Si
    assert _checks(r) == dict(formula=None, multiplicity=None, sites=True, min_distance=True, spacegroup=True, bonds=True)
    assert r["valid"] and r["detected_spacegroup"] == "Fd-3m"
    r = check_cif(CU)
    assert _checks(r) == dict(formula=True, multiplicity=None, sites=True, min_distance=True, spacegroup=True, bonds=True)
    assert r["valid"]


def test_wrong_files_still_fail_the_checks_they_break():
    r = check_cif(NACL_ICSD.replace("'Cl1 Na1'", "'Cl1 Na2'"))
    assert r["formula"] is False and r["multiplicity"] is False and r["sites"] is False and not r["valid"]
    # the eight atoms of rock salt listed in P1, declared primitive cubic (221): spglib finds Fm-3m (225)
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    kcl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.293), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    p1 = str(CifWriter(kcl))
    assert check_cif(p1)["spacegroup"] is True
    wrong = p1.replace("_symmetry_space_group_name_H-M   'P 1'", "_symmetry_space_group_name_H-M   'P m -3 m'")
    r = check_cif(wrong.replace("_symmetry_Int_Tables_number   1\n", "_symmetry_Int_Tables_number   221\n"))
    assert r["spacegroup"] is False and not r["valid"]
    r = check_cif(NACL_ICSD.replace("'F m 3 m'", "'Q 9'").replace("_symmetry_Int_Tables_number 225\n", ""))
    assert r["spacegroup"] is False


def test_disordered_and_cartesian_files_are_read_as_what_they_are():
    r = check_cif(CUAU_DISORDERED)
    assert r["kind"] == "partial occupancy"
    # multiplicity 4 x 0.5 per element = Cu2 Au2; no bond, distance or space-group check of shared sites
    assert _checks(r) == dict(formula=True, multiplicity=True, sites=True, min_distance=None, spacegroup=None, bonds=None)
    assert r["valid"]
    r = check_cif(KCL_CARTESIAN)
    assert r["kind"] == "Cartesian coordinates" and r["error"] is None
    assert r["sites"] and r["min_distance"] and r["bonds"] and r["detected_spacegroup"] == "Fm-3m"
    assert r["spacegroup"] is True  # declared P1: no symmetry claimed


def test_evaluate_a_folder_written_by_pymatgen_ase_and_by_hand(tmp_path):
    from ase.io import write
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.cif import CifWriter

    structures = {
        "Au": Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.078), ["Au"], [[0, 0, 0]]),
        "TiO2": Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                          [[0, 0, 0], [0.3048, 0.3048, 0]]),
        "Al2O3": Structure.from_spacegroup("R-3c", Lattice.hexagonal(4.759, 12.991), ["Al", "O"],
                                           [[0, 0, 0.3523], [0.3064, 0, 0.25]]),
        "C": Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(2.464, 6.711), ["C", "C"],
                                       [[0, 0, 0.25], [1 / 3, 2 / 3, 0.25]]),
        "Mg": Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(3.209, 5.211), ["Mg"], [[1 / 3, 2 / 3, 0.25]]),
        "LiCoO2": Structure.from_spacegroup("R-3m", Lattice.hexagonal(2.816, 14.05), ["Li", "Co", "O"],
                                            [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.2396]]),
    }
    for name, s in structures.items():
        CifWriter(s, symprec=0.1).write_file(tmp_path / f"pymatgen_{name}.cif")
        write(tmp_path / f"ase_{name}.cif", AseAtomsAdaptor.get_atoms(s))
    (tmp_path / "hand").mkdir()
    (tmp_path / "hand" / "NaCl_icsd.cif").write_text(NACL_ICSD)
    (tmp_path / "hand" / "two_blocks.cif").write_text(SI_COD + "\n" + CU)
    df = evaluate_files([tmp_path], progress=False)
    assert len(df) == 2 * len(structures) + 3 and df["valid"].all(), df[~df["valid"]][["file", "reasons"]]
    ase = df[df["file"].str.contains("ase_")]
    # ase names every block 'image0' and writes P1 with multiplicities of 1.0: the formula check reads its
    # two formula fields, the space-group check the declared P1
    assert ase["formula"].eq(True).all() and ase["multiplicity"].eq(True).all() and ase["spacegroup"].eq(True).all()
    blocks = df[df["file"].str.contains("two_blocks")].sort_values("file")
    assert blocks["kind"].tolist() == ["ordered, data block 1 of 2", "ordered, data block 2 of 2"]
    r = rates(df)
    assert r["valid_rate"] == 1.0 and r["formula_rate"] == 1.0
    # the COD block has one formula and no multiplicities: those checks apply to every other file
    assert r["formula_on"] == len(df) - 1 and r["multiplicity_on"] == len(df) - 2 and r["count"] == len(df)
    assert not np.isnan(r["bonds_rate"])


def test_one_atom_primitive_cells_have_bonds_to_their_own_images(tmp_path):
    """ase's bulk() writes fcc copper and bcc iron as one-atom primitive cells: every neighbour is the atom's own
    periodic image, which CrystaLLM's bond rule leaves out (no bond at all, score 0). Counted here: 12 bonds of
    a/sqrt(2) (fcc) and 8 of a*sqrt(3)/2 (bcc), the closed-form nearest-neighbour distances."""
    from ase.build import bulk
    from ase.io import write
    from pymatgen.core import Structure

    from domains.crystals.validity import crystalnn_bonds

    for name, atoms, bonds, length in (("Cu", bulk("Cu", "fcc", a=3.615), 12, 3.615 / np.sqrt(2)),
                                       ("Fe", bulk("Fe", "bcc", a=2.867), 8, 2.867 * np.sqrt(3) / 2)):
        assert len(atoms) == 1
        write(tmp_path / f"{name}.cif", atoms)
        found = crystalnn_bonds(Structure.from_file(tmp_path / f"{name}.cif"))
        assert len(found) == bonds
        assert np.allclose([b[3] for b in found], length, atol=1e-4)
        r = check_cif((tmp_path / f"{name}.cif").read_text())
        assert r["bonds"] is True and r["valid"], r["reasons"]
