"""Where sciar looks for shipped data and checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

from sciar.errors import CheckpointError


def data_dir() -> Path:
    """The project's ``data/`` folder (override with ``SCIAR_DATA``)."""
    env = os.environ.get("SCIAR_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


def checkpoint_search_path() -> list[Path]:
    """Folders searched for a checkpoint given by name: ``SCIAR_CHECKPOINTS`` (os.pathsep-separated), then the shipped ones."""
    env = os.environ.get("SCIAR_CHECKPOINTS", "")
    return [Path(p) for p in env.split(os.pathsep) if p] + [data_dir() / "checkpoints"]


def find_checkpoint(name: str | os.PathLike) -> Path:
    """A checkpoint directory from a path, or a name looked up in :func:`checkpoint_search_path`."""
    p = Path(name)
    if p.is_dir():
        return p
    for folder in checkpoint_search_path():
        if (folder / str(name)).is_dir():
            return folder / str(name)
    where = ", ".join(str(f) for f in checkpoint_search_path())
    raise CheckpointError(f"checkpoint {name} not found (looked in the current folder and {where})")
