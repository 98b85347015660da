"""The hair adapter as the CLI and the checkpoint loader see it (see :class:`domains.Adapter`)."""

from domains import Adapter

ADAPTER = Adapter(
    name="hair",
    app="domains.hair.cli:app",
    build_model="domains.hair.training:build_model",
    tokenizer_kind=None,
    checkpoints=("hair-tiny",),
)
