"""The next-token loss of token language models: cross-entropy over the positions with a target, optionally mixed
with EMO's earth mover's distance (Ren et al. 2023) on a frozen token embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def emo_transport(logits: torch.Tensor, targets: torch.Tensor, cost_embedding: torch.Tensor) -> torch.Tensor:
    """EMO's transport cost per position: moving the model's next-token distribution ``q`` onto the target
    token ``y`` costs ``sum_i q_i (1 - cos(e_i, e_y))`` (all mass must reach ``y``, so this is the exact
    earth mover's distance to a one-hot target), with ``e`` the rows of a frozen embedding."""
    e = F.normalize(cost_embedding.float(), dim=-1)
    q = logits.float().softmax(-1)
    return 1 - ((q @ e) * e[targets.clamp(min=0)]).sum(-1)


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, emo_cost: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss over the positions whose target is not negative (padding, prompt positions): cross-entropy, or with
    ``emo_cost`` (a frozen ``[vocab, d]`` embedding) EMO's mix as its authors write it, per token
    ``(CE + min(CE / EMD, 3) EMD) / 2`` with the ratio not differentiated."""
    flat, tgt = logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1)
    if emo_cost is None:
        return F.cross_entropy(flat, tgt, ignore_index=-1)
    ce = F.cross_entropy(flat, tgt, ignore_index=-1, reduction="none")
    emd = emo_transport(flat, tgt, emo_cost)
    keep = (tgt >= 0).float()
    per = 0.5 * (ce + torch.clamp(ce / (emd + 1e-10), max=3.0).detach() * emd)
    return (per * keep).sum() / keep.sum().clamp(min=1)
