"""The mechanics adapter as the CLI and the checkpoint loader see it (see :class:`domains.Adapter`)."""

from domains import Adapter

# a mechanics checkpoint is a plain language model over the task grammar's vocabulary (a core "vocab" tokenizer)
ADAPTER = Adapter(
    name="mechanics",
    app="domains.mechanics.cli:app",
    build_model="sciar.checkpoint:build_language_model",
    tokenizer_kind="vocab",
    checkpoints=("mechanics-tiny",),
)
