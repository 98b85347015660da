"""Canonical CIFs, the CIF tokenizer and validity checks, on real structures."""

import warnings
from pathlib import Path

import pandas as pd
import pytest

from domains.crystals.canon_cache import canonicalize_records, dedup, load_canonical, reasons_table
from domains.crystals.canonical import canonicalize
from domains.crystals.composition import parse_composition
from domains.crystals.readers import read_inputs, structure_from_cif
from domains.crystals.symmetry import rebuild_symmetry
from domains.crystals.tokenizer import cif_tokenizer, normalise_spacegroup
from domains.crystals.validity import check_cif, smact_valid
from sciar.errors import DataError, SciarError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "crystals"
CORPUS = ROOT / "data" / "crystals" / "default.parquet"

warnings.simplefilter("ignore")


@pytest.fixture(scope="module")
def mp20():
    return pd.read_csv(SHARED / "mp_20" / "train.csv.gz", nrows=12)


def test_canonical_text_is_crystallm_style(mp20):
    c = canonicalize(mp20.cif[0])
    lines = c.cif.splitlines()
    assert lines[0] == f"data_{c.formula}"
    assert lines[1] == "loop_" and lines[2] == " _atom_type_symbol"
    sg_line = next(i for i, ln in enumerate(lines) if ln.startswith("_symmetry_space_group_name_H-M"))
    assert lines[sg_line - 1].split()[0] in c.formula  # the atom-type block sits right before the space group
    assert " 1 'x, y, z'" in lines and "  " not in c.cif and "#" not in c.cif and "\n\n" not in c.cif
    # every float has at most 4 decimals
    import re

    assert all(len(f.split(".")[1]) <= 4 for f in re.findall(r"\d+\.\d+", c.cif))
    # electronegativity order in the header, cell (not reduced) composition
    from pymatgen.core import Composition

    assert c.formula == Composition(c.formula).formula.replace(" ", "")


def test_canonical_cif_round_trips_to_the_same_structure(mp20):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    sm = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    for text in mp20.cif[:8]:
        c = canonicalize(text)
        rebuilt = structure_from_cif(c.cif)  # symmetry operations rebuilt from the space group
        assert "'x, y, z'" in rebuild_symmetry(c.cif)
        assert rebuilt.composition.reduced_formula == c.reduced_formula
        assert sm.fit(structure_from_cif(text, rebuild=False), rebuilt)


def test_bad_inputs_get_reasons_and_the_rest_goes_on(mp20, tmp_path):
    good = mp20.cif[0]
    partial = good.replace("  1.0\n", "  0.5\n", 1)
    assert partial != good
    absurd = good.replace("_cell_length_a   14.98903524", "_cell_length_a   2000.0")
    table = pd.DataFrame({"material_id": ["ok", "garbage", "partial", "absurd"],
                          "cif": [good, "this is not a CIF", partial, absurd]})
    out = canonicalize_records(read_inputs(table), workers=1, progress=False)
    reasons = dict(zip(out["id"], out["reason"]))
    assert pd.isna(reasons["ok"])
    assert reasons["garbage"].startswith("unparseable")
    assert reasons["partial"] in ("partial occupancy",) or reasons["partial"].startswith("unparseable")
    assert reasons["absurd"].startswith(("absurd cell", "overlapping"))
    assert len(reasons_table(out)) == 3


def test_malformed_cifs_are_named_in_words(mp20):
    good = mp20.cif[0]
    cases = {
        "this is not a CIF": "no data_ block",
        good[: len(good) - 30]: r"do not fill its \d+ columns",
        "\n".join(line for line in good.splitlines() if not line.startswith("_cell_length_b")): "_cell_length_b is missing",
        good.replace("_cell_length_a   14.98903524", "_cell_length_a   abc"): "_cell_length_a is not a number",
        good.split("loop_")[0]: "no atom sites",
    }
    for text, words in cases.items():
        with pytest.raises(DataError, match=words):
            structure_from_cif(text)


def test_unknown_element_and_folder_reading(tmp_path, mp20):
    (tmp_path / "a.cif").write_text(mp20.cif[1])
    bad = mp20.cif[1]
    first_el = bad.split("_atom_site_occupancy\n")[1].split()[0]
    (tmp_path / "b.cif").write_text(bad.replace(f"  {first_el}  ", "  Qq  "))
    (tmp_path / "c.cif").write_bytes(b"\x00\x01 binary junk")
    df = load_canonical(tmp_path, workers=1, progress=False, cache=False)
    assert len(df) == 3
    r = dict(zip(df["id"], df["reason"]))
    assert pd.isna(r["a"]) and isinstance(r["b"], str) and isinstance(r["c"], str)
    with pytest.raises(DataError):
        read_inputs(tmp_path / "missing")
    # pymatgen itself reads 'Qq' as a dummy species; the checks and the scorers' reader name it instead
    qq = (tmp_path / "b.cif").read_text()
    r = check_cif(qq)
    assert not r["valid"] and r["error"] == "unknown element 'Qq'" and not r["smact"]
    with pytest.raises(DataError, match="unknown element 'Qq'"):
        structure_from_cif(qq)


def test_dedup_keeps_lowest_volume_per_formula_unit():
    df = pd.DataFrame({"reduced_formula": ["NaCl", "NaCl", "NaCl", "KCl"], "sg_number": [225, 225, 221, 225],
                       "volume_per_fu": [45.0, 44.0, 50.0, 60.0], "reason": [None] * 4, "id": list("abcd")})
    out = dedup(df)
    assert sorted(out["id"]) == ["b", "c", "d"]


def test_tokenizer_round_trip_and_spacegroup_tokens(mp20):
    tok = cif_tokenizer()
    for text in mp20.cif[:6]:
        c = canonicalize(text).cif
        ids = tok.encode(c)
        assert tok.decode(ids) == c
        sg_id = tok.token_id(c.split("_symmetry_space_group_name_H-M ")[1].split("\n")[0], "spacegroup")
        assert ids.count(sg_id) == 1
    # the same letters outside the space-group line are not a space-group token
    assert tok.encode("Pm")[0] != tok.token_id("Pm", "spacegroup")
    with pytest.raises(DataError):
        tok.encode("data_Na1Cl1\n%%")


def test_round_trip_on_the_whole_shipped_corpus():
    tok = cif_tokenizer()
    df = pd.read_parquet(CORPUS)
    assert len(df) > 1000
    bad = [t for t in df["canonical"] if tok.decode(tok.encode(t)) != t]
    assert not bad


def test_compositions_and_spacegroups():
    assert parse_composition("Na2Cl2").formula == "Na2 Cl2"
    for bad in ("Xx2O3", "NaCl$", "", "na2cl2", "Na0.5Cl"):
        with pytest.raises(SciarError):
            parse_composition(bad)
    assert normalise_spacegroup("P 21/c") == "P2_1/c" == normalise_spacegroup("14")
    assert normalise_spacegroup("Fm-3m") == "Fm-3m"
    for bad in ("Q9", "231", "Fm-3x"):
        with pytest.raises(SciarError):
            normalise_spacegroup(bad)


def test_validity_of_real_and_broken_structures(mp20):
    c = canonicalize(mp20.cif[0]).cif
    r = check_cif(c)
    assert r["valid"], r["reasons"]
    # a formula that disagrees with the sites
    broken = c.replace("_chemical_formula_sum '", "_chemical_formula_sum 'H2 ", 1)
    r = check_cif(broken)
    assert not r["valid"] and "formula" in r["reasons"] and "multiplicity" in r["reasons"]
    # an absurd cell
    import re

    squashed = re.sub(r"_cell_length_a [\d.]+", "_cell_length_a 0.3000", c)
    r = check_cif(squashed)
    assert not r["valid"] and "sensible" in r["reasons"]
    # a generation cut off by the context inside the atom-site loop is named as such, not by pymatgen's message
    cut = c[: c.rindex("\n", 0, len(c) - 8) + 1] + " Na"
    r = check_cif(cut)
    assert not r["valid"] and "cut short" in r["error"], r["error"]
    assert smact_valid("NaCl") and smact_valid("Fe2O3") and not smact_valid("NaCl2")


def test_validity_of_cifs_from_other_generators(mp20):
    """CDVAE's splits (as pymatgen writes them: a comment first, P1 with every atom listed) are real
    structures and pass; a declared group is compared by number, and a wrong one still fails."""
    for text in mp20.cif[:6]:
        assert text.startswith("# generated using pymatgen") and "'P 1'" in text
        r = check_cif(text)
        assert r["formula"] and r["spacegroup"], r["reasons"]
    c = canonicalize(mp20.cif[0]).cif
    sg = c.split("_symmetry_space_group_name_H-M ")[1].split("\n")[0]
    spaced = c.replace(f"_symmetry_space_group_name_H-M {sg}", "_symmetry_space_group_name_H-M '" + " ".join(sg.replace("_", "")) + "'")
    assert check_cif(spaced)["spacegroup"], (sg, spaced[:300])
    wrong = c.replace(f"_symmetry_space_group_name_H-M {sg}", "_symmetry_space_group_name_H-M P-1")
    assert not check_cif(wrong)["spacegroup"]
    from domains.crystals.cif import unknown_element
    from pymatgen.core import Lattice, Structure

    assert unknown_element(Structure(Lattice.cubic(4), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])) is None


def test_absurd_cells_from_an_undertrained_model_are_judged_not_enumerated(mp20):
    """A 0.26 x 0.26 x 899 A cell made pymatgen's matcher ask for 27 GiB, and a thin 909 A cell
    kept CrystalNN busy for minutes; both are now answered from bounds (and still fail)."""
    from pymatgen.core import Lattice, Structure

    from domains.crystals.matching import matcher
    from pymatgen.analysis.local_env import CrystalNN

    from domains.crystals.validity import _capped, _SearchTooWide, bond_score

    sm = matcher()
    needle = Structure(Lattice.tetragonal(0.262, 899.1), ["Rb", "Hg"], [[0, 0, 0], [0.5, 0.5, 0.3]])
    assert not sm.fit(needle, needle) and sm.get_rms_dist(needle, needle) is None
    real = structure_from_cif(mp20.cif[0])
    assert sm.fit(real, real.copy()) and sm.get_rms_dist(real, real.copy())[0] < 1e-6
    thin = Structure(Lattice.monoclinic(46.083, 909.596, 0.9116, 51.6091), ["Hg", "Hg", "Rb", "Rb"],
                     [[0.3443, 0.5, 0.081], [0.3604, 0.0, 0.2928], [0.7978, 0.0006, 0.6926], [0.7978, 0.9994, 0.6926]])
    with pytest.raises(_SearchTooWide):  # CrystalNN would widen its search towards the cell's diagonal
        CrystalNN().get_nn_info(_capped(thin), 0)
    assert bond_score(thin) < 1
    # a real cell never reaches the cap
    capped = _capped(real)
    assert all(CrystalNN().get_nn_info(capped, i) for i in range(len(real)))


def test_canonicalize_command_takes_a_corpus_table(tmp_path, capsys):
    """A corpus table (canonical CIFs, no per-row reasons) goes through as it is, deduplicated or not."""
    from cli import main

    part = pd.read_parquet(CORPUS).head(6)
    part = pd.concat([part, part.head(2)], ignore_index=True)  # two repeated structures
    part.to_parquet(tmp_path / "part.parquet")
    for flag, rows in (("--dedup", 6), ("--no-dedup", 8)):
        out = tmp_path / f"canon{flag}.csv"
        assert main(["crystal", "canonicalize", str(tmp_path / "part.parquet"), "--out", str(out), flag]) == 0
        assert len(pd.read_csv(out)) == rows
        assert pd.read_csv(tmp_path / f"canon{flag}_reasons.csv").empty
    capsys.readouterr()
