"""The shapes adapter as the CLI and the checkpoint loader see it (see :class:`domains.Adapter`)."""

from domains import Adapter


def build_model(ck):
    """The untrained model a checkpoint's config describes: the shape VAE, or a generator (role ``generator``).

    No tokenizer: shapes are continuous latents.
    """
    if ck.domain.get("role") == "generator":
        from domains.shapes.generator import CausalLatentModel
        from sciar.masked import MaskedConfig, MaskedModel
        from sciar.model import ModelConfig

        cfg, mcfg = ModelConfig.from_dict(ck.config["model"]), MaskedConfig.from_dict(ck.config["masked"])
        return MaskedModel(cfg, mcfg) if ck.domain.get("kind") == "masked" else CausalLatentModel(cfg, mcfg)
    from domains.shapes.vae import ShapeVAE, VAEConfig

    return ShapeVAE(VAEConfig(**ck.config["model"]))


ADAPTER = Adapter(
    name="shapes",
    app="domains.shapes.cli:app",
    build_model="domains.shapes.adapter:build_model",
    tokenizer_kind=None,
    checkpoints=("shapes-small",),
)
