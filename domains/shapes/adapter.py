"""The shapes adapter as the CLI and the checkpoint loader see it (see :class:`domains.Adapter`)."""

from domains import Adapter


def build_model(ck):
    """The untrained shape VAE a checkpoint's config describes (no tokenizer: shapes are continuous latents)."""
    from domains.shapes.vae import ShapeVAE, VAEConfig

    return ShapeVAE(VAEConfig(**ck.config["model"]))


ADAPTER = Adapter(
    name="shapes",
    app="domains.shapes.cli:app",
    build_model="domains.shapes.adapter:build_model",
    tokenizer_kind=None,
)
