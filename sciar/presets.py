"""Named presets: a model's shape and its training budget under one name, with a user's overrides on top.

An adapter keeps a table ``{name: {"model": {...ModelConfig fields}, "train": {...TrainConfig fields}}}``;
:func:`choose` picks one by name (an unknown name is a one-line error listing the known ones) and
:func:`train_budget` lays the options a user gave (``--steps``, ``--batch-size``, ``--lr``) over its budget.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from sciar.errors import SciarError


def choose(presets: Mapping[str, Any], name: str, what: str = "preset") -> Any:
    """A deep copy of ``presets[name]`` (callers may change it), or a :class:`SciarError` naming the choices."""
    if name not in presets:
        raise SciarError(f"unknown {what} {name!r} (one of {', '.join(presets)})")
    return copy.deepcopy(presets[name])


def override(base: Mapping[str, Any], **over) -> dict:
    """A copy of ``base`` with the values of ``over`` that are not ``None`` (an option the user left out)."""
    return {**base, **{k: v for k, v in over.items() if v is not None}}


def train_budget(base: Mapping[str, Any], steps: int | None = None, batch_size: int | None = None,
                 lr: float | None = None) -> dict:
    """A preset's training budget (``TrainConfig`` fields) with a user's overrides.

    A shorter run (``steps``) still evaluates, saves and warms up within its steps (``eval_every``,
    ``save_every`` at most ``steps``, ``warmup_steps`` at most a tenth of them); a new peak rate ``lr``
    brings its floor along (``min_lr = lr / 10``), as every preset has it.
    """
    out = dict(base)
    if steps is not None:
        out["max_steps"] = steps
        for k in ("eval_every", "save_every"):
            if k in out:
                out[k] = min(out[k], max(1, steps))
        if "warmup_steps" in out:
            out["warmup_steps"] = min(out["warmup_steps"], max(1, steps // 10))
    if batch_size is not None:
        out["batch_size"] = batch_size
    if lr is not None:
        out["lr"], out["min_lr"] = lr, lr / 10
    return out
