"""Domain adapters: each subpackage turns one kind of scientific object into what the core eats, and back.

The core (``sciar``) knows nothing of any domain. An adapter is a subpackage of ``domains`` with an
:class:`Adapter` object (conventionally ``ADAPTER`` in ``<domain>/adapter.py``) that the CLI and the
checkpoint loader use, named in :data:`DOMAINS`. Adding a domain is one line there plus that object::

    # domains/shapes/adapter.py
    from domains import Adapter

    ADAPTER = Adapter(name="shapes", app="domains.shapes.cli:app", build_model="domains.shapes.model:build",
                      checkpoints=("shapes-small",))

Importing ``domains`` registers every adapter with the core: its model builder under its name
(:func:`sciar.checkpoint.register_model`, so that :func:`sciar.checkpoint.load_model` builds the right
model for a checkpoint's ``domain.json``) and any tokenizer kinds it brings
(:func:`sciar.tokenizer.register_tokenizer`). Everything is named by import path and imported on first
use, so ``sciar --help`` stays fast; keep ``<domain>/cli.py`` light too (heavy libraries inside commands).

Besides the adapter object, a subpackage supplies in plain modules of its own:

- **representation**: a tokenizer (a :class:`sciar.tokenizer.VocabTokenizer` configured with the domain's
  vocabulary) for token domains, or an embedding and head (``nn.Module``) that map continuous objects to and
  from the model width, wrapped with :class:`sciar.model.Transformer` in one module whose
  ``forward(**batch)`` returns the training loss;
- **data**: readers for the domain's files (tables through :func:`sciar.tables.read_table`) and a batch
  source for :func:`sciar.train.train` (e.g. :class:`sciar.data.TokenWindows`), with bad input reported as
  :class:`sciar.errors.DataError`;
- **decoding**: generated tokens or vectors back to domain objects, using :func:`sciar.decode.tokens.generate`
  (with a constraint per row, :mod:`sciar.decode.constraints`) or its own sampler for continuous outputs;
- **validity checks and metrics** for its objects;
- **a typer app**: option parsing and printing only, the logic in library modules.

Checkpoints carry ``domain.json`` with the adapter's name, so a checkpoint of one domain is refused by another.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

# CLI name -> module holding the adapter's ``ADAPTER`` (one line per domain)
DOMAINS = {
    "crystal": "domains.crystals.adapter",
    "timeseries": "domains.timeseries.adapter",
    "mechanics": "domains.mechanics.adapter",
}


@dataclass(frozen=True)
class Adapter:
    """What the CLI and the checkpoint loader need of a domain adapter.

    ``name``: the CLI group (``sciar <name> ...``) and the ``domain`` its checkpoints record.
    ``app``: import path of its typer app (``"module:attribute"``).
    ``build_model``: a function, or its import path, ``(ck: sciar.checkpoint.Checkpoint) -> torch.nn.Module``
    that builds the untrained model ``ck.config`` describes (weights are loaded by the core).
    ``tokenizer_kind``: the ``kind`` in its checkpoints' ``tokenizer.json``; ``None`` for continuous domains.
    ``tokenizers``: tokenizer kinds the adapter brings, kind -> class (or import path) with ``from_dict``.
    ``checkpoints``: names of its checkpoints shipped in ``data/checkpoints``.
    """

    name: str
    app: str
    build_model: str | Callable[..., Any]
    tokenizer_kind: str | None = None
    tokenizers: Mapping[str, Any] = field(default_factory=dict)
    checkpoints: tuple[str, ...] = ()

    def typer_app(self):
        """The adapter's typer app (imports its CLI module)."""
        from sciar.registry import import_object

        return import_object(self.app)

    def register(self) -> None:
        """Tell the core how to build this domain's models and read its tokenizers."""
        from sciar.checkpoint import register_model
        from sciar.tokenizer import register_tokenizer

        register_model(self.name, self.build_model, self.tokenizer_kind)
        for kind, cls in self.tokenizers.items():
            register_tokenizer(kind, cls)

    def load(self, checkpoint, device: str = "cpu"):
        """A checkpoint of this domain (a directory or a shipped name): (model in eval mode, Checkpoint)."""
        from sciar.checkpoint import load_model

        return load_model(checkpoint, self.name, device)


def adapters() -> dict[str, Adapter]:
    """Every installed adapter of :data:`DOMAINS`, by name (an adapter whose package is absent is left out)."""
    found = {}
    for name, module in DOMAINS.items():
        if importlib.util.find_spec(module) is None:
            continue
        adapter = getattr(importlib.import_module(module), "ADAPTER", None)
        if not isinstance(adapter, Adapter) or adapter.name != name:
            raise TypeError(f"{module}.ADAPTER must be an Adapter named {name!r}")
        found[name] = adapter
    return found


for _adapter in adapters().values():
    _adapter.register()
