"""Condition inputs for classifier-free guidance: class-label embeddings with a null class, and condition dropout.

A model trained with its condition dropped at random (``p`` = 0.1 in MAR) learns the
unconditioned distribution beside the conditioned one; generation then runs both and
mixes their predictions with a guidance scale. The dropped rows see a *null* condition:
the null class (index ``num_classes``) here, the learned null context of the trunk's
cross-attention (:meth:`sciar.model.Transformer.encode_context`), or a learned null
vector of the caller's own.

With several conditions (a class and a point cloud, say) each is dropped independently with
its own probability (:func:`drop_conditions`), so the model also learns each condition
without the others and guidance may act on one condition while the others stay.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from sciar.errors import SciarError


def drop_rows(batch: int, p: float, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Which rows lose their condition: ``[batch]`` bool, each True with probability ``p``."""
    if not 0.0 <= p < 1.0:
        raise SciarError(f"condition dropout must be in [0, 1), got {p}")
    if p == 0.0:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    return torch.rand(batch, device=device, generator=generator) < p


def drop_conditions(batch: int, each: Mapping[str, float], joint: float = 0.0, device=None,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Which rows lose which condition: ``{name: [batch] bool}``.

    Condition ``name`` is dropped with probability ``each[name]``, independently of the others,
    and every condition of a row is dropped together with probability ``joint``; so a condition
    is lost with probability ``1 - (1 - joint) (1 - each[name])``.
    """
    together = drop_rows(batch, joint, device, generator)
    return {name: together | drop_rows(batch, p, device, generator) for name, p in each.items()}


class ClassEmbedding(nn.Module):
    """Class labels ``0 .. num_classes-1`` to vectors; index ``num_classes`` is the null class.

    In training, ``forward(labels, drop=drop_rows(B, 0.1))`` gives the dropped rows the null
    class; ``forward(None, batch=B)`` gives it to B rows (the unconditioned half under guidance).
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if num_classes < 1:
            raise SciarError("a class embedding needs at least one class")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    @property
    def null(self) -> int:
        return self.num_classes

    def check(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` as a long tensor ``[B]``, every one a known class (or a one-line SciarError)."""
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.table.weight.device)
        if labels.dim() != 1:
            raise SciarError(f"class labels must be one per row ([batch]), got shape {list(labels.shape)}")
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            raise SciarError(f"class index {int(labels[bad][0])} out of range: this model knows classes "
                             f"0..{self.num_classes - 1}")
        return labels

    def forward(self, labels: torch.Tensor | None, drop: torch.Tensor | None = None, batch: int | None = None) -> torch.Tensor:
        """Vectors ``[B, dim]`` of ``labels [B]``; rows where ``drop [B]`` (bool) is True get the null class."""
        if labels is None:
            labels = torch.full((batch or 1,), self.null, dtype=torch.long, device=self.table.weight.device)
        else:
            labels = self.check(labels)
            if drop is not None:
                labels = labels.masked_fill(drop.to(labels.device), self.null)
        return self.table(labels)
