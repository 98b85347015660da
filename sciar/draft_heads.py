"""Draft heads for self-speculative decoding: extra heads on the trunk's last hidden state that propose the
tokens after the next one, read by the shared LM head (``ModelConfig.mtp_heads``, ``mtp_kind``).

- parallel (Medusa): one :class:`MTPHead` per distance, head i proposing the token i + 2 ahead;
- sequential (the sampler of "Your LLM Knows the Future", Hydra's sequentially dependent heads, EAGLE without
  attention): one :class:`DraftStep` applied token after token, so each draft is conditioned on the ones before.

:func:`head_predictions` gives both kinds' teacher-forced predictions at every position: their training loss
(:func:`draft_loss`) and the per-head validation of :func:`sciar.decode.speculative.fit_heads` read it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MTPHead(nn.Module):
    """One extra head of multi-token prediction (Medusa-style): a residual SiLU layer on the final hidden
    state whose output the shared LM head reads; zero-initialised, so it starts as the next-token head."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.fc = nn.Linear(n_embd, n_embd, bias=False)
        nn.init.zeros_(self.fc.weight)

    def forward(self, h):
        return h + F.silu(self.fc(h))


class DraftStep(nn.Module):
    """The sequential draft head: from the state that predicted a token and that token's embedding, the state
    that predicts the next one, read by the shared LM head. Starting from the trunk's last hidden state and
    applied once per token, each draft is conditioned on the tokens drafted before it, which parallel heads cannot
    be. Zero-initialised output, so it starts as the identity."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.fc = nn.Linear(2 * n_embd, 2 * n_embd, bias=False)
        self.proj = nn.Linear(2 * n_embd, n_embd, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, g, e):
        return g + self.proj(F.silu(self.fc(torch.cat([g, e], -1))))


def make_draft_heads(cfg) -> nn.Module | None:
    """The draft heads a ModelConfig asks for (None without ``mtp_heads``)."""
    if not cfg.mtp_heads:
        return None
    if cfg.mtp_kind == "sequential":
        return DraftStep(cfg.n_embd)
    return nn.ModuleList(MTPHead(cfg.n_embd) for _ in range(cfg.mtp_heads))


def parallel_logits(model, h: torch.Tensor) -> torch.Tensor:
    """Logits of the parallel heads, ``[..., mtp_heads, vocab]``: head i predicts the token ``i + 2`` ahead."""
    w = torch.cat([m.fc.weight for m in model.mtp])  # every head's layer in one matmul (decoding calls this per pass)
    u = F.linear(h, w).unflatten(-1, (len(model.mtp), h.shape[-1]))
    return model.head(h.unsqueeze(-2) + F.silu(u))


def head_predictions(model, h: torch.Tensor, targets: torch.Tensor):
    """Per head i, teacher-forced: (logits ``[B, n, V]`` at positions t, the targets of t + 1 + i there, -1 where
    not scored, and the trunk's hidden states that predict those targets, ``[B, n, C]``). Parallel head i reads
    the hidden state at t; the sequential step k = i + 1 steps from it through the true tokens t + 1 .. t + k, and
    a chain through a position without a target (-1) stops there."""
    if not model.sequential_draft:
        for i, m in enumerate(model.mtp):
            shift = i + 1
            if targets.shape[1] <= shift:
                break
            yield model.head(m(h[:, :-shift])), targets[:, shift:], h[:, shift:]
        return
    T = h.shape[1]
    valid = targets >= 0
    tok = targets.clamp(min=0)
    g, ok = h, valid
    for k in range(1, model.cfg.mtp_heads + 1):
        n = T - k
        if n <= 0:
            break
        g = model.draft_step(g[:, :n], tok[:, k - 1: k - 1 + n])
        ok = ok[:, :n] & valid[:, k: k + n]
        if not ok.any():
            break
        yield model.head(g), targets[:, k: k + n].masked_fill(~ok, -1), h[:, k: k + n]


def draft_loss(model, h: torch.Tensor, targets: torch.Tensor, distill: bool = False) -> torch.Tensor:
    """Sum over the heads of their loss on :func:`head_predictions`: cross-entropy against the data, or with
    ``distill`` against the model's own next-token distribution at the drafted position (the trunk frozen: the
    self-distillation of Medusa-2 and Hydra). A draft is accepted with probability ``sum min(p, q)`` of the
    model's ``p`` and the draft's ``q``, so ``q`` should be the model's distribution, not the data's.
    (EAGLE also regresses the trunk's hidden state in the sequential head; on a trunk whose states do not yet
    predict the data that term fights the cross-entropy, so it is left out.)"""
    total = h.new_zeros(())
    for logits, t, h_next in head_predictions(model, h, targets):
        logits, t = logits.reshape(-1, logits.size(-1)).float(), t.reshape(-1)
        if not distill:
            total = total + F.cross_entropy(logits, t, ignore_index=-1)
            continue
        ok = t >= 0
        with torch.no_grad():
            p = F.softmax(model.head(h_next.reshape(-1, h_next.size(-1))[ok]).float(), -1)
        total = total - (p * F.log_softmax(logits[ok], -1)).sum(-1).mean()
    return total
