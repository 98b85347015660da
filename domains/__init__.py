"""Domain adapters: each subpackage turns one kind of scientific object into what the core eats, and back.

The core (``sciar``) knows nothing of any domain. An adapter is a subpackage of
``domains`` that supplies, in plain modules of its own:

- **representation**: a tokenizer (a :class:`sciar.tokenizer.VocabTokenizer`
  configured with the domain's vocabulary) for token domains, or an embedding
  and head (``nn.Module``) that map continuous objects to and from the model
  width, wrapped with :class:`sciar.model.Transformer` in one module whose
  ``forward(**batch)`` returns the training loss;
- **data**: readers for the domain's files and a batch source for
  :func:`sciar.train.train` (e.g. :class:`sciar.data.TokenWindows`), with bad
  input reported as :class:`sciar.errors.DataError`;
- **decoding**: generated tokens or vectors back to domain objects, using
  :func:`sciar.decode.tokens.generate` (and a constraint per row,
  :mod:`sciar.decode.constraints`) or its own sampler for continuous outputs;
- **validity checks and metrics** for its objects;
- **a typer app** in ``<domain>/cli.py`` named ``app``, registered in
  :data:`DOMAINS`. Keep that module light: import heavy libraries inside commands,
  so that ``sciar --help`` stays fast.

Checkpoints carry ``domain.json`` with the adapter's name (the key in
:data:`DOMAINS`), so a checkpoint of one domain is refused by another.
"""

# CLI name -> module holding the adapter's typer ``app``
DOMAINS = {
    "crystal": "domains.crystals.cli",
    "timeseries": "domains.timeseries.cli",
}
