"""The time-series adapter as the CLI and the checkpoint loader see it (see :class:`domains.Adapter`)."""

from domains import Adapter


def build_model(ck):
    """The untrained forecaster a checkpoint's config describes (no tokenizer: segments are embedded)."""
    from domains.timeseries.model import build_model as build

    return build(ck.config)


ADAPTER = Adapter(
    name="timeseries",
    app="domains.timeseries.cli:app",
    build_model="domains.timeseries.adapter:build_model",
    tokenizer_kind=None,
    checkpoints=("timeseries-pretrained",),
)
