"""Crystal language model: training windows, constrained generation, retrieval, benchmark, CLI and bad input."""

import json
import re
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from cli import main
from domains.crystals.canonical import canonicalize
from domains.crystals.generate import CrystalGenerator, make_prompt, prompts_for
from domains.crystals.lm import make_source, train_crystal_lm
from domains.crystals.readers import structure_from_cif
from domains.crystals.tokenizer import cif_tokenizer
from domains.crystals.validity import check_cif, is_formula_consistent, is_multiplicity_consistent
from sciar.errors import SciarError
from sciar.model import LanguageModel, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "crystals"
SHIPPED = ROOT / "data" / "checkpoints" / "crystal-small"

warnings.simplefilter("ignore")


@pytest.fixture(scope="module")
def perov():
    df = pd.read_csv(SHARED / "perov_5" / "train.csv.gz", nrows=40)
    df["canonical"] = [canonicalize(c).cif for c in df["cif"]]
    return df


@pytest.fixture(scope="module")
def tiny_ck(perov, tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "tiny"
    train_crystal_lm(perov[["canonical"]], out, "tiny", steps=3, batch_size=2, progress=False)
    return out


def test_fine_tune_extends_the_context_by_rotary_rescaling(perov, tiny_ck, tmp_path):
    from sciar.checkpoint import load_language_model
    from safetensors.torch import load_file

    out = tmp_path / "long"
    base = json.loads((tiny_ck / "config.json").read_text())["model"]
    train_crystal_lm(perov[["canonical"]], out, "tiny", steps=1, batch_size=1, lr=1e-9, progress=False,
                     init=str(tiny_ck), block_size=2 * base["block_size"])
    model, _, ck = load_language_model(out)
    hd = base["n_embd"] // base["n_head"]
    assert model.cfg.block_size == 2 * base["block_size"]
    assert model.cfg.rope_base == pytest.approx(base.get("rope_base", 10000.0) * 2 ** (hd / (hd - 2)))
    assert ck.domain["init"]["checkpoint"] == tiny_ck.name and ck.domain["init"]["block_size"] == base["block_size"]
    # the fine-tune started from the checkpoint's weights (one step at a negligible learning rate moves them little)
    a, b = load_file(tiny_ck / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    with pytest.raises(SciarError, match="below"):
        train_crystal_lm(perov[["canonical"]], tmp_path / "short", "tiny", steps=1, batch_size=1, progress=False,
                         init=str(tiny_ck), block_size=base["block_size"] // 2)


def test_windows_start_at_cif_boundaries(perov):
    tok = cif_tokenizer()
    src, info = make_source(perov, tok, block_size=512, val_fraction=0.0)
    ids, starts = src.splits["train"]
    data_id = tok.token_id("data_", "keyword")
    assert info["n_train_cifs"] == len(perov) and len(starts) == len(perov)
    assert all(int(ids[s]) == data_id for s in starts)
    b = src.get_batch("train", 4, torch.Generator().manual_seed(0))
    assert (b["idx"][:, 0] == data_id).all()
    # CIFs are separated by a blank line
    text = tok.decode(ids[: starts[1]].tolist())
    assert text.endswith("\n\n") and text.count("data_") == 1


def test_training_writes_a_self_describing_checkpoint(tiny_ck):
    meta = json.loads((tiny_ck / "domain.json").read_text())
    assert meta["domain"] == "crystal" and meta["data_fingerprint"] and meta["preset"] == "tiny"
    assert (tiny_ck / "model.safetensors").exists() and (tiny_ck / "train_log.csv").exists()


def test_train_command_reports_what_it_left_out(perov, tmp_path):
    d = tmp_path / "cifs"
    d.mkdir()
    for i, c in enumerate(perov["cif"][:6]):
        (d / f"s{i}.cif").write_text(c)
    (d / "s0_copy.cif").write_text(perov["cif"][0])
    (d / "cut.cif").write_text(perov["cif"][1][:-40])
    out = tmp_path / "ck"
    rc = main(["crystal", "train", "--data", str(d), "--out", str(out), "--steps", "2", "--batch-size", "2",
               "--workers", "1"])
    assert rc == 0
    meta = json.loads((out / "domain.json").read_text())
    assert meta["n_train_cifs"] == 6 and meta["n_unusable"] == 1 and meta["n_duplicates"] == 1
    bad = pd.read_csv(out / "unusable_inputs.csv")
    assert bad["id"].tolist() == ["cut"] and "cut short" in bad["reason"].iloc[0]


def test_constrained_sampling_is_consistent_even_untrained():
    tok = cif_tokenizer()
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=tok.vocab_size, block_size=1024, n_layer=1, n_head=2, n_embd=32))
    gen = CrystalGenerator.from_model(model, tok)
    # (bond fitting is left out: an untrained model's cells take it long, and its own tests cover it)
    samples = gen.sample([make_prompt("Ba1Ti1O3"), make_prompt("Na4Cl4", "Fm-3m")], n=3, seed=1, fit=False)
    assert len(samples) == 6 and all(s.complete for s in samples)
    for s in samples:
        assert is_formula_consistent(s.text) and is_multiplicity_consistent(s.text)
        # parses, symmetry rebuilt from the space group; the grammar does not tie a triclinic cell's angles,
        # so an untrained model's choice may be degenerate (a zero volume): those cannot be read
        if float(re.search(r"_cell_volume ([\d.]+)", s.text).group(1)) > 0:
            structure_from_cif(s.text)
    for s in samples[3:]:
        structure_from_cif(s.text)  # a cubic cell is tied whole: it always parses
        assert "_symmetry_space_group_name_H-M Fm-3m\n" in s.text
        a, b, c = re.findall(r"_cell_length_[abc] ([\d.]+)", s.text)
        assert a == b == c  # cubic lattice kept consistent
        assert re.findall(r"_cell_angle_\w+ ([\d.]+)", s.text) == ["90.0000"] * 3
    # unconstrained decoding of an untrained model is rarely even consistent
    free = gen.sample([make_prompt("Ba1Ti1O3")], n=2, seed=1, constrained=False, max_new_tokens=200)
    assert not any(is_multiplicity_consistent(s.text) for s in free)


def test_spread_sampling_draws_the_likeliest_space_groups_and_weighs_them_back():
    from domains.crystals.generate import apportion

    assert apportion([0.5, 0.3, 0.2], 7) == [4, 2, 1] and sum(apportion([1e-9, 1.0], 3)) == 3
    tok = cif_tokenizer()
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=tok.vocab_size, block_size=1024, n_layer=1, n_head=2, n_embd=32))
    gen = CrystalGenerator.from_model(model, tok)
    p = make_prompt("Ba1Ti1O3")
    probs = gen.spacegroup_probs(p, top_k=10)
    assert len(probs) == 10 and abs(sum(probs.values()) - 1) < 1e-5
    assert "Fm-3m" not in probs  # no Wyckoff position of Fm-3m holds one Ba: the grammar's rule
    flat = gen.sample_spread(p, 6, spread=1e6, seed=1)  # near-uniform: six groups, one draw each
    groups = [re.search(r"_symmetry_space_group_name_H-M (\S+)", s.text).group(1) for s in flat]
    assert len(set(groups)) == 6 and set(groups) <= set(probs)
    for s, g in zip(flat, groups):
        assert s.complete and is_formula_consistent(s.text) and s.prompt == p.text
        assert s.weight == pytest.approx(probs[g] * 6)  # P(g) n / draws(g): back to the model's own odds
    plain = gen.sample_spread(p, 6, spread=0, seed=1)  # 0: plain draws
    assert all(s.weight == 1.0 for s in plain)
    with pytest.raises(SciarError):
        gen.sample_spread(make_prompt("Ba200Ti200O600"), 4, seed=1)  # too large for the context


def test_site_clash_keeps_a_new_site_a_bond_length_away_from_the_placed_ones():
    from domains.crystals.grammar import SiteClash
    from domains.crystals.validity import expected_bond

    clash = SiteClash("Fm-3m", 5.64, 5.64, 5.64, 90, 90, 90)
    assert clash.z_digits("Cl", (0.0, 0.0), "0.") is None  # nothing placed yet: no restriction
    clash.place("Na", (0.0, 0.0, 0.0))  # its orbit: the face-centred Na sublattice
    d = SiteClash.CLOSEST * expected_bond("Na", "Cl")  # ionic radii: 0.72 x 2.83 A
    # Cl on the cell's edge (0, 0, z) must stay d from Na at z = 0 and z = 1: 0.362 <= z <= 0.638
    assert clash.z_digits("Cl", (0.0, 0.0), "0.") == ["3", "4", "5", "6"]
    second = clash.z_digits("Cl", (0.0, 0.0), "0.3")
    assert second == [str(k) for k in range(10) if 5.64 * (0.3 + k / 100 + 0.005) >= d]
    assert clash.z_digits("Cl", (0.0, 0.0), "0.36") is None  # later digits are free


def test_reduced_formula_samples_several_z():
    zs = {p.composition.num_atoms / 2 for p in prompts_for("NaCl")}
    assert {1, 2, 4}.issubset(zs)
    assert len(prompts_for("Na4Cl4")) == 1 and prompts_for("NaCl", z=4)[0].formula == "Na4Cl4"
    assert len(prompts_for("Sr1Ti1O3")) == 1 and len(prompts_for("SrTiO3")) > 1
    with pytest.raises(SciarError):
        make_prompt("Na1Cl1", "Fm-3m")  # Fm-3m has no 1-fold Wyckoff position


def test_retrieval_finds_a_known_structure(perov):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from domains.crystals.retrieval import RetrievalIndex

    idx = RetrievalIndex.from_table(perov[["material_id", "cif"]].rename(columns={"material_id": "id"}))
    target = structure_from_cif(perov["cif"][5], rebuild=False)
    cands = idx.predict(target.composition, n=5)
    assert cands and len(cands) <= 5
    sm = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    assert any(sm.fit(target, c.structure) for c in cands)


def test_retrieval_matches_the_prompt_to_canonical_cells():
    """A template stored in its primitive cell is found by the atom count of its conventional cell."""
    import pandas as pd
    from pymatgen.core import Composition, Lattice, Structure

    from domains.crystals.canon_cache import canonicalize_records
    from domains.crystals.readers import frame_records
    from domains.crystals.retrieval import RetrievalIndex

    diamond = Structure.from_spacegroup("Fd-3m", Lattice.cubic(3.57), ["C"], [[0, 0, 0]]).get_primitive_structure()
    chain = Structure(Lattice.orthorhombic(2.5, 4.0, 6.0), ["C"] * 4, [[0, 0, 0], [0.5, 0.1, 0.2], [0, 0.5, 0.5], [0.5, 0.6, 0.7]])
    assert len(diamond) == 2
    table = pd.DataFrame({"material_id": ["diamond", "other"], "cif": [diamond.to(fmt="cif"), chain.to(fmt="cif")]})
    canon = canonicalize_records(frame_records(table), workers=1, progress=False)
    idx = RetrievalIndex.from_table(canon)
    assert idx.n_atoms[idx.ids.index("diamond")] == 8  # the conventional cell, not the stored 2
    assert idx.candidates(Composition("C8"))[0].template == "diamond"
    assert RetrievalIndex.from_table(frame_records(table)).candidates(Composition("C8"))[0].template == "other"


def test_benchmark_json(tmp_path, perov, tiny_ck):
    train = tmp_path / "train.csv"
    perov[["material_id", "cif", "formula"]].to_csv(train, index=False)
    test = tmp_path / "test.csv"
    perov[["material_id", "cif", "formula"]].head(3).to_csv(test, index=False)
    out = tmp_path / "r.json"
    rc = main(["crystal", "benchmark", "--test", str(test), "--train", str(train), "--strategy", "retrieval",
               "-n", "3", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["strategy"] == "retrieval" and r["count"] == 3 and r["n"] == 3
    assert r["match_rate"]["3"] == 1.0  # the test structures are in the index
    assert 0 <= r["rmse"]["3"] < 0.05
    rc = main(["crystal", "benchmark", "--test", str(test), "--train", str(train), "--strategy", "hybrid",
               "--checkpoint", str(tiny_ck), "-n", "2", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["strategy"] == "hybrid" and set(r["match_rate"]) == {"1", "2"} and 0 <= r["valid_rate"] <= 1
    # the draws and their spread over space groups are options of benchmarks/crystals.py, which passes them so
    from domains.crystals.benchmark import run_benchmarks

    kw = dict(checkpoint=str(tiny_ck), n=2, progress=False)
    lm, samples = run_benchmarks(test, train, ["lm", "samples"], draws=5, **kw)
    assert (lm["strategy"], samples["strategy"], lm["draws"], samples["draws"]) == ("lm", "samples", 5, 5)
    with pytest.raises(SciarError):
        run_benchmarks(test, train, ["lm"], draws=2, **{**kw, "n": 4})  # fewer draws than candidates
    assert main(["crystal", "benchmark", "--test", str(test), "--train", str(train), "--strategy", "retrieval",
                 "--limit", "0"]) == 2  # was an internal KeyError
    with pytest.raises(SciarError):
        run_benchmarks(test, train, ["lm", "samples"], spread=2, **kw)  # samples are plain draws
    lm, hybrid = run_benchmarks(test, train, ["lm", "hybrid"], draws=4, spread=2, **kw)
    assert lm["spread"] == hybrid["spread"] == 2 and lm["count"] == hybrid["count"] == 3


def test_ranked_samples_puts_the_most_often_drawn_structure_first():
    from pymatgen.core import Lattice, Structure

    from domains.crystals.benchmark import Cand, matcher, ranked_samples

    rock = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cscl = Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    drawn = [(cscl, True), (rock, True), (rock.copy(), False), (rock.copy(), True), (cscl.copy(), True),
             (rock.copy(), True)]
    cands = [Cand(st, None, -1.0, "lm", csp_ok=ok) for st, ok in drawn]
    ranked = ranked_samples(cands, 5, matcher())
    assert [c.extra["drawn"] for c in ranked] == [3, 2]  # the filtered-out sample does not count
    assert ranked[0].structure is rock and ranked[1].structure is cscl
    assert len(ranked_samples(cands, 1, matcher())) == 1
    # spread draws carry weights: the structure with more of the model's probability comes first
    for c, w in zip(cands, [3.0, 0.5, 0.5, 0.5, 3.0, 0.5]):
        c.extra["weight"] = w
    ranked = ranked_samples(cands, 5, matcher())
    assert ranked[0].structure is cscl and [c.extra["weight"] for c in ranked] == [6.0, 1.5]
    from domains.crystals.sampling import structure_groups

    assert structure_groups([cscl, rock, None, rock.copy()]) == [(2, 1), (1, 2), (None, 0), (1, 2)]


def test_cli_sample_evaluate_batch_and_bad_input(tmp_path, tiny_ck, capsys):
    ck = str(SHIPPED if SHIPPED.exists() else tiny_ck)
    out = tmp_path / "s"
    assert main(["crystal", "sample", "--composition", "Sr1Ti1O3", "-n", "3", "--checkpoint", ck, "--out", str(out),
                 "--seed", "0", "--no-bonds", "--strategy", "lm"]) == 0
    cifs = sorted(out.glob("*.cif"))
    assert len(cifs) == 3 and (out / "summary.csv").exists()
    text = cifs[0].read_text()
    from pymatgen.symmetry.groups import SpaceGroup

    sg = re.search(r"_symmetry_space_group_name_H-M (\S+)", text).group(1)
    ops = re.findall(r"^ \d+ '[^']+'$", text, flags=re.M)
    assert len(ops) == len(SpaceGroup(sg).symmetry_ops)  # full symmetry operations written
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 3 and set(summary["formula"]) == {"Sr1Ti1O3"}
    sizes = summary.dropna(subset=["group"]).groupby("group")["drawn"].agg(["first", "size"])
    assert (sizes["first"] == sizes["size"]).all() and sizes["size"].is_monotonic_decreasing
    (out / "junk.cif").write_text("not a cif at all")
    assert main(["crystal", "evaluate", str(out), "--no-bonds"]) == 0
    report = capsys.readouterr().out
    assert "valid_rate" in report and "bonds_rate" not in report  # not checked, so not reported as 0
    table = tmp_path / "junk.csv"
    assert main(["crystal", "evaluate", str(out / "junk.cif"), str(cifs[0]), "--no-bonds", "--out", str(table)]) == 0
    report_of_mixed = capsys.readouterr().out
    ev = pd.read_csv(table)
    assert list(ev["file"].map(lambda f: Path(f).name)) == ["junk.cif", cifs[0].name] and not ev["valid"].iloc[0]
    assert "not checked          1 (first:" in report_of_mixed and "junk.cif" in report_of_mixed
    # nothing readable: say why and exit 2 (it printed rates of 0 and exited 0), the table still written
    table.unlink()
    assert main(["crystal", "evaluate", str(out / "junk.cif"), "--no-bonds", "--out", str(table)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert err.startswith("error: no CIF could be checked (1 failed; first:") and "junk.cif" in err
    assert table.exists()
    for args, msg in [
        (["--composition", "Xx2O3"], "unknown element"),
        (["--composition", "Am2O3"], "beyond Pu"),  # a real element the vocabulary lacks: was a tokenizer message
        (["--composition", "NaCl$"], "malformed formula"),
        (["--composition", "NaCl", "--spacegroup", "Q9"], "unknown space group"),
        (["--composition", "H1Li1Be1B1C1N1O1F1Na1Mg1Al1Si1P1S1Cl1K1Ca1Sc1Ti1V1Cr1Mn1Fe1"], "too large"),
    ]:
        rc = main(["crystal", "sample", *args, "--checkpoint", ck, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and err.count("\n") == 1, err
    assert main(["crystal", "evaluate", str(tmp_path / "missing")]) == 2
    assert main(["crystal", "sample", "--composition", "NaCl", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    prompts = tmp_path / "p.csv"
    pd.DataFrame({"composition": ["Mg1O1", "Qq2", "Li2O1"], "n": [2, 1, 1]}).to_csv(prompts, index=False)
    res = tmp_path / "r.parquet"
    assert main(["crystal", "batch", "--input", str(prompts), "--output", str(res), "--checkpoint", ck,
                 "--energy", "none"]) == 0
    df = pd.read_parquet(res)
    assert (df["status"] == "ok").sum() == 3 and (df["status"] == "error").sum() == 1
    assert "unknown element" in df.loc[df["status"] == "error", "error"].iloc[0]
    assert {"valid", "reasons", "cif", "spacegroup"}.issubset(df.columns)
    # the field's own column names: Formula, Space Group, Count
    pd.DataFrame({"Formula": ["Mg4O4"], "Space Group": ["Fm-3m"], "Count": [2]}).to_csv(prompts, index=False)
    assert main(["crystal", "batch", "--input", str(prompts), "--output", str(tmp_path / "r2.csv"), "--checkpoint", ck,
                 "--energy", "none"]) == 0
    df = pd.read_csv(tmp_path / "r2.csv")
    assert (df["status"] == "ok").sum() == 2 and (df["composition"] == "Mg4O4").all()
    assert all("_symmetry_space_group_name_H-M Fm-3m" in c for c in df["cif"])


def test_snapping_moves_perturbed_sites_back_onto_their_wyckoff_positions(perov):
    import random

    from pymatgen.analysis.structure_matcher import StructureMatcher

    from domains.crystals.wyckoff import snap_to_wyckoff

    sm = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    rng = random.Random(0)
    fixed = 0
    for text in perov["canonical"][:6]:
        def jiggle(m):
            vals = [float(v) + rng.uniform(-0.03, 0.03) for v in m.group(2, 3, 4)]
            return m.group(1) + " ".join(f"{v % 1.0:.4f}" for v in vals) + m.group(5)
        noisy = re.sub(r"^( [A-Z][a-z]? \S+ \d+ )([\d.]+) ([\d.]+) ([\d.]+)( 1\.0)$", jiggle, text, flags=re.M)
        assert noisy != text
        snapped, moved = snap_to_wyckoff(noisy)
        r = check_cif(snapped, bonds=False)
        assert r["sites"] and r["multiplicity"], r["reasons"]
        assert sm.fit(structure_from_cif(text), structure_from_cif(snapped))
        fixed += moved > 0
    assert fixed >= 3  # most perturbed CIFs needed moving


def test_sample_with_retrieval_and_hybrid_strategies(tmp_path, perov, tiny_ck):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    templates = tmp_path / "templates.csv"
    perov[["material_id", "cif"]].to_csv(templates, index=False)
    target = structure_from_cif(perov["cif"][7], rebuild=False)
    formula = canonicalize(target).formula
    out = tmp_path / "ret"
    rc = main(["crystal", "sample", "-c", formula, "-n", "3", "--strategy", "retrieval", "--templates", str(templates),
               "--out", str(out), "--no-bonds"])
    assert rc == 0
    df = pd.read_csv(out / "summary.csv")
    assert 1 <= len(df) <= 3 and df["source"].str.startswith("template ").all()
    sm = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    first = structure_from_cif((out / df["file"][0]).read_text(), rebuild=False)
    assert sm.fit(first, target)  # the composition's own structure is among the templates: it ranks first
    rc = main(["crystal", "sample", "-c", formula, "-n", "2", "--strategy", "hybrid", "--templates", str(templates),
               "--checkpoint", str(tiny_ck), "--out", str(tmp_path / "hyb"), "--no-bonds", "--seed", "0"])
    assert rc == 0 and len(pd.read_csv(tmp_path / "hyb" / "summary.csv")) == 2
    assert main(["crystal", "sample", "-c", formula, "--strategy", "nearest", "--out", str(tmp_path / "x")]) == 2


def test_retrieval_keeps_the_cell_a_cell_composition_asks_for(tmp_path, perov):
    """A 10-atom template of the same reduced formula (a perovskite doubled along a, one A atom moved off its
    site so that it is not the 5-atom cell again) is offered for the reduced formula (any formula-unit count) and
    not for the 5-atom cell composition the model would be prompted with."""
    from pymatgen.core import Composition
    from pymatgen.io.cif import CifWriter

    from domains.crystals.sampling import retrieved_samples

    target = structure_from_cif(perov["cif"][7], rebuild=False)
    double = target * (2, 1, 1)
    a_site = min(range(len(double)), key=lambda i: double[i].specie.X)  # the least electronegative: an A cation
    double.translate_sites([a_site], [0.12, 0.2, 0.1])
    table = tmp_path / "templates.csv"
    rows = perov[["material_id", "cif"]].head(12)
    pd.concat([rows, pd.DataFrame({"material_id": ["double"], "cif": [str(CifWriter(double))]})]).to_csv(table, index=False)
    cell = canonicalize(target).formula
    reduced = target.composition.reduced_formula
    assert Composition(cell).num_atoms == 5 and Composition(reduced).num_atoms == 5

    def atoms(formula):
        return [structure_from_cif(x.text).composition.num_atoms for x in retrieved_samples(formula, 20, [table], "retrieval")]

    assert set(atoms(cell)) == {5}
    assert 10 in atoms(reduced)


def test_retrieval_index_cache(tmp_path, perov, monkeypatch):
    from domains.crystals.retrieval import load_index

    monkeypatch.setenv("SCIAR_CACHE", str(tmp_path / "cache"))
    table = tmp_path / "t.csv"
    perov[["material_id", "cif"]].head(12).to_csv(table, index=False)
    first = load_index(table)
    files = list((tmp_path / "cache").glob("index-*.json.gz"))
    assert len(files) == 1 and len(first.structures) == 12
    again = load_index(table)  # from the cache
    assert again.ids == first.ids and again.n_atoms == first.n_atoms
    assert all(a == b for a, b in zip(again.structures, first.structures))
    files[0].write_bytes(b"not gzip")  # a corrupt cache is rebuilt, not an error
    assert load_index(table).ids == first.ids


def test_retrieval_index_of_a_cif_split_and_a_canonical_corpus(tmp_path, perov, monkeypatch):
    """The canonical corpus's rows (no 'cif' column of their own) join a CIF split's in one index."""
    from domains.crystals.canon_cache import canonicalize_records
    from domains.crystals.readers import frame_records
    from domains.crystals.retrieval import load_index

    monkeypatch.setenv("SCIAR_CACHE", str(tmp_path / "cache"))
    split = tmp_path / "split.csv"
    perov[["material_id", "cif"]].head(6).to_csv(split, index=False)
    corpus = tmp_path / "corpus.parquet"
    canonicalize_records(frame_records(perov[["material_id", "cif"]].iloc[6:10]), workers=1,
                         progress=False).drop(columns=["cif"], errors="ignore").to_parquet(corpus)
    assert len(load_index([split, corpus]).structures) == 10


def test_site_steering_keeps_an_orbit_at_its_stated_multiplicity():
    from domains.crystals.grammar import SiteClash

    # R-3m, 18h through (1/2, 0, z): at z = 0 or 1/2 the orbit collapses to the 9 points of 9e / 9d
    clash = SiteClash("R-3m", 4.95, 4.95, 24.8, 90, 90, 120)
    assert clash.z_digits("Ni", (0.5, 0.0), "0.", 18) == list("0123456789")  # room in every tenth
    second = clash.z_digits("Ni", (0.5, 0.0), "0.0", 18)
    assert second is not None and "0" not in second and "9" in second  # z = 0.00x would put Ni on 9e
    assert clash.z_digits("Ni", (0.5, 0.0), "0.0") is None  # without a multiplicity: nothing to keep


def test_a_fixed_wyckoff_position_holds_one_site():
    from domains.crystals.grammar import WyckoffSlots

    slots = WyckoffSlots(166)  # R-3m: 3a (0, 0, 0) and 3b (0, 0, 1/2) are the only 3-fold positions
    assert slots.points(6) is None  # 6c (0, 0, z) has a free parameter: any coordinates
    assert ("0.0000", "0.0000", "0.5000") in slots.points(3) and ("0.3333", "0.6667", "0.6667") in slots.points(3)
    slots.take(3, (0.6667, 0.3333, 0.3333))  # an orbit member of 3a
    assert ("0.0000", "0.0000", "0.0000") not in slots.points(3) and ("0.0000", "0.0000", "0.5000") in slots.points(3)
    assert WyckoffSlots.digits(slots.points(3), (), "0.") == ["0", "3", "6"]
    assert WyckoffSlots.digits(slots.points(3), ("0.0000",), "0.") == ["0"]
    slots.take(3, (0.0, 0.0, 0.5))
    assert not slots.available(3) and slots.available(6)


NDNI3 = """data_Nd9Ni27
_symmetry_space_group_name_H-M R-3m
_cell_length_a 4.9485
_cell_length_b 4.9485
_cell_length_c 24.8046
_cell_angle_alpha 90.0000
_cell_angle_beta 90.0000
_cell_angle_gamma 120.0000
_symmetry_Int_Tables_number 166
_chemical_formula_structural NdNi3
_chemical_formula_sum 'Nd9 Ni27'
_cell_volume 526.0294
_cell_formula_units_Z 9
loop_
 _symmetry_equiv_pos_site_id
 _symmetry_equiv_pos_as_xyz
 1 'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_symmetry_multiplicity
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
 Nd Nd0 6 0.0000 0.0000 0.1395 1.0
 Nd Nd1 3 0.0000 0.0000 0.0000 1.0
 Ni Ni2 18 0.9931 0.4966 0.0822 1.0
 Ni Ni3 6 0.0000 0.0000 0.3364 1.0
 Ni Ni4 3 0.0000 0.0000 0.5000 1.0
"""


def test_snapping_writes_special_positions_so_that_a_reader_rebuilds_their_orbits():
    from domains.crystals.wyckoff import snap_to_wyckoff

    # 18h (2x, x, z) written as (0.9931, 0.4966): 2 x 0.4966 = 0.9932, so pymatgen's reader makes
    # near-duplicate Ni atoms 0.001 A apart (40 atoms instead of 36)
    before = check_cif(NDNI3, bonds=False)
    assert not before["min_distance"] and len(before["structure"]) > 36
    snapped, moved = snap_to_wyckoff(NDNI3)
    after = check_cif(snapped, bonds=False)
    assert after["min_distance"] and after["sites"] and len(after["structure"]) == 36, after["reasons"]
    assert moved == 0  # a last-decimal correction is not a move
    ni2 = re.search(r"^ Ni Ni2 18 ([\d.]+) ([\d.]+) ([\d.]+) 1\.0$", snapped, flags=re.M).groups()
    x, y, z = map(float, ni2)
    assert abs(x - 2 * y) < 1e-9 and z == 0.0822  # the relation holds exactly; z untouched


def test_space_group_operations_from_spglib_are_pymatgens():
    """symmetry_operations reads spglib's database; pymatgen's SpaceGroup, which rebuilds the CIFs, must agree on every group."""
    import numpy as np
    from pymatgen.symmetry.groups import SpaceGroup

    from domains.crystals.symmetry import symmetry_operations
    from domains.crystals.tokenizer import spacegroup_symbols

    def as_set(rots, trans):
        return {(tuple(np.rint(r).astype(int).ravel()), tuple(np.round(t % 1.0, 4) % 1.0)) for r, t in zip(rots, trans)}

    syms = spacegroup_symbols()
    for sg in syms[::5] + syms[220:]:  # every crystal system and all the cubic groups, the slow ones for pymatgen
        ops = SpaceGroup(sg).symmetry_ops
        want = as_set([o.rotation_matrix for o in ops], [o.translation_vector for o in ops])
        assert as_set(*symmetry_operations(sg)) == want, sg
    assert len(symmetry_operations("P2_1/c")[0]) == 4
    assert len(symmetry_operations("P 1 21/c 1")[0]) == 4  # a full symbol goes through pymatgen


def test_snapping_moves_a_clashing_site_a_short_way_along_its_free_parameters():
    import numpy as np
    from pymatgen.core import Lattice

    from domains.crystals.symmetry import symmetry_operations
    from domains.crystals.grammar import SiteClash
    from domains.crystals.wyckoff import _nearest, _orbit, snap_site
    from domains.crystals.validity import expected_bond

    lat = Lattice.from_parameters(11.03, 5.10, 7.29, 90, 106, 90)
    rots, trans = symmetry_operations("C2/m")
    placed = _orbit(np.array([0.25, 0.25, 0.5]), rots, trans)  # Cu on 4f
    need = SiteClash.CLOSEST * expected_bond("Cu", "Cu")
    p = np.array([0.2, 0.5, 0.45])  # on 4i (x, 0, z) shifted by the centring, 1.40 A from a placed Cu
    assert _nearest(placed, _orbit(p, rots, trans), lat.matrix).min() < need
    q, moved = snap_site(p, 4, "C2/m", lat, placed, clash=np.full(len(placed), need), el="Cu")
    assert _nearest(placed, _orbit(q, rots, trans), lat.matrix).min() >= need
    assert q[1] == 0.5 and moved < 1.2  # still on 4i, moved along x and z; not to a far fixed point (4e is 3.7 A away)
    # with only the old 0.5 A rule the site stays where it was generated
    q0, d0 = snap_site(p, 4, "C2/m", lat, placed)
    assert np.allclose(q0, p) and d0 == 0.0


def _with_lengths(text, f):
    """The CIF with its cell lengths (and volume) multiplied by f."""
    from domains.crystals.cif import cif_field
    from domains.crystals.bondfit import _set_field

    for k in ("a", "b", "c"):
        text = _set_field(text, f"_cell_length_{k}", float(cif_field(text, f"_cell_length_{k}")) * f)
    return _set_field(text, "_cell_volume", float(cif_field(text, "_cell_volume")) * f ** 3)


def test_fitting_the_cell_scales_bonds_back_into_range(perov):
    from domains.crystals.bondfit import scale_to_bonds

    sites = re.compile(r"^ [A-Z][a-z]? .*$", flags=re.M)
    fixed = 0
    for text in [t for t in perov["canonical"] if check_cif(t)["valid"]][:5]:
        same, f = scale_to_bonds(text)
        assert f == 1.0 and same == text  # valid bonds: nothing to do
        for stretch in (1.45, 0.62):  # every bond too long, or too short
            bad = _with_lengths(text, stretch)
            before = check_cif(bad)
            if before["bonds"]:  # CrystalNN may see only bonds that stay in range (Ba-N of BaBiN3 at 1.45)
                continue
            assert before["spacegroup"]
            fit, f = scale_to_bonds(bad)
            after = check_cif(fit)
            assert after["valid"], after["reasons"]
            assert (f < 1) == (stretch > 1)
            assert sites.findall(fit) == sites.findall(bad)  # fractional coordinates and space group untouched
            assert after["detected_spacegroup"] == before["detected_spacegroup"]
            fixed += 1
    assert fixed >= 8


def test_fitting_the_cell_when_crystalnn_sees_no_bond_or_no_factor_can_help():
    from domains.crystals.bondfit import scale_to_bonds

    # CsCl-type NaCl as the shipped model wrote it: Na-Cl 3.55 A, so far that CrystalNN finds no neighbour
    cscl = ("data_Na1Cl1\nloop_\n _atom_type_symbol\n _atom_type_electronegativity\n _atom_type_radius\n"
            " _atom_type_ionic_radius\n  Na  0.9300  1.8000  1.1600\n  Cl  3.1600  1.0000  1.6700\n"
            "_symmetry_space_group_name_H-M Pm-3m\n_cell_length_a 4.0937\n_cell_length_b 4.0937\n"
            "_cell_length_c 4.0937\n_cell_angle_alpha 90.0000\n_cell_angle_beta 90.0000\n_cell_angle_gamma 90.0000\n"
            "_symmetry_Int_Tables_number 221\n_chemical_formula_structural NaCl\n_chemical_formula_sum 'Na1 Cl1'\n"
            "_cell_volume 68.6041\n_cell_formula_units_Z 1\nloop_\n _symmetry_equiv_pos_site_id\n"
            " _symmetry_equiv_pos_as_xyz\n  1  'x, y, z'\nloop_\n _atom_site_type_symbol\n _atom_site_label\n"
            " _atom_site_symmetry_multiplicity\n _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n"
            " _atom_site_occupancy\n Na Na0 1 0.0000 0.0000 0.0000 1.0\n Cl Cl1 1 0.5000 0.5000 0.5000 1.0\n")
    before = check_cif(cscl)
    assert before["reasons"] == "bonds" and before["bond_score"] == 0.0
    fit, f = scale_to_bonds(cscl)
    assert check_cif(fit)["valid"] and 0.7 < f < 0.85

    # a site so close to its one neighbour that only scaling the cell 2.4 times would do: left as written
    squeezed = cscl.replace("Cl Cl1 1 0.5000 0.5000 0.5000", "Cl Cl1 1 0.0000 0.0000 0.2000").replace(
        "Pm-3m", "P4mm").replace("221", "99")
    assert check_cif(squeezed)["reasons"] == "bonds"
    assert scale_to_bonds(squeezed) == (squeezed, 1.0)
    assert scale_to_bonds(squeezed, most=2.5)[1] > 2.3


ZR2TLC = """data_Zr4Tl2C2
loop_
 _atom_type_symbol
 _atom_type_electronegativity
 _atom_type_radius
 _atom_type_ionic_radius
 Zr 1.3300 1.5500 0.8600
 Tl 1.6200 1.9000 1.3325
 C 2.5500 0.7000 0.3000
_symmetry_space_group_name_H-M P6_3/mmc
_cell_length_a 3.3051
_cell_length_b 3.3051
_cell_length_c 14.8505
_cell_angle_alpha 90.0000
_cell_angle_beta 90.0000
_cell_angle_gamma 120.0000
_symmetry_Int_Tables_number 194
_chemical_formula_structural Zr2TlC
_chemical_formula_sum 'Zr4 Tl2 C2'
_cell_volume 140.4885
_cell_formula_units_Z 2
loop_
 _symmetry_equiv_pos_site_id
 _symmetry_equiv_pos_as_xyz
 1 'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_symmetry_multiplicity
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
 Zr Zr0 4 0.3333 0.6667 0.0817 1.0
 Tl Tl1 2 0.0000 0.0000 0.2500 1.0
 C C2 2 0.3333 0.6667 0.7500 1.0
"""  # generated by crystal-medium for a held-out MP-20 test composition: every Zr-C bond 1.4 x too long


def test_fitting_nudges_atoms_under_the_symmetry_where_no_scale_helps():
    from domains.crystals.bondfit import fit_bonds, nudge_atoms, scale_to_bonds

    before = check_cif(ZR2TLC)
    assert before["reasons"] == "bonds"
    assert scale_to_bonds(ZR2TLC) == (ZR2TLC, 1.0)  # the Zr-Zr and Zr-Tl bonds leave no room
    fit, scale, nudged = fit_bonds(ZR2TLC)
    after = check_cif(fit)
    assert nudged and after["valid"], after["reasons"]
    assert after["detected_spacegroup"] == "P6_3/mmc"
    rows = re.findall(r"^ [A-Z][a-z]? \S+ \d+ .*$", fit, flags=re.M)  # the site rows
    assert rows[1:] == [" Tl Tl1 2 0.0000 0.0000 0.2500 1.0", " C C2 2 0.3333 0.6667 0.7500 1.0"]
    x, y, z = map(float, rows[0].split()[3:6])
    assert (x, y) == (0.3333, 0.6667) and 0.0817 < z  # Zr moved along its 4f line toward C
    assert (z - 0.0817) * 14.8505 * scale < 1.5
    assert nudge_atoms(ZR2TLC, reach=0.1) is None  # not within a tenth of an angstrom


def test_hybrid_sample_never_returns_another_composition(tmp_path):
    """A model sample whose composition is not the prompt's (here KCl drawn for Na4Cl4; in practice atoms that fell
    onto each other and merged when read) is passed over; the prompt's own structures are kept."""
    from pymatgen.core import Composition, Lattice, Structure

    from domains.crystals.generate import Sample
    from domains.crystals.sampling import retrieved_samples

    def rocksalt(a, b, x, group="Fm-3m"):
        return Structure.from_spacegroup(group, Lattice.cubic(x), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])

    class FakeModel:
        def sample_composition(self, composition, n, **kw):
            kcl = canonicalize(rocksalt("K", "Cl", 6.29)).cif
            nacl = canonicalize(rocksalt("Na", "Cl", 3.3, "Pm-3m")).cif  # CsCl-type: not the template
            return [Sample("", kcl, -1.0, 10, True)] * (n - 1) + [Sample("", nacl, -2.0, 10, True)]

    (tmp_path / "nacl.cif").write_text(rocksalt("Na", "Cl", 5.70).to(fmt="cif"))
    out = retrieved_samples("Na4Cl4", 3, [tmp_path], "hybrid", gen=FakeModel())
    assert out and all(Composition(structure_from_cif(s.text).composition).reduced_formula == "NaCl" for s in out)
    assert sorted(s.source for s in out) == ["lm", "template nacl"]  # the model's NaCl kept, its KCl not
