"""Reading CIFs and canonicalising them as CrystaLLM does.

Canonical CIF (one per structure, ending in a newline; a corpus joins them with a
blank line): pymatgen's ``CifWriter(symprec=0.1)`` text (conventional cell,
symmetrized), comments and blank lines removed, the ``data_`` header replaced by
the cell composition in pymatgen's electronegativity order (``data_Na4Cl4``), the
symmetry loop reduced to ``x, y, z`` (rebuilt from the space group after
generation: :func:`rebuild_symmetry`), an atom-type block (electronegativity,
atomic radius, average ionic radius) inserted before the space-group line,
floats rounded to 4 decimals and runs of spaces collapsed to one.

Inputs that cannot be used are reported with a reason (``unparseable``,
``partial occupancy``, ``unknown element``, ``absurd cell``, ``overlapping atoms``,
``no symmetry``) and the rest goes on.
"""

from __future__ import annotations

import functools
import math
import os
import re
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sciar.errors import DataError, SciarError, describe, one_line

# pymatgen sorts formulas by electronegativity and warns for the noble gases, which have none
warnings.filterwarnings("ignore", message="No Pauling electronegativity")

MAX_VOLUME_PER_ATOM = 1000.0  # A^3; the shipped corpus and the CDVAE splits stay under 150
CANON_VERSION = 1  # bump when the canonical text changes (invalidates caches)
SYMPREC = 0.1
SG_KEY = "_symmetry_space_group_name_H-M"
MAX_Z = 94  # H .. Pu: the elements of the CIF vocabulary and of the training data

# CrystaLLM's fallbacks for elements pymatgen lacks values for
_NOBLE_VDW = {"He": 1.40, "Ne": 1.54, "Ar": 1.88, "Kr": 2.02, "Xe": 2.16, "Rn": 2.20}
_ALLEN_X = {"He": 4.16, "Ne": 4.79, "Ar": 3.24}


# ---------------------------------------------------------------- compositions

def parse_composition(text: str):
    """A pymatgen Composition from user text (``Na2Cl2``, ``NaCl``, ``Na2 Cl2``), integer amounts only.

    Raises SciarError naming the problem: malformed formula or unknown element.
    """
    from pymatgen.core import Composition, Element

    s = str(text).strip()
    if not s:
        raise SciarError("empty composition")
    if not re.fullmatch(r"(?:[A-Z][a-z]?\d*(?:\.\d+)?\s*)+", s.replace("(", "").replace(")", "")):
        raise SciarError(f"malformed formula {text!r} (expected something like Na2Cl2 or LiFePO4)")
    for sym in re.findall(r"[A-Z][a-z]?", s):
        if not Element.is_valid_symbol(sym):
            raise SciarError(f"unknown element {sym!r} in {text!r}")
        if Element(sym).Z > MAX_Z:
            raise SciarError(f"element {sym!r} in {text!r} is beyond Pu: the models know H to Pu only")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            comp = Composition(s)
    except Exception as e:  # pymatgen raises ValueError / CompositionError
        raise SciarError(f"malformed formula {text!r}: {one_line(e)}") from None
    if comp.num_atoms <= 0:
        raise SciarError(f"composition {text!r} has no atoms")
    for el, amt in comp.items():
        if abs(amt - round(amt)) > 1e-6:
            raise SciarError(f"composition {text!r} has a fractional amount of {el} (integer atom counts only)")
    return comp


def cell_formula(comp) -> str:
    """``data_`` formula of a cell composition: electronegativity order, every count written (``Na4Cl4``)."""
    return comp.formula.replace(" ", "")


# ---------------------------------------------------------------- canonical text

def atom_props_block(comp) -> str:
    """CrystaLLM's atom-type loop (without trailing newline)."""
    def fmt(v):
        return f"{float(v): .4f}"

    def x(el):
        v = el.X
        if (v is None or math.isnan(v)) and str(el) in _ALLEN_X:
            return fmt(_ALLEN_X[str(el)])
        return fmt(0.0 if v is None or math.isnan(v) else v)

    def radius(el):
        r = el.atomic_radius
        if r is None:
            r = _NOBLE_VDW.get(str(el), 0.0)
        return fmt(r)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = [f"  {el}  {x(el)}  {radius(el)}  {fmt(el.average_ionic_radius)}" for el in sorted(comp.elements)]
    head = ["loop_", " _atom_type_symbol", " _atom_type_electronegativity", " _atom_type_radius", " _atom_type_ionic_radius"]
    return re.sub(r"[ \t]+", " ", "\n".join(head + rows))


_FLOAT = re.compile(r"[-+]?\d*\.\d+([eE][-+]?\d+)?")


def round_numbers(text: str, places: int = 4) -> str:
    def rnd(m):
        s = m.group()
        if len(s.split(".")[1]) <= places:
            return s
        out = f"{round(float(s), places):.{places}f}"
        return "0." + "0" * places if out == "-0." + "0" * places else out

    return _FLOAT.sub(rnd, text)


def semisymmetrize(text: str) -> str:
    """Reduce the symmetry-operation loop to the identity."""
    return re.sub(r"(_symmetry_equiv_pos_as_xyz\n)(.*?)(?=\n(?:\S| \S)|\Z)", r"\1  1  'x, y, z'", text, flags=re.DOTALL)


@contextmanager
def quiet_spglib():
    """spglib prints to stderr when it cannot refine a tight symmetry; where that is expected and handled, it should not."""
    before = os.environ.get("SPGLIB_WARNING")
    os.environ["SPGLIB_WARNING"] = "OFF"
    try:
        yield
    finally:
        if before is None:
            del os.environ["SPGLIB_WARNING"]
        else:
            os.environ["SPGLIB_WARNING"] = before


def canonical_cif(structure, symprec: float = SYMPREC) -> str:
    """The canonical CIF text of an ordered pymatgen Structure."""
    from pymatgen.io.cif import CifWriter

    with warnings.catch_warnings(), quiet_spglib():
        warnings.simplefilter("ignore")
        raw = str(CifWriter(structure, symprec=symprec))
    lines = [ln for ln in raw.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    text = "\n".join(lines)
    m = re.search(r"^_chemical_formula_sum\s+(.+)$", text, flags=re.M)
    if not m:
        raise DataError("CifWriter wrote no _chemical_formula_sum")
    formula = m.group(1).replace("'", "").replace(" ", "")
    text = re.sub(r"^data_.*$", lambda _: f"data_{formula}", text, count=1, flags=re.M)
    text = semisymmetrize(text)
    from pymatgen.core import Composition

    block = atom_props_block(Composition(formula))
    i = text.index(SG_KEY)
    text = text[:i] + block + "\n" + text[i:]
    text = round_numbers(text)
    text = re.sub(r"[ \t]+", " ", text)
    return text.strip() + "\n"


# ---------------------------------------------------------------- fields of a CIF text

def cif_field(text: str, key: str) -> str | None:
    m = re.search(rf"^{re.escape(key)}[ \t]+(.+?)[ \t]*$", text, flags=re.M)
    return m.group(1).strip().strip("'\"") if m else None


def header_formula(text: str) -> str | None:
    """The name of the CIF's first data block (comments may come before it: pymatgen writes one)."""
    m = re.search(r"^[ \t]*data_(\S*)", text, flags=re.M)
    return m.group(1) if m else None


def spacegroup_of(text: str) -> str | None:
    return cif_field(text, SG_KEY)


@functools.lru_cache(maxsize=None)
def spacegroup(symbol: str):
    """pymatgen's SpaceGroup for a symbol, kept alive: pymatgen's own instance cache is weak, so
    without a reference every CIF rebuilds the group's operations (about a second for cubic groups)."""
    import warnings

    from pymatgen.symmetry.groups import SpaceGroup

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return SpaceGroup(symbol)
    except Exception:
        raise DataError(f"unknown space group {symbol!r}") from None


@functools.lru_cache(maxsize=1)
def standard_halls() -> dict[str, int]:
    """Short symbol -> spglib Hall number of the standard setting (the first of its number), in number order."""
    import spglib

    first: dict[int, tuple[str, int]] = {}
    for hall in range(1, 531):
        t = spglib.get_spacegroup_type(hall)
        first.setdefault(t.number, (t.international_short, hall))
    return dict(first[n] for n in sorted(first))


@functools.lru_cache(maxsize=256)
def symmetry_operations(symbol: str):
    """(rotations [n, 3, 3], translations [n, 3]) of a space group's operations, identity first.

    From spglib's database for the 230 standard symbols: the same set as pymatgen's
    ``SpaceGroup(symbol).symmetry_ops`` (tested), which builds them by closure and takes a second for Fm-3m;
    other symbols (full symbols, other settings) go through pymatgen. DataError for an unknown symbol.
    """
    import numpy as np

    hall = standard_halls().get(symbol)
    if hall is not None:
        import spglib

        d = spglib.get_symmetry_from_database(hall)
        return d["rotations"].astype(float), np.asarray(d["translations"], float)
    ops = spacegroup(symbol).symmetry_ops
    return np.array([o.rotation_matrix for o in ops]), np.array([o.translation_vector for o in ops])


@functools.lru_cache(maxsize=None)
def _symmetry_rows(symbol: str) -> str:
    from pymatgen.core.operations import SymmOp

    rots, trans = symmetry_operations(symbol)
    return "\n".join(f" {i} '{SymmOp.from_rotation_and_translation(r, t).as_xyz_str()}'"
                     for i, (r, t) in enumerate(zip(rots, trans), 1))


def rebuild_symmetry(text: str) -> str:
    """Replace the identity-only symmetry loop by the full operations of the stated space group."""
    sg = spacegroup_of(text)
    if not sg:
        raise DataError("no space group in the CIF")
    rows = _symmetry_rows(sg)
    pat = re.compile(r"(_symmetry_equiv_pos_as_xyz\n)[ \t]*1[ \t]+'x, y, z'")
    if not pat.search(text):
        raise DataError("the CIF has no identity-only symmetry loop to rebuild")
    return pat.sub(lambda m: m.group(1) + rows, text, count=1)


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


_CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha", "_cell_angle_beta",
              "_cell_angle_gamma")


def cif_syntax_problem(text: str) -> str | None:
    """Why pymatgen could not build a structure from ``text``, in words (its own messages, such as
    'integer modulo by zero' for a truncated loop, do not say); None if no reason is found."""
    from pymatgen.io.cif import CifFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = list(CifFile.from_str(text).data.values())
    except ZeroDivisionError:
        return "a loop_ names columns but holds no values (is the file cut short?)"
    except ValueError as e:
        if m := re.search(r"not a multiple of n=(\d+)", str(e)):
            return f"a loop_'s values do not fill its {m.group(1)} columns (is the file cut short?)"
        return None
    if not blocks:
        return "no data_ block: this is not CIF text"
    data = blocks[0].data
    for key in _CELL_KEYS:
        if key not in data:
            return f"{key} is missing"
        try:
            float(re.sub(r"\(\d+\)$", "", str(data[key])))
        except ValueError:
            return f"{key} is not a number ({str(data[key])[:20]!r})"
    if not any(k in data for k in ("_atom_site_fract_x", "_atom_site_Cartn_x")):
        return "no atom sites (_atom_site_fract_x/y/z or _atom_site_Cartn_x/y/z)"
    return None


def unknown_element(s) -> str | None:
    """The first symbol of ``s`` that is no element: pymatgen reads one such as 'Qq' as a dummy species,
    with only a warning."""
    from pymatgen.core.periodic_table import DummySpecies

    return next((sp.symbol for sp in s.composition.elements if isinstance(sp, DummySpecies)), None)


# ---------------------------------------------------------------- checks on input structures

def structure_problem(s) -> str | None:
    """Why a parsed structure cannot be used (None if it can)."""
    from pymatgen.core import Element

    if len(s) == 0:
        return "unparseable: no atoms"
    if not s.is_ordered:
        return "partial occupancy"
    for sp in s.composition.elements:
        sym = getattr(sp, "symbol", str(sp))
        if not Element.is_valid_symbol(sym) or getattr(sp, "Z", 0) <= 0:
            return f"unknown element {sym}"
        if Element(sym).Z > MAX_Z:
            return f"unknown element {sym} (beyond Pu)"
    lat = s.lattice
    if not all(0.5 <= x <= 1000 for x in lat.abc) or not all(10 <= a <= 170 for a in lat.angles):
        return f"absurd cell (a, b, c = {', '.join(f'{x:.3g}' for x in lat.abc)}; angles {', '.join(f'{a:.3g}' for a in lat.angles)})"
    if not lat.volume > 0.1 or lat.volume / len(s) < 1.0:
        return f"absurd cell (volume {lat.volume:.3g} for {len(s)} atoms)"
    if lat.volume / len(s) > MAX_VOLUME_PER_ATOM:
        return f"absurd cell ({lat.volume / len(s):.3g} A^3 per atom; solids hold under 150)"
    if len(s) > 1 and len(s) <= 500:
        import numpy as np

        d = s.distance_matrix
        np.fill_diagonal(d, np.inf)
        if d.min() < 0.5:
            return f"overlapping atoms ({d.min():.2f} A apart)"
    return None


def _strip_oxidation(s):
    if any(hasattr(sp, "oxi_state") for sp in s.composition.elements):
        s = s.copy()
        s.remove_oxidation_states()
    return s


@dataclass
class Canonical:
    cif: str
    formula: str  # cell composition as in the data_ header
    reduced_formula: str
    spacegroup: str
    sg_number: int
    n_atoms: int
    volume_per_fu: float


def canonicalize(item) -> Canonical:
    """Canonicalise CIF text or a Structure; DataError with the reason if it cannot be used."""
    from pymatgen.core import Structure

    if isinstance(item, Structure):
        s = item
    else:
        s = structure_from_cif(str(item), rebuild=False)
    s = _strip_oxidation(s)
    why = structure_problem(s)
    if why:
        raise DataError(why)
    try:
        text = canonical_cif(s)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"no symmetry: {describe(e)}") from None
    formula = header_formula(text)
    sg = spacegroup_of(text)
    num = cif_field(text, "_symmetry_Int_Tables_number")
    from pymatgen.core import Composition

    comp = Composition(formula)
    red, z = comp.get_reduced_formula_and_factor()
    vol = float(cif_field(text, "_cell_volume"))
    return Canonical(text, formula, red, sg, int(num), int(comp.num_atoms), vol / z)


# ---------------------------------------------------------------- reading inputs

TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq", ".json", ".json.gz")


def _is_table(p: Path) -> bool:
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
            frames.append(read_table_cifs(p) if _is_table(p) else pd.DataFrame(read_cif_file(p)))
        else:
            raise DataError(f"input {p} not found")
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


# ---------------------------------------------------------------- many at once

def _canon_one(item):
    try:
        c = canonicalize(item)
        return (c.cif, c.formula, c.reduced_formula, c.spacegroup, c.sg_number, c.n_atoms, c.volume_per_fu, None)
    except SciarError as e:
        return (None,) * 7 + (str(e),)
    except Exception as e:  # a pymatgen bug on one odd file must not stop a corpus
        return (None,) * 7 + (f"unparseable: {describe(e)}",)


def _canon_chunk(items):
    warnings.simplefilter("ignore")
    return [_canon_one(x) for x in items]


CANON_COLUMNS = ["canonical", "formula", "reduced_formula", "spacegroup", "sg_number", "n_atoms", "volume_per_fu", "reason"]


def canonicalize_records(records: pd.DataFrame, workers: int | None = None, progress: bool = True,
                         chunk: int = 64) -> pd.DataFrame:
    """Canonicalise every record's ``cif``; adds :data:`CANON_COLUMNS` (``reason`` set where unusable)."""
    from tqdm.auto import tqdm

    items = records["cif"].tolist()
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    results = []
    bar = tqdm(total=len(items), desc="canonicalise", unit="cif", disable=not progress, mininterval=2.0)
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            for res in ex.map(_canon_chunk, chunks):
                results.extend(res)
                bar.update(len(res))
    else:
        for c in chunks:
            res = _canon_chunk(c)
            results.extend(res)
            bar.update(len(res))
    bar.close()
    out = records.copy()
    cols = list(zip(*results)) if results else [[]] * len(CANON_COLUMNS)
    for name, col in zip(CANON_COLUMNS, cols):
        out[name] = list(col)
    out["sg_number"] = out["sg_number"].astype("Int64")
    out["n_atoms"] = out["n_atoms"].astype("Int64")
    return out


def cache_dir() -> Path:
    """Where canonical corpora are cached (``SCIAR_CACHE`` or the repo's build/ folder)."""
    env = os.environ.get("SCIAR_CACHE")
    from sciar.paths import data_dir

    return Path(env) if env else data_dir().parent / "build" / "crystals"


def load_canonical(paths, workers: int | None = None, progress: bool = True, cache: bool = True) -> pd.DataFrame:
    """Read and canonicalise inputs; results of file inputs are cached by content.

    Returns every record with :data:`CANON_COLUMNS`; rows with a ``reason`` are unusable.
    A shipped corpus table that already has a ``canonical`` column is taken as is.
    """
    from sciar.io import fingerprint, write_table_atomic
    from sciar.tables import read_table

    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = []
    for raw in paths:
        p = Path(raw)
        if p.is_file() and _is_table(p):
            head = read_table(p) if p.name.endswith((".parquet", ".pq")) else None
            if head is not None and "canonical" in head.columns:
                frames.append(head)
                continue
        key = fingerprint([str(p.resolve()) if p.is_dir() else p, f"canon-v{CANON_VERSION}-{SYMPREC}"])
        if p.is_dir():
            files = cif_files_in(p)
            key = fingerprint([*files, f"canon-v{CANON_VERSION}-{SYMPREC}"]) if files else key
        cached = cache_dir() / f"canon-{key}.parquet"
        if cache and cached.is_file():
            try:
                frames.append(pd.read_parquet(cached))
                continue
            except Exception:  # a damaged cache is rebuilt
                pass
        df = canonicalize_records(read_inputs(p), workers=workers, progress=progress)
        if cache:
            try:
                write_table_atomic(df, cached)
            except OSError:
                pass  # a read-only tree still works, only slower
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def reasons_table(df: pd.DataFrame) -> pd.DataFrame:
    """The unusable records and why."""
    bad = df[df["reason"].notna()]
    return bad[["id", "source", "reason"]].reset_index(drop=True)


def dedup(df: pd.DataFrame) -> pd.DataFrame:
    """Keep one structure per (reduced formula, space group): the lowest volume per formula unit."""
    ok = df[df["reason"].isna()].copy() if "reason" in df.columns else df.copy()
    ok = ok.sort_values("volume_per_fu", kind="stable")
    ok = ok.drop_duplicates(["reduced_formula", "sg_number"], keep="first")
    return ok.sort_index()
