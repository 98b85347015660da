"""An exponential moving average of a model's weights (MAR samples with it).

After every optimizer step ``ema = decay * ema + (1 - decay) * weights`` for each parameter
(no warm-up of the decay); buffers are copied as they are. The average lives in a frozen copy
of the model, so it is saved, loaded and evaluated like the model itself: tied weights stay
tied and the file's tensor names are the model's.
"""

from __future__ import annotations

import copy

import torch

from sciar.errors import SciarError


class EMA:
    """The moving average of ``model``'s weights, starting at their current values."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise SciarError(f"EMA decay must lie strictly between 0 and 1, got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        """One step of the average towards ``model``'s current weights (the model the copy was made of)."""
        avg, cur = list(self.model.parameters()), list(model.parameters())
        if len(avg) != len(cur):
            raise SciarError("EMA update from a model of a different structure")
        torch._foreach_lerp_(avg, [p.detach() for p in cur], 1.0 - self.decay)
        for b, src in zip(self.model.buffers(), model.buffers()):
            b.copy_(src)
