"""Batch sources for token domains: windows over a concatenated token stream."""

from __future__ import annotations

import numpy as np
import torch

from sciar.errors import DataError


class TokenWindows:
    """Random windows of ``block_size + 1`` tokens over concatenated documents.

    ``starts``: the offsets a window may start at (document boundaries, as
    CrystaLLM starts windows at ``data_``); default every offset. A window that
    runs past the end of the stream is padded (targets -1, ignored by the loss).
    """

    def __init__(self, train_ids, block_size: int, val_ids=None, train_starts=None, val_starts=None):
        self.block_size = block_size
        self.splits = {"train": self._prep(train_ids, train_starts, "train")}
        if val_ids is not None and len(val_ids):
            self.splits["val"] = self._prep(val_ids, val_starts, "val")

    @property
    def has_val(self) -> bool:
        return "val" in self.splits

    def _prep(self, ids, starts, name):
        ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        if ids.numel() < 2:
            raise DataError(f"the {name} split has fewer than two tokens")
        if starts is None:
            starts = torch.arange(max(1, ids.numel() - 1))
        starts = torch.as_tensor(np.asarray(starts), dtype=torch.long)
        starts = starts[starts < ids.numel() - 1]
        if starts.numel() == 0:
            raise DataError(f"the {name} split has no window starts")
        return ids, starts

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids, starts = self.splits[split]
        pick = starts[torch.randint(len(starts), (batch_size,), generator=generator)]
        T = self.block_size
        offs = pick[:, None] + torch.arange(T + 1)[None, :]
        valid = offs < ids.numel()
        win = ids[offs.clamp(max=ids.numel() - 1)]
        x = win[:, :-1].clone()
        y = win[:, 1:].masked_fill(~valid[:, 1:], -1)
        return {"idx": x, "targets": y}
