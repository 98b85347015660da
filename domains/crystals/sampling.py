"""Writing generated samples: full-symmetry CIF files and a summary table with validity."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from domains.crystals.cif import cif_field, header_formula
from domains.crystals.validity import CHECKS, check_cif, full_cif
from sciar.errors import DataError
from sciar.io import write_table_atomic, write_text_atomic


def sample_rows(samples, bonds: bool = True) -> list[dict]:
    """One row per sample: formula, space group, validity and the full CIF text."""
    rows = []
    for i, s in enumerate(samples):
        r = check_cif(s.text, bonds=bonds)
        st = r.pop("structure")
        try:
            text = full_cif(s.text)
        except DataError:
            text = s.text
        rows.append({
            "index": i, "formula": header_formula(s.text), "spacegroup": cif_field(s.text, "_symmetry_space_group_name_H-M"),
            "n_atoms": len(st) if st is not None else None, "logprob": round(s.logprob, 3), "n_tokens": s.n_tokens,
            "complete": s.complete, "valid": r["valid"], "reasons": r["reasons"],
            **{f"check_{k}": r[k] for k in CHECKS + ["smact"]}, "bond_score": r["bond_score"],
            "detected_spacegroup": r["detected_spacegroup"], "cif": text,
        })
    return rows


def write_samples(samples, out: str | Path, bonds: bool = True) -> pd.DataFrame:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = sample_rows(samples, bonds=bonds)
    for r in rows:
        r["file"] = f"{r['formula']}_{r['index']:03d}.cif"
        write_text_atomic(out / r["file"], r["cif"])
    df = pd.DataFrame(rows)
    write_table_atomic(df.drop(columns=["cif"]), out / "summary.csv")
    return df
