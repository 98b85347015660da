"""benchmarks/crystals_ceilings.py on a small perov-5 slice whose training file holds one target itself."""

import json
from pathlib import Path

import pandas as pd
from pymatgen.core import Composition

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "crystals"


def test_pairs_and_templates_on_a_slice(tmp_path, benchmark_module):
    train = pd.read_csv(SHARED / "perov_5" / "train.csv.gz")
    test = pd.read_csv(SHARED / "perov_5" / "test.csv.gz")
    rf = lambda f: Composition(f).reduced_formula  # noqa: E731
    known = set(train["formula"].map(rf))
    targets = test[test["formula"].map(rf).isin(known)].head(4)
    partners = train[train["formula"].map(rf).isin(set(targets["formula"].map(rf)))]
    split = tmp_path / "perov_5"
    split.mkdir()
    # the first target itself is a training structure: it must be found by both parts
    pd.concat([partners, targets.head(1)[partners.columns]]).to_csv(split / "train.csv.gz", index=False)
    targets.to_csv(split / "test.csv.gz", index=False)
    targets.head(1).to_csv(split / "val.csv.gz", index=False)

    out = benchmark_module("crystals_ceilings").main([
        "--data", str(tmp_path), "--splits", "perov_5", "--parts", "pairs", "templates",
        "--limit", "10", "--cap", "3", "--json", str(tmp_path / "c.json")])
    pairs = out["perov_5"]["pairs"]
    assert pairs["targets"] == pairs["formula_in_train"] == 4
    assert 1 <= pairs["train_structure_matches"] <= 4
    assert pairs["train_structure_matches"] + pairs["formula_in_train_other_structure"] == 4
    assert sum(pairs["structures_per_formula_all_splits"].values()) == len(set(targets["formula"].map(rf)))
    assert 0.25 <= out["perov_5"]["templates"]["matched_by_any_template"] <= 1.0
    assert json.loads((tmp_path / "c.json").read_text())["perov_5"]["templates"]["cap"] == 3
