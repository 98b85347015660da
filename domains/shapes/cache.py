"""The sample cache: one ``.npz`` per mesh, keyed by the file's content and the sampling settings.

``prepare`` reads, repairs, normalises and samples every mesh of a collection and
writes ``samples/<key>.npz`` (atomically) and ``index.csv`` (one row per mesh:
class, split, frame, repair notes, or the error that made it unusable). A mesh
whose key is already there is not read again, so an interrupted run resumes and
a renamed or copied file costs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from domains.shapes.dataset import MeshFile
from domains.shapes.mesh import load_shape
from domains.shapes.sampling import SamplingConfig, sample_shape
from sciar.errors import DataError
from sciar.io import atomic_path, fingerprint, sha256_file, write_table_atomic

CACHE_VERSION = 1  # bump when what is stored changes, so old entries are not mistaken for new ones
INDEX = "index.csv"


def cache_key(path: Path, config: SamplingConfig) -> str:
    return fingerprint([sha256_file(path), json.dumps(config.to_dict(), sort_keys=True), CACHE_VERSION])


def _write_entry(target: Path, sample: dict, meta: dict):
    with atomic_path(target) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez(f, **sample, meta=np.array(json.dumps(meta)))


def read_entry(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays of one cached mesh and its metadata (frame, notes, source)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"]))
    return arrays, meta


def prepare(files: list[MeshFile], out: str | Path, config: SamplingConfig = SamplingConfig(),
            seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Cache samples of every mesh in ``files`` under ``out``; returns (and writes) the per-mesh report.

    A mesh that cannot be used gets its one-line error in the report's ``error``
    column and the others go on; if none can be used, :class:`DataError`.
    """
    out = Path(out)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    rows = []
    bar = tqdm(files, desc="prepare", unit="mesh", disable=not progress)
    for mf in bar:
        row = {"path": mf.relative, "label": mf.label, "split": mf.split, "key": "", "cached": False,
               "faces": 0, "bodies": 0, "center": "", "scale": np.nan, "notes": "", "error": ""}
        try:
            key = cache_key(mf.path, config)
            target = out / "samples" / f"{key}.npz"
            if target.is_file():
                _, meta = read_entry(target)
                row["cached"] = True
            else:
                shape = load_shape(mf.path)
                meta = {"source": mf.relative, "center": list(shape.frame.center), "scale": shape.frame.scale,
                        "notes": shape.notes, "faces": len(shape.mesh.faces), "bodies": shape.bodies,
                        "sampling": config.to_dict()}
                _write_entry(target, sample_shape(shape.mesh, config, seed), meta)
            row.update(key=key, faces=meta["faces"], bodies=meta["bodies"], scale=meta["scale"],
                       center=" ".join(f"{c:.6g}" for c in meta["center"]), notes="; ".join(meta["notes"]))
        except DataError as e:
            row["error"] = str(e)
        except OSError as e:
            row["error"] = f"{mf.path}: {e.strerror or e}"
        rows.append(row)
        if row["error"]:
            bar.set_postfix(failed=sum(bool(r["error"]) for r in rows))
    report = pd.DataFrame(rows)
    write_table_atomic(report, out / INDEX)
    if not (report["error"] == "").any():
        raise DataError(f"no usable mesh: {report['error'].iloc[0]}" if len(report) == 1 else
                        f"none of the {len(report)} meshes could be used (see {out / INDEX}); first: {report['error'].iloc[0]}")
    return report


def read_index(cache: str | Path, split: str | None = None) -> pd.DataFrame:
    """The usable meshes of a prepared cache (optionally one split), with the path of each sample file."""
    cache = Path(cache)
    if not (cache / INDEX).is_file():
        raise DataError(f"{cache}: not a prepared shape cache (no {INDEX}; run 'sciar shapes prepare')")
    index = pd.read_csv(cache / INDEX, keep_default_na=False)
    index = index[index["error"] == ""].copy()
    if split is not None:
        index = index[index["split"] == split]
    index["file"] = [str(cache / "samples" / f"{k}.npz") for k in index["key"]]
    return index.reset_index(drop=True)
