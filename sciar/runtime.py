"""The process a model runs in: CPU threads for torch, and the size of a module."""

from __future__ import annotations


def set_threads(n: int | None) -> None:
    """Use ``n`` CPU threads for torch's operators; ``None`` or 0 leaves torch's default (one per core).

    On a busy machine, or for small models whose operators are too short to split, 1 is often fastest."""
    if n:
        import torch

        torch.set_num_threads(int(n))


def count_parameters(module, trainable_only: bool = False) -> int:
    """How many numbers ``module`` (a ``torch.nn.Module``) learns; a weight shared by two layers (a tied
    embedding and output head) counts once. ``trainable_only``: those with ``requires_grad`` only."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
