"""Cached decoding of continuous and multi-field tokens.

A continuous token is one input embedding at the model width. The caller's step function maps the trunk's
last hidden state to what its head produces (a forecast segment, a tuple of fields with an end flag, a latent
drawn by a diffusion head) and to the embedding of that, which the next step reads. The sequence lives in a
:class:`sciar.model.KVCache`, so a step runs the trunk over one new position instead of the whole sequence.

When the sequence would outgrow ``window`` positions the cache is refilled: the trunk re-reads the sink (the
first ``sink`` positions, e.g. an in-context prompt, kept at the front of every window) and the last
``keep - sink`` positions, with positions restarting after the sink, as the trunk was trained on windows that
start at 0. The sink's keys and values are kept: attention is causal, so they do not depend on what follows.
With ``keep == window`` (the default) each step past the window re-reads the last window, exactly what
re-running the trunk on the sliding window gives; a smaller ``keep`` refills once every
``window - keep + 1`` steps, at the price of a shorter context just after each refill.

A row that reports ``done`` leaves the batch: its cache rows, its part of the trunk's conditions and its window
are dropped, so later steps run the trunk and the step function on the rows still running only, and its
values stay what they were at its last step.

No gradients flow through the loop (the cache is written in place): it decodes, it does not train.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from sciar.errors import SciarError
from sciar.model import ContextKV, KVCache, Transformer


@dataclass
class Step:
    """What a step function returns for the current position of every row."""

    values: torch.Tensor  # [b, ...]: what the head produced for the b running rows (stacked over steps)
    embeds: torch.Tensor | None  # [b, n_embd]: the input embedding of those values, read by the next step (None at
    # the last step, which is never read back)
    done: torch.Tensor | None = None  # [b] bool: rows that ended at this step (e.g. an end flag); None: no row did


# (last hidden state [b, n_embd] of the b rows still running, step index, those rows' indices [b] in the batch)
# -> Step of those rows; a step function that keeps per-row state indexes it with the rows
StepFn = Callable[[torch.Tensor, int, torch.Tensor], Step]


@dataclass
class Decoded:
    values: torch.Tensor  # [B, n, ...]: the values of every step run (n < steps when every row ended early); a row
    # that ended keeps its last value in the steps after its end
    lengths: torch.Tensor  # [B] long: steps up to and including each row's end (n for a row that never ended)
    refills: int  # how many times the window slid and the cache was refilled


@torch.no_grad()
def decode_continuous(
    trunk: Transformer,
    prefix: torch.Tensor,
    step: StepFn,
    steps: int,
    *,
    window: int | None = None,
    keep: int | None = None,
    sink: int = 0,
    trunk_kwargs: dict | None = None,
) -> Decoded:
    """Run ``step`` for up to ``steps`` positions after ``prefix`` ``[B, P, n_embd]`` (input embeddings).

    ``window``: the most positions the trunk reads at once (default: its context, ``block_size``).
    ``keep``: positions a refill keeps, the sink included (default: ``window``). ``sink``: leading prefix
    positions kept at the front of every window. ``trunk_kwargs``: passed to every trunk call, e.g. a condition
    (``{"cond": c}`` for adaptive layer norm, ``{"context": trunk.encode_context(tokens)}`` for cross-attention,
    its keys and values computed once).
    A row that reports ``done`` stops: later steps neither run it nor change its values, and ``lengths`` says
    where it ended; the loop stops early once every row has.
    """
    if prefix.dim() != 3 or prefix.shape[1] < 1:
        raise SciarError("the prefix must be input embeddings [batch, positions >= 1, n_embd]")
    B, P, _ = prefix.shape
    cfg = trunk.cfg
    W = window or cfg.block_size
    keep = W if keep is None else keep
    if W > cfg.block_size:
        raise SciarError(f"a window of {W} positions exceeds the model's context of {cfg.block_size}")
    if not 0 <= sink < keep <= W or sink > P:
        raise SciarError(f"need 0 <= sink ({sink}) < keep ({keep}) <= window ({W}) and a sink within the prefix ({P})")
    if steps < 1:
        raise SciarError("decode at least one step")
    kw = trunk_kwargs or {}
    cache = KVCache(cfg, B, W, device=prefix.device, dtype=prefix.dtype)
    tail = deque(prefix[:, sink:].unbind(1), maxlen=W - sink)  # the sliding part: what a refill may re-read
    refills = 0
    first = prefix
    if P > W:  # the prefix alone outgrows the window: start from its sink and its last positions
        first = torch.cat([prefix[:, :sink], prefix[:, P - (keep - sink) :]], dim=1)
        refills += 1
    h = trunk(embeds=first, cache=cache, **kw)[:, -1]
    values = []
    ended = torch.full((B,), -1, dtype=torch.long, device=prefix.device)
    rows = torch.arange(B, device=prefix.device)  # the rows still running
    for i in range(steps):
        out = step(h, i, rows)
        if not values:
            values.append(out.values)
        else:  # the rows that ended keep their last values
            values.append(values[-1].index_put((rows,), out.values.to(values[-1].dtype)))
        embeds = out.embeds
        if out.done is not None and bool(out.done.any()):
            done = out.done.to(rows.device)
            ended[rows[done]] = i
            if bool(done.all()):
                break
            if i < steps - 1:
                stay = (~done).nonzero().flatten()
                rows, embeds = rows[stay], embeds[stay]
                cache.select_rows(stay)
                tail = deque((t[stay] for t in tail), maxlen=tail.maxlen)
                kw = {k: _take_rows(v, stay) for k, v in kw.items()}
        if i == steps - 1:
            break
        tail.append(embeds)
        if cache.length + 1 > W:
            cache.length = sink  # keys and values past the sink are rewritten from here
            x = torch.stack(list(tail)[-(keep - sink) :], dim=1)
            refills += 1
        else:
            x = embeds[:, None]
        h = trunk(embeds=x, cache=cache, **kw)[:, -1]
    n = len(values)
    lengths = torch.where(ended >= 0, ended + 1, torch.full_like(ended, n))
    return Decoded(torch.stack(values, dim=1), lengths, refills)


def _take_rows(x, rows: torch.Tensor):
    """Those rows of a per-row trunk argument (a condition tensor, or cross-attention keys and values)."""
    if isinstance(x, ContextKV):
        return x.rows(rows)
    return x[rows] if isinstance(x, torch.Tensor) else x


def randn_rows(generators: Sequence[torch.Generator], shape: Sequence[int], device=None,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard normal noise ``[len(generators), *shape]``, row ``r`` drawn from ``generators[r]`` alone, so a
    sampled row does not depend on which batch it was decoded in."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=device, dtype=dtype) for g in generators])
