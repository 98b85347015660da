"""How high the structure-prediction match rates can go on these splits, measured.

    python benchmarks/crystals_ceilings.py --limit 100 --json ceilings.json
    python benchmarks/crystals_ceilings.py --splits perov_5 --parts pairs --on test

Three measurements per split, on the same seeded subset as ``benchmarks/crystals.py``
(``--limit``, ``--seed``; the benchmark's matcher and its match test, ``get_rms_dist`` not None):

- ``pairs``: how many structures share a reduced formula across the split's train/val/test
  files, how many subset targets have their formula in the train file, and how many of those
  the training structure(s) of that formula match. Where a formula's other structure sits in
  train and never matches, proposing the known structure first loses every such target at n=1.
- ``templates``: the share of targets matched by any of the first ``--cap`` substituted training
  templates (retrieval's candidates before ranking): retrieval's ceiling with perfect ranking.
- ``oracle_sg``: the shipped model prompted with the target's own space group (which no strategy
  knows), ``--draws`` samples: the share matched; a ceiling for any way of spreading the
  model's draws over space groups.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from domains.crystals import DEFAULT_CHECKPOINT  # noqa: E402

SPLITS = ("perov_5", "carbon_24", "mp_20")
PARTS = ("pairs", "templates", "oracle_sg")
MAX_SAME = 50  # training structures of one formula compared with a target in the pairs part


def targets(data: Path, split: str, on: str, limit: int | None, seed: int):
    """(structure, prompt composition) of the benchmark's seeded subset."""
    from domains.crystals.benchmark import _prompt_composition, load_test
    from domains.crystals.readers import structure_from_cif

    out = []
    for _, rec in load_test(data / split / f"{on}.csv.gz", limit, seed).iterrows():
        t = structure_from_cif(rec["cif"], rebuild=False)
        out.append((t, _prompt_composition(rec["cif"], t)))
    return out


def matches(sm, target, s) -> bool:
    """The benchmark's match test."""
    try:
        return sm.get_rms_dist(target, s) is not None
    except Exception:
        return False


def pairs(data: Path, split: str, items, index, sm) -> dict:
    import pandas as pd
    from pymatgen.core import Composition

    per_formula = Counter()
    for part in ("train", "val", "test"):
        df = pd.read_csv(data / split / f"{part}.csv.gz", usecols=lambda c: c in ("formula", "cif"))
        if "formula" in df.columns:
            per_formula.update(Composition(f).reduced_formula for f in df["formula"])
    by_formula = {}
    for s in index.structures:
        by_formula.setdefault(s.composition.reduced_formula, []).append(s)
    known = [(t, by_formula[c.reduced_formula]) for t, c in items if c.reduced_formula in by_formula]
    # a one-element split (carbon-24) has thousands of structures per formula: the template part covers it
    matched = sum(any(matches(sm, t, s) for s in same[:MAX_SAME]) for t, same in known)
    return {"structures_per_formula_all_splits": dict(sorted(Counter(per_formula.values()).items())),
            "targets": len(items), "formula_in_train": len(known), "train_structure_matches": matched,
            "formula_in_train_other_structure": len(known) - matched, "compared_per_formula_at_most": MAX_SAME}


def templates(items, index, sm, cap: int) -> dict:
    from domains.crystals.benchmark import csp_filter

    hit = 0
    for t, comp in items:
        hit += any(csp_filter(c.structure) and matches(sm, t, c.structure) for c in index.candidates(comp, cap))
    return {"cap": cap, "matched_by_any_template": hit / max(len(items), 1)}


def oracle_sg(items, gen, sm, draws: int, seed: int) -> dict:
    from domains.crystals.benchmark import csp_filter, sample_cands
    from domains.crystals.canonical import canonicalize
    from domains.crystals.cif import spacegroup_of
    from domains.crystals.generate import make_prompt
    from sciar.errors import SciarError

    hit = skipped = 0
    for k, (t, comp) in enumerate(items):
        try:
            p = make_prompt(comp, spacegroup_of(canonicalize(t).cif))
            cands = sample_cands(gen.sample([p], draws, seed=seed + k))
        except SciarError:
            skipped += 1  # counts as not matched
            continue
        hit += any(c.structure is not None and csp_filter(c.structure) and matches(sm, t, c.structure) for c in cands)
    return {"draws": draws, "matched_with_true_spacegroup": hit / max(len(items), 1), "skipped": skipped}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "crystals")
    ap.add_argument("--splits", nargs="*", default=list(SPLITS))
    ap.add_argument("--parts", nargs="*", default=list(PARTS), choices=PARTS)
    ap.add_argument("--on", default="test", choices=("val", "test"))
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cap", type=int, default=400, help="templates per target for the template ceiling")
    ap.add_argument("--draws", type=int, default=20, help="model samples per target with its true space group")
    ap.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    from domains.crystals.matching import matcher
    from domains.crystals.retrieval import load_index

    sm, gen, out = matcher(), None, {}
    for split in args.splits:
        t0 = time.perf_counter()
        items = targets(args.data, split, args.on, args.limit, args.seed)
        res = out[split] = {"on": args.on, "limit": args.limit, "seed": args.seed}
        index = load_index(args.data / split / "train.csv.gz") if {"pairs", "templates"} & set(args.parts) else None
        if "pairs" in args.parts:
            res["pairs"] = r = pairs(args.data, split, items, index, sm)
            print(f"{split} pairs: structures per formula (all splits) {r['structures_per_formula_all_splits']}; "
                  f"{r['formula_in_train']} of {r['targets']} {args.on} targets have their formula in train, whose "
                  f"structure matches {r['train_structure_matches']} of them", flush=True)
        if "templates" in args.parts:
            res["templates"] = r = templates(items, index, sm, args.cap)
            print(f"{split} templates: any of the first {args.cap} substituted templates matches "
                  f"{r['matched_by_any_template']:.1%}", flush=True)
        if "oracle_sg" in args.parts:
            if gen is None:
                from domains.crystals.generate import CrystalGenerator

                gen = CrystalGenerator(args.checkpoint)
            res["oracle_sg"] = r = oracle_sg(items, gen, sm, args.draws, args.seed)
            print(f"{split} oracle_sg: {args.draws} samples prompted with the true space group match "
                  f"{r['matched_with_true_spacegroup']:.1%} ({r['skipped']} prompts too large)", flush=True)
        res["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        from sciar.io import write_json_atomic

        write_json_atomic(args.json, out)
    return out


if __name__ == "__main__":
    main()
