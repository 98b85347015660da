"""Mesh collections: finding mesh files in a folder, their classes and their train/val/test splits.

Any folder of OBJ, PLY, STL, OFF or GLB files is a collection. A file's class is
the first folder under the root on its path that is not ``train`` or ``test``
(none for files at the root); a ``train`` or ``test`` folder on the path puts it
in that split, otherwise it is training data. SHREC'16 as re-meshed for MeshCNN
(``<class>/{train,test}/*.obj``) reads as 30 classes of 16 train and 4 test.
From each class's training files a fixed, seeded choice is held out as the
validation split (for early stopping and every setting); test is scored once.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from domains.shapes.mesh import MESH_SUFFIXES
from sciar.errors import DataError

SPLIT_FOLDERS = ("train", "test")
VAL_PER_CLASS = 2
SPLIT_SEED = 0


@dataclass(frozen=True)
class MeshFile:
    path: Path
    relative: str  # path under the collection's root, with '/' separators
    label: str  # the class ('' when the collection has no class folders)
    split: str  # train, val or test


def _label_and_split(relative: Path) -> tuple[str, str]:
    folders = [p for p in relative.parts[:-1]]
    split = next((p.lower() for p in folders if p.lower() in SPLIT_FOLDERS), "train")
    label = next((p for p in folders if p.lower() not in SPLIT_FOLDERS), "")
    return label, split


def find_meshes(root: str | Path, val_per_class: int = VAL_PER_CLASS, seed: int = SPLIT_SEED) -> list[MeshFile]:
    """Every mesh file under ``root`` (sorted), with its class and split; raises :class:`DataError` if none.

    ``val_per_class`` training files of each class move to ``val`` (chosen with ``seed``;
    none from a class with fewer than ``val_per_class + 1`` training files).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of meshes")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MESH_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not paths:
        raise DataError(f"{root}: no mesh files ({', '.join(MESH_SUFFIXES)}) in it or below it")
    rows = []
    for p in paths:
        rel = p.relative_to(root)
        rows.append([p, rel.as_posix(), *_label_and_split(rel)])
    rng = np.random.default_rng(seed)
    for label in sorted({r[2] for r in rows}):
        train = [r for r in rows if r[2] == label and r[3] == "train"]
        if val_per_class and len(train) > val_per_class:
            for i in sorted(rng.choice(len(train), val_per_class, replace=False)):
                train[i][3] = "val"
    return [MeshFile(*r) for r in rows]


def first_per_class(files: list[MeshFile], n: int) -> list[MeshFile]:
    """The first ``n`` files of each class, in the given order."""
    counts: dict[str, int] = {}
    out = []
    for f in files:
        counts[f.label] = counts.get(f.label, 0) + 1
        if counts[f.label] <= n:
            out.append(f)
    return out


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Unpack a ``.tar``/``.tar.gz`` of meshes into ``dest`` (once; an unpacked copy is reused) and return ``dest``."""
    archive, dest = Path(archive), Path(dest)
    done = dest / ".unpacked"
    if done.is_file() and done.read_text() == archive.name:
        return dest
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")  # 'data' refuses absolute paths, links out of dest, devices
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{archive}: cannot unpack ({e})") from None
    done.write_text(archive.name)
    return dest


def mesh_source(path: str | Path, unpack_to: str | Path) -> Path:
    """A folder of meshes from a folder, or from an archive (unpacked under ``unpack_to``)."""
    path = Path(path)
    if path.is_file() and (path.name.endswith((".tar", ".tar.gz", ".tgz"))):
        path = extract_archive(path, Path(unpack_to) / path.name.split(".")[0])
        inner = [p for p in path.iterdir() if not p.name.startswith(".")]
        if len(inner) == 1 and inner[0].is_dir():  # an archive of one folder: its subfolders are the classes
            path = inner[0]
    return path
