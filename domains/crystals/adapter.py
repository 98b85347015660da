"""The crystals adapter as the CLI and the checkpoint loader see it (see :class:`domains.Adapter`)."""

from domains import Adapter
from domains.crystals import DOMAIN

# a crystal checkpoint is a plain language model over the CIF vocabulary (a core "vocab" tokenizer)
ADAPTER = Adapter(
    name=DOMAIN,
    app="domains.crystals.cli:app",
    build_model="sciar.checkpoint:build_language_model",
    tokenizer_kind="vocab",
    checkpoints=("crystal-small", "crystal-medium"),
)
