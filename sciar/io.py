"""Atomic file writes and data fingerprints: nothing half-written is ever left under a final name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

from sciar.errors import SciarError


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp's 0600 would make every output private to its writer
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _check_output(path, folder: bool):
    if path is None:  # an optional output not asked for
        return None
    path = Path(path)
    if path.exists():
        if path.is_dir() != folder:
            raise SciarError(f"{path} exists and is {'not a folder' if folder else 'a folder, not a file'}")
        there = path if folder else path.parent  # files are replaced by a rename in their folder
    else:
        there = next(p for p in path.parents if p.exists())  # "." or "/" at the latest
        if not there.is_dir():
            raise SciarError(f"{there} is a file, so {path} cannot be written")
    if not os.access(there, os.W_OK | os.X_OK):
        raise SciarError(f"no permission to write in {there}")
    return path


def output_folder(path):
    """``path`` if it can be (or is) an output folder, else a :class:`SciarError`; a typer callback too.

    Checked before the work starts: a search or training run must not end in a failed mkdir.
    """
    return _check_output(path, folder=True)


def output_file(path):
    """``path`` if a file can be written there, else a :class:`SciarError`; a typer callback too."""
    return _check_output(path, folder=False)


def umask() -> int:
    """The process's file-creation mask (os.umask can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj):
    write_text_atomic(path, json.dumps(obj, indent=1, default=str) + "\n")


def write_table_atomic(df, path: str | Path):
    """Write a DataFrame as parquet or CSV (by suffix) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(items) -> str:
    """A short sha256 over items in order: ``Path`` objects by file content, bytes and strings as they are."""
    h = hashlib.sha256()
    for item in items:
        if isinstance(item, Path):
            h.update(sha256_file(item).encode() if item.is_file() else str(item).encode())
        else:
            h.update(item if isinstance(item, bytes) else str(item).encode())
    return h.hexdigest()[:16]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display needed), imported on first use so that
    commands which draw nothing do not pay for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure as a PNG at ``path`` atomically (a failed draw leaves no partial file, and an
    older PNG there stays whole), then close the figure so that long runs do not pile them up in memory."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        pyplot().close(fig)
    return path
