"""Reading structures: CIF text into pymatgen Structures, and CIF files, folders and tables into records
(``id``, ``source``, ``cif`` and the table's other columns)."""

from __future__ import annotations

import re
import warnings
import zlib
from pathlib import Path

import pandas as pd

from domains.crystals.cif import cif_syntax_problem, unknown_element
from domains.crystals.symmetry import rebuild_symmetry
from sciar.errors import DataError, SciarError, one_line


def structure_from_cif(text: str, rebuild: bool = True):
    """A pymatgen Structure from canonical (or any) CIF text; DataError if it cannot be read."""
    from pymatgen.io.cif import CifParser

    if rebuild and re.search(r"_symmetry_equiv_pos_as_xyz\n[ \t]*1[ \t]+'x, y, z'\n(?![ \t]*2[ \t])", text):
        text = rebuild_symmetry(text)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structs = CifParser.from_str(text).parse_structures(primitive=False)
    except Exception as e:
        msg = one_line(e)
        raise DataError(f"unparseable CIF: {cif_syntax_problem(text) or msg}") from None
    if not structs:
        raise DataError(f"unparseable CIF: {cif_syntax_problem(text) or 'no structure in it'}")
    if bad := unknown_element(structs[0]):
        raise DataError(f"unknown element {bad!r}")
    return structs[0]


TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq", ".json", ".json.gz")


def is_table(p: Path) -> bool:
    return any(p.name.endswith(s) for s in TABLE_SUFFIXES)


def read_table_cifs(p: Path) -> pd.DataFrame:
    from sciar.tables import read_table

    return frame_records(read_table(p), str(p))


def frame_records(df: pd.DataFrame, source: str = "table") -> pd.DataFrame:
    """Records (id, source, cif, other columns) from a pandas table with a ``cif`` column."""
    if "cif" not in df.columns:
        raise DataError(f"{source}: a table of structures needs a 'cif' column (has {', '.join(map(str, df.columns[:8]))})")
    out = df.copy()
    if "material_id" in out.columns:
        out.insert(0, "id", out["material_id"].astype(str))
    else:
        out.insert(0, "id", [f"{Path(source).name}:{i}" for i in range(len(out))])
    out.insert(1, "source", source)
    return out


_UNREADABLE = (OSError, EOFError, zlib.error)  # missing or unreadable files, truncated or corrupt gzip


def _cif_text(p: Path) -> str:
    """The text of a .cif or .cif.gz file (undecodable bytes replaced)."""
    import gzip

    data = gzip.decompress(p.read_bytes()) if p.name.lower().endswith(".gz") else p.read_bytes()
    return data.decode("utf-8", errors="replace")


def cif_blocks(text: str) -> list[str]:
    """The data blocks of a CIF text (the whole text when it has none)."""
    blocks = [b for b in re.split(r"(?m)^(?=data_)", text) if b.lstrip().startswith("data_")]
    return blocks if len(blocks) > 1 else [text]


def read_cif_file(p: Path) -> list[dict]:
    """One record per data block of a CIF file (the text of each block kept as is)."""
    try:
        blocks = cif_blocks(_cif_text(p))
    except _UNREADABLE as e:
        raise DataError(f"cannot read {p}: {getattr(e, 'strerror', None) or e}") from None
    if len(blocks) == 1:
        return [{"id": _stem(p), "source": str(p), "cif": blocks[0]}]
    return [{"id": f"{_stem(p)}#{i}", "source": str(p), "cif": b} for i, b in enumerate(blocks)]


def _stem(p: Path) -> str:
    return p.name[: -len(".cif.gz")] if p.name.lower().endswith(".cif.gz") else p.stem


def cif_files_in(folder: Path) -> list[Path]:
    """Every .cif or .cif.gz file below a folder (recursive, any case of the suffix), sorted."""
    return sorted(q for q in folder.rglob("*") if q.is_file() and q.name.lower().endswith((".cif", ".cif.gz")))


def cif_file_texts(paths) -> list[tuple[str, str | None, str]]:
    """(name, text, error) of every data block of every CIF among files and folders (recursive); text None
    where unreadable. A file of several blocks gives one item per block, named ``path#i``.

    SciarError for a path that does not exist or when no CIF is found."""
    items = []
    for p in map(Path, [paths] if isinstance(paths, (str, Path)) else paths):
        if p.is_dir():
            files = cif_files_in(p)
        elif p.is_file():
            files = [p]
        else:
            raise SciarError(f"{p} not found")
        for f in files:
            try:
                blocks = cif_blocks(_cif_text(f))
            except _UNREADABLE as e:
                items.append((str(f), None, f"unreadable: {getattr(e, 'strerror', None) or e}"))
                continue
            items += [(str(f) if len(blocks) == 1 else f"{f}#{i}", b, "") for i, b in enumerate(blocks)]
    if not items:
        raise SciarError("no .cif files in the given paths")
    return items


def read_inputs(paths) -> pd.DataFrame:
    """Records from CIF files, folders of CIFs (recursive), CDVAE CSV splits or tables with a ``cif`` column."""
    if isinstance(paths, pd.DataFrame):
        return frame_records(paths)
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = cif_files_in(p)
            if not files:
                raise DataError(f"no .cif files in folder {p}")
            frames.append(pd.DataFrame([r for f in files for r in read_cif_file(f)]))
        elif p.is_file():
            frames.append(read_table_cifs(p) if is_table(p) else pd.DataFrame(read_cif_file(p)))
        else:
            raise DataError(f"input {p} not found")
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
