"""sciar: one autoregressive transformer core for scientific generative modelling."""

__version__ = "0.1.0"

from sciar.errors import CheckpointError, DataError, SciarError  # noqa: E402

__all__ = ["__version__", "SciarError", "CheckpointError", "DataError"]
