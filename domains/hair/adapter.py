"""The hair adapter as the CLI and the checkpoint loader see it (see :class:`domains.Adapter`)."""

from domains import Adapter


def build_model(ck):
    """Hair has no model yet: its checkpoints cannot be built (a one-line error, not a traceback)."""
    from sciar.errors import CheckpointError

    raise CheckpointError(f"{ck.path}: this version of sciar has no hair model to load it into")


ADAPTER = Adapter(
    name="hair",
    app="domains.hair.cli:app",
    build_model="domains.hair.adapter:build_model",
    tokenizer_kind=None,
)
