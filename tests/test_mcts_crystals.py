"""MCTS structure search on crystals: evaluation and rewards, the search with the shipped model, CLI, batch."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from cli import main
from domains.crystals.canonical import canonical_cif
from domains.crystals.search import evaluate_cifs, search_composition, search_row_fn, write_search
from domains.crystals.energy import CGCNNScorer
from sciar.batch import run_batch
from sciar.errors import DataError, SciarError


def nacl(a=5.64):
    return canonical_cif(Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))


@pytest.fixture(scope="module")
def cgcnn():
    return CGCNNScorer()


def test_evaluate_cifs_rewards_as_crystallm(cgcnn, monkeypatch):
    good, squeezed, garbage = nacl(), nacl(3.6), "data_Na4Cl4\n_cell_length_a 5.\n"
    ev_good, ev_sq, ev_bad = evaluate_cifs([good, squeezed, garbage], cgcnn)
    assert ev_good.valid and ev_good.score == pytest.approx(-2.11, abs=0.05)
    assert ev_good.info["formula"] == "Na4Cl4" and ev_good.info["spacegroup"] == "Fm-3m"
    # only the bond check fails, with bond score 0: reward -(1 - 0)
    assert not ev_sq.valid and ev_sq.info["reasons"] == "bonds" and ev_sq.invalid_reward == -1.0
    assert not ev_bad.valid and ev_bad.invalid_reward == -1.0 and ev_bad.error
    # a partial bond score earns a milder penalty; other failures get -1 whatever the bond score
    import domains.crystals.validity as validity

    monkeypatch.setattr(validity, "bond_score", lambda s: 0.75)
    (ev,) = evaluate_cifs([good], cgcnn)
    assert not ev.valid and ev.info["reasons"] == "bonds" and ev.invalid_reward == pytest.approx(-0.25)
    real = validity.check_cif

    def fake(text, bonds=True):
        r = real(text, bonds)
        r.update(valid=False, reasons="spacegroup")
        return r

    monkeypatch.setattr(validity, "check_cif", fake)
    (ev,) = evaluate_cifs([good], cgcnn)
    assert ev.invalid_reward == -1.0


def test_evaluate_cifs_scorer_failures_are_kept():
    def raising(structs):
        raise RuntimeError("model server down")

    (ev,) = evaluate_cifs([nacl()], raising)
    assert ev.valid and math.isnan(ev.score) and "model server down" in ev.error  # the search turns it invalid
    (ev,) = evaluate_cifs([nacl()], lambda s: [float("nan")])
    assert "NaN" in ev.error


@pytest.fixture(scope="module")
def small_search():
    return search_composition("Na4Cl4", simulations=12, batch=6, seed=0, progress=False)


def test_search_table_and_rewards(small_search):
    cs = small_search
    t = cs.table
    assert cs.result.simulations == 12 and len(t) == 12
    assert sorted(t["simulation"]) == list(range(1, 13))
    assert (t["formula"] == "Na4Cl4").all()
    v = t["valid"].astype(bool)
    assert (t.loc[v, "reward"].between(0, 1)).all() and t.loc[v, "energy"].notna().all()
    assert (t.loc[~v, "reward"] <= 0).all() and t.loc[~v, "energy"].isna().all()
    assert (t.loc[~v, "error"].str.len() > 0).all()
    assert v.any(), "the shipped model found no valid Na4Cl4 structure in 12 simulations"
    best = cs.best(3)
    assert best["energy"].is_monotonic_increasing and len(best) >= 1


def test_search_is_repeatable(small_search):
    again = search_composition("Na4Cl4", simulations=12, batch=6, seed=0, progress=False)
    assert again.table["cif"].tolist() == small_search.table["cif"].tolist()


def test_search_with_failing_scorer_goes_on():
    calls = []

    def scorer(structs):
        calls.append(len(structs))
        raise ValueError("no energy today")

    cs = search_composition("Na4Cl4", simulations=8, batch=4, seed=1, scorer=scorer, progress=False)
    t = cs.table
    assert len(t) == 8 and not t["valid"].any()
    checked = t[t["checks_valid"].astype(bool)]
    assert len(checked) >= 1 and calls
    assert checked["error"].str.contains("no energy today").all() and (checked["reward"] == -1.0).all()


def test_search_bad_input():
    with pytest.raises(SciarError, match="unknown element"):
        search_composition("Xx2O3", simulations=4)
    with pytest.raises(SciarError, match="budget is zero"):
        search_composition("Na4Cl4", simulations=0)
    with pytest.raises(SciarError, match="too large"):
        search_composition("Na300Cl300", simulations=4)
    with pytest.raises(SciarError, match="unknown scorer"):
        search_composition("Na4Cl4", simulations=4, scorer="alignn")


def test_cli_search_writes_everything(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["crystal", "search", "--composition", "Na4Cl4", "--simulations", "6", "--batch", "6", "--seed", "0",
               "--out", str(out)])
    assert rc == 0
    assert (out / "results.csv").is_file() and (out / "results.parquet").is_file() and (out / "rewards.png").stat().st_size > 1000
    t = pd.read_parquet(out / "results.parquet")
    assert len(t) == 6 and {"energy", "reward", "valid", "error", "simulation", "cif"} <= set(t.columns)
    s = json.loads((out / "summary.json").read_text())
    assert s["simulations"] == 6 and s["sequences"] == 6
    for f in s["best_files"]:
        st = Structure.from_file(out / f)  # full symmetry operations: the cell holds every atom
        assert st.composition.reduced_formula == "NaCl"
    assert "simulations" in capsys.readouterr().out


def test_cli_search_interrupted_writes_what_it_found_and_exits_130(tmp_path, capsys, monkeypatch):
    import domains.crystals.search as cs_mod

    real = cs_mod.search_composition

    def cut_short(*a, **kw):  # as if Ctrl-C came after the first batch
        cs = real(*a, **kw)
        cs.result.interrupted = True
        return cs

    monkeypatch.setattr(cs_mod, "search_composition", cut_short)
    out = tmp_path / "run"
    rc = main(["crystal", "search", "--composition", "Na4Cl4", "--simulations", "4", "--batch", "4", "--out", str(out)])
    assert rc == 130
    assert json.loads((out / "summary.json").read_text())["interrupted"] is True
    assert len(pd.read_csv(out / "results.csv")) == 4
    assert "interrupted after 4 of 4 simulations" in capsys.readouterr().err


@pytest.mark.parametrize("args,msg", [
    (["--composition", "Na4Xx4"], "unknown element"),
    (["--composition", "Na4Cl4", "--simulations", "0"], "budget is zero"),
    (["--composition", "Na4Cl4", "--calls", "-2"], "cannot be negative"),
    (["--composition", "Na4Cl4", "--spacegroup", "Q99"], "unknown space group"),
])
def test_cli_search_bad_input_exits_2(tmp_path, capsys, args, msg):
    rc = main(["crystal", "search", *args, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_cli_score_table(tmp_path, capsys):
    (tmp_path / "NaCl.cif").write_text(nacl())
    (tmp_path / "broken.cif").write_text("data_x\nnot a cif\n")
    rc = main(["crystal", "score", str(tmp_path), "--out", str(tmp_path / "e.csv")])
    assert rc == 0
    df = pd.read_csv(tmp_path / "e.csv")
    row = df[df["file"].str.endswith("NaCl.cif")].iloc[0]
    assert row["formation_energy_per_atom"] == pytest.approx(-2.11, abs=0.05)
    bad = df[df["file"].str.endswith("broken.cif")].iloc[0]
    assert math.isnan(bad["formation_energy_per_atom"]) and "unparseable" in bad["error"]
    # gzipped files and every block of a multi-block file are scored; a corrupt gzip is a row's error
    import gzip

    (tmp_path / "g.cif.gz").write_bytes(gzip.compress(nacl().encode()))
    (tmp_path / "two.cif").write_text(nacl() + "\n" + nacl().replace("data_", "data_copy_", 1))
    (tmp_path / "bad.cif.gz").write_bytes(b"not gzip")
    assert main(["crystal", "score", str(tmp_path), "--out", str(tmp_path / "e2.csv")]) == 0
    df2 = pd.read_csv(tmp_path / "e2.csv").set_index("file")
    names = {Path(f).name: f for f in df2.index}
    for name in ("g.cif.gz", "two.cif#0", "two.cif#1"):
        assert df2.loc[names[name], "formation_energy_per_atom"] == pytest.approx(row["formation_energy_per_atom"])
    assert "unreadable" in df2.loc[names["bad.cif.gz"], "error"]
    assert main(["crystal", "score", str(tmp_path / "missing.cif")]) == 2
    capsys.readouterr()
    # every file unusable: the table is still written, and the exit code says nothing was scored
    rc = main(["crystal", "score", str(tmp_path / "broken.cif"), "--out", str(tmp_path / "b.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "no CIF could be scored" in err and err.count("error:") == 1, err
    assert "unparseable" in pd.read_csv(tmp_path / "b.csv")["error"].iloc[0]


def test_cli_score_refuses_what_no_energy_model_can_answer(tmp_path):
    Structure(Lattice.cubic(4.2), [{"Fe": 0.5, "Co": 0.5}, "O"], [[0, 0, 0], [0.5] * 3]).to(filename=str(tmp_path / "fco.cif"))
    Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]]).to(filename=str(tmp_path / "close.cif"))
    Structure(Lattice.hexagonal(700.4, 126.0), ["Rb", "Hg"], [[0, 0, 0], [0.3, 0.6, 0.5]]).to(filename=str(tmp_path / "sparse.cif"))
    (tmp_path / "NaCl.cif").write_text(nacl())
    assert main(["crystal", "score", str(tmp_path), "--out", str(tmp_path / "e.csv")]) == 0
    df = pd.read_csv(tmp_path / "e.csv").set_index("file")
    df.index = [f.rsplit("/", 1)[-1] for f in df.index]
    assert df.loc["fco.cif", "error"] == "partial occupancy" and df.loc["fco.cif", "formula"] == "Fe0.5Co0.5O1"
    assert df.loc["close.cif", "error"].startswith("overlapping atoms (0.06 A")  # CGCNN said -1.3 eV/atom
    assert "A^3 per atom" in df.loc["sparse.cif", "error"]  # an undertrained model's cell; CGCNN said 0.21 eV/atom
    assert df[["formation_energy_per_atom"]].isna().sum().item() == 3


def test_batch_rows_in_search_mode(tmp_path):
    rows = pd.DataFrame({"composition": ["Na4Cl4", "Qq2", "Na4Cl4"], "simulations": [4, 4, 4], "count": [None, None, 1]})
    df = run_batch(rows, search_row_fn(width=5, top=2), output=tmp_path / "out.parquet", progress=False)
    ok = df[df["composition"] == "Na4Cl4"]
    assert (ok["status"] == "ok").all() and (ok["search_simulations"] == 4).all()
    assert ok.groupby("row_id").size().tolist() == [2, 1]  # top=2, then the row's own count of 1
    bad = df[df["composition"] == "Qq2"]
    assert (bad["status"] == "error").all() and "unknown element" in bad["error"].iloc[0]


def test_batch_row_count_reads_n_or_count():
    from domains.crystals.sampling import row_count

    assert row_count({}, 5) == 5 and row_count({"n": float("nan"), "count": ""}, 5) == 5
    assert row_count({"count": 3}, 5) == 3 and row_count({"n": "2"}, 5) == 2 and row_count({"n": 4, "count": 4.0}, 1) == 4
    for row, msg in [({"n": 2, "count": 3}, "disagree"), ({"count": 0}, "whole number"), ({"n": "two"}, "whole number"),
                     ({"count": 1.5}, "whole number")]:
        with pytest.raises(DataError, match=msg):
            row_count(row, 1)


def test_cli_relax_moves_a_strained_cell_back(tmp_path):
    import numpy as np

    prim = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    s = Structure(Lattice(5.64 * 1.04 * prim), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # 4% too large
    s.to(filename=str(tmp_path / "NaCl.cif"))
    out = tmp_path / "relaxed"
    assert main(["crystal", "relax", str(tmp_path / "NaCl.cif"), "--out", str(out)]) == 0
    df = pd.read_csv(out / "relax.csv")
    assert df["formation_energy_per_atom"].iloc[0] == pytest.approx(-2.09, abs=0.15)
    r = Structure.from_file(df["relaxed_file"].iloc[0])
    # CHGNet's NaCl: a near 5.6-5.7 A (conventional), so the primitive cell shrinks
    assert r.volume / len(r) < s.volume / len(s) - 1.0
    # the blocks of a two-block file and a file of the same name in another folder each get their own output
    text = (tmp_path / "NaCl.cif").read_text()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "NaCl.cif").write_text(text + "\n" + text.replace("data_", "data_again_", 1))
    assert main(["crystal", "relax", str(tmp_path / "NaCl.cif"), str(tmp_path / "sub"), "--out", str(out)]) == 0
    names = sorted(Path(f).name for f in pd.read_csv(out / "relax.csv")["relaxed_file"])
    assert names == ["NaCl_0_relaxed.cif", "NaCl_1_relaxed.cif", "NaCl_relaxed.cif"]


def test_batch_command_mixes_sample_and_search_rows(tmp_path):
    table = tmp_path / "prompts.csv"
    pd.DataFrame({"composition": ["NaCl", "K2O2", "Xx2"], "mode": ["sample", "search", "search"]}).to_csv(table, index=False)
    out = tmp_path / "out.csv"
    assert main(["crystal", "batch", "-i", str(table), "-o", str(out), "-n", "2", "--simulations", "8"]) == 0
    df = pd.read_csv(out)
    assert (df[df.composition == "NaCl"].status == "ok").sum() == 2
    search = df[df.composition == "K2O2"]
    assert len(search) == 1 and search.status.iloc[0] == "ok" and search["mode"].iloc[0] == "search"
    assert search["search_simulations"].iloc[0] >= 1
    bad = df[df.composition == "Xx2"]
    assert bad.status.iloc[0] == "error" and "Xx" in bad.error.iloc[0]
    assert main(["crystal", "batch", "-i", str(table), "-o", str(tmp_path / "o2.csv"), "--mode", "dream"]) == 2


def _strained_nacl():
    import numpy as np

    prim = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    return Structure(Lattice(5.64 * 1.04 * prim), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # 4% too large


def test_relaxed_scorer_rates_chgnets_relaxed_cell_once_per_structure(cgcnn):
    from chgnet.model import CHGNet, StructOptimizer

    from domains.crystals.energy import RelaxedScorer

    s = _strained_nacl()
    rs = RelaxedScorer(cgcnn, fmax=0.1, steps=60)
    e = rs([s, s.copy()])
    assert rs.relaxations == 1 and rs.fresh == [True, False] and e[0] == e[1]
    # reference: CHGNet's own optimizer with the same settings, then CGCNN on its cell
    ref = StructOptimizer(model=CHGNet.load(use_device="cpu", verbose=False), use_device="cpu").relax(
        s, fmax=0.1, steps=60, verbose=False)["final_structure"]
    assert e[0] == pytest.approx(cgcnn([ref])[0], abs=1e-3)
    assert rs.relaxed[0].volume < s.volume - 1.0  # the cell shrank back toward a = 5.6-5.7 A
    assert rs([s])[0] == e[0] and rs.fresh == [False] and rs.relaxations == 1  # cached
    bad = rs([None])
    assert math.isnan(bad[0]) and rs.errors[0].startswith("relax")


def test_relaxed_scorer_with_a_matcher_relaxes_each_distinct_structure_once(cgcnn):
    """A 2%-strained copy of a structure relaxed before gets its result at no call; the CsCl-type polymorph of
    the same formula is relaxed on its own (pymatgen's default StructureMatcher says which pairs are the same)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from domains.crystals.energy import RelaxedScorer, duplicate_matcher

    s = _strained_nacl()
    near = s.copy()
    near.scale_lattice(s.volume * 1.02 ** 3)
    b2 = Structure(Lattice.cubic(2.9), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    ref = StructureMatcher()
    assert ref.fit(s, near) and not ref.fit(s, b2)
    rs = RelaxedScorer(cgcnn, fmax=0.1, steps=60, match=duplicate_matcher())
    e = rs([s])
    e2 = rs([near, b2])
    assert rs.fresh == [False, True] and rs.relaxations == 2 and rs.matched == 1
    assert e2[0] == e[0] and e2[1] != e[0]
    plain = RelaxedScorer(cgcnn, fmax=0.1, steps=60)
    plain([s, near])
    assert plain.relaxations == 2  # without a matcher only exact repeats are free


def test_search_with_relaxed_rewards_counts_scorer_calls(tmp_path):
    cs = search_composition("Na4Cl4", simulations=6, calls=2, relax=True, seed=0, progress=False)
    t = cs.table
    assert cs.result.calls >= 2 and t["cost"].sum() == cs.result.calls
    assert t.loc[t["cost"] > 0, "valid"].all()  # only valid, new structures spend calls
    v = t[t["valid"].astype(bool)]
    assert v["relaxed_cif"].map(lambda x: isinstance(x, str)).all()
    best = cs.best(1).iloc[0]
    relaxed = Structure.from_str(cs.output_cif(best), fmt="cif")
    # the reward is CGCNN's energy of the relaxed cell (the canonical text rounds coordinates)
    assert best["energy"] == pytest.approx(CGCNNScorer()([relaxed])[0], abs=0.02)
    s = write_search(cs, tmp_path / "run")
    assert s["scorer_calls"] == cs.result.calls
    written = Structure.from_file(tmp_path / "run" / s["best_files"][0])
    assert written.volume == pytest.approx(relaxed.volume, rel=1e-3)
