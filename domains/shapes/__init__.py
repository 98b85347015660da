"""3D shapes after MAR-3D: closed meshes, their samples and metrics, and (to come) latent-token generation.

See ``domains/shapes/README.md``. The CLI is ``domains.shapes.cli`` (``sciar shapes ...``).
"""
