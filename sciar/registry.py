"""Registries that adapters fill: the core looks things up by name and never lists a domain's.

An entry is an object or the import path of one (``"package.module:attribute"``), imported on its first
lookup, so that registering costs nothing at start-up (``sciar --help`` stays fast). A name nobody has
registered makes the core import the adapters' package (:data:`ADAPTER_PACKAGE`, whose import registers
every adapter) once before it gives up with a one-line error that lists the known names.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from sciar.errors import SciarError

ADAPTER_PACKAGE = "domains"  # importing it registers every adapter (see its __init__)


def import_object(path: str) -> Any:
    """The object an import path ``"package.module:attribute"`` names."""
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def discover_adapters() -> None:
    """Import the adapters' package (once; Python caches it), so that their registrations run."""
    try:
        if importlib.util.find_spec(ADAPTER_PACKAGE) is not None:
            importlib.import_module(ADAPTER_PACKAGE)
    except ImportError:  # installed without adapters: only what the caller registered is known
        pass


class Registry:
    """Names to objects (or to their import paths). ``what`` names an entry in errors ("tokenizer kind");
    ``error`` is the exception class an unknown name raises."""

    def __init__(self, what: str, error: type[SciarError] = SciarError):
        self.what, self.error = what, error
        self._entries: dict[str, Any] = {}

    def register(self, name: str, obj: Any) -> None:
        """Add (or replace) ``name``; ``obj`` may be an import path, resolved on first use."""
        if not isinstance(name, str) or not name:
            raise SciarError(f"a {self.what} needs a non-empty name (got {name!r})")
        self._entries[name] = obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def get(self, name: str) -> Any:
        """The entry of ``name``, imported if it was given as a path; an unknown name is a one-line error."""
        if name not in self._entries:
            discover_adapters()
        if name not in self._entries:
            known = ", ".join(self.names()) or "none"
            raise self.error(f"unknown {self.what} {name!r} (known: {known})")
        obj = self._entries[name]
        if isinstance(obj, str):
            try:
                obj = self._entries[name] = import_object(obj)
            except (ImportError, AttributeError) as e:
                raise self.error(f"the {self.what} {name!r} names {obj}, which cannot be imported ({e})") from None
        return obj
