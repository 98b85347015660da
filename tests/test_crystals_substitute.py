"""build-corpus --substitute: data-mined ionic substitution on the corpus' prototypes, labelled by CHGNet."""

import pandas as pd
import pytest

from cli import main
from sciar.paths import data_dir


@pytest.fixture(scope="module")
def small_corpus():
    df = pd.read_parquet(data_dir() / "crystals" / "default.parquet")
    return df[df["n_atoms"] <= 4].head(40).reset_index(drop=True)


def test_proposals_are_new_charge_balanced_substitutions(small_corpus):
    from pymatgen.core import Composition

    from domains.crystals.substitute import propose

    props = propose(small_corpus, 4, progress=False)
    assert 1 <= len(props) <= 4
    assert list(props["probability"]) == sorted(props["probability"], reverse=True)
    known = set(small_corpus["reduced_formula"])
    for rec in props.itertuples():
        comp = rec.structure.composition
        assert comp.reduced_formula not in known  # a new compound
        assert Composition(comp.reduced_formula).oxi_state_guesses()  # charge balanced
        parent = small_corpus.set_index("id").loc[rec.parent]
        assert len(rec.structure) == parent["n_atoms"]  # the prototype's sites, other elements
        assert rec.probability >= 0.01 and "->" in rec.substitution


def test_enlarge_labels_and_marks_generated_rows(tmp_path, small_corpus):
    base = tmp_path / "base.parquet"
    small_corpus.to_parquet(base)
    out = tmp_path / "corpus.parquet"
    rc = main(["crystal", "build-corpus", "--base", str(base), "--substitute", "2", "--no-relax", "--max-atoms", "2",
               "--out", str(out)])
    assert rc == 0
    df = pd.read_parquet(out)
    gen = df[df["generated"].astype(bool)]
    assert len(df) == len(small_corpus) + len(gen) and 1 <= len(gen) <= 2
    assert (gen["source"] == "substitution").all() and gen["parent"].isin(small_corpus["id"]).all()
    assert gen["formation_energy_per_atom"].between(-6, 3).all()  # CHGNet against its elemental references
    assert gen["canonical"].str.startswith("data_").all()
    tried = pd.read_csv(tmp_path / "corpus_substitutions.csv")
    assert len(tried) >= len(gen)
    # bad input: one line, exit 2
    assert main(["crystal", "build-corpus", "--base", str(tmp_path / "missing.parquet"), "--substitute", "1"]) == 2
    assert main(["crystal", "build-corpus", "--base", str(base), "--substitute", "-1"]) == 2
    (tmp_path / "bad.parquet").write_text("not a table")
    assert main(["crystal", "build-corpus", "--base", str(tmp_path / "bad.parquet"), "--substitute", "1"]) == 2
