"""Speculative decoding: draft several tokens cheaply, check them all in one forward pass of the model.

Two kinds of draft: the model's own multi-token heads (self-speculative, after Medusa and "Your LLM Knows the
Future": ``ModelConfig.mtp_heads`` heads read the last hidden state and propose the tokens 2, 3, ... ahead), or
a smaller model of the same vocabulary (classic speculative decoding, Leviathan et al. / Chen et al. 2023).

Every round a row feeds its next token (sampled exactly from the model's last logits, or left by the last
rejection) and the drafts after it; the pass returns the model's logits after each. Draft ``d`` proposed
from ``q`` is accepted with probability ``min(1, p(d) / q(d))``, where ``p`` is the model's distribution there
after the row's constraint, temperature and top-k/top-p; the first rejected one is replaced by a draw from
``max(p - q, 0)`` (normalised) and the rest are dropped. Each emitted token then has exactly the distribution
plain sampling gives it (the standard rejection-sampling argument, which holds for any proposal ``q``), so the
output distribution is the model's, only faster when drafts are accepted. Tokens the constraint forces are
taken without drafting (their distribution is a point mass), so a round also chains forced runs. Rejected
tokens are undone in the constraint (``rewind``) and their cache slots hidden, as a ragged batch hides its
padding (:mod:`sciar.decode.tokens`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sciar.decode.constraints import Constraint, ConstraintFactory, allowed_mask, single
from sciar.decode.tokens import (CHAIN, Generation, _cached_step, _ends_with, _make_room, filter_logits, ragged_cache,
                                 row_seed, sample_rows)
from sciar.errors import SciarError
from sciar.model import LanguageModel


class _Row:
    """One sequence: its tokens (``fed`` of them in the model's cache, ``dfed`` in the draft's), its constraint,
    its random numbers, and the drafts of the current round (``(token, q or None for forced, allowed mask)``)."""

    def __init__(self, prompt, con, limit, seed):
        self.prompt, self.tokens, self.con, self.limit = list(prompt), list(prompt), con, limit
        self.fed = self.dfed = 0
        self.lps: dict[int, float] = {}
        self.rng = np.random.default_rng(seed)
        self.stopped = self.done = False
        self.drafts: list = []
        self.last = self.heads = None  # the model's logits after the last fed token, and the heads' there

    def take(self, tok: int, stop):
        self.tokens.append(int(tok))
        if self.con is not None:
            self.con.advance(int(tok))
        self._ends(stop)

    def _ends(self, stop):
        new = self.tokens[len(self.prompt):]
        self.stopped = any(_ends_with(new, s) for s in stop)
        self.done = self.stopped or len(self.tokens) >= self.limit

    def forced(self) -> int | None:
        return None if self.done or self.con is None else single(self.con.allowed())

    def force(self, stop, upto: int):
        while len(self.tokens) < upto and (tok := self.forced()) is not None:
            self.take(tok, stop)

    def cut(self, n: int, stop):
        """Drop the last ``n`` tokens (rejected drafts)."""
        if n:
            del self.tokens[-n:]
            if self.con is not None:
                self.con.rewind(n)
            self._ends(stop)

    def needs_pass(self) -> bool:
        return not self.done or any(i not in self.lps for i in range(len(self.prompt), len(self.tokens)))


class _Cache:
    """A ragged KV cache of one model (the target or the draft) over the batch's rows."""

    def __init__(self, model, rows: int, capacity: int):
        p = next(model.parameters())
        dtype = torch.bfloat16 if (p.device.type == "cuda" and p.dtype != torch.float32) else p.dtype
        self.model, self.dev = model, p.device
        self.cache = ragged_cache(model.cfg, rows, capacity, p.device, dtype)
        self.valid = torch.zeros(rows, capacity, dtype=torch.bool, device=p.device)
        self.used = 0

    def feed(self, views, counts) -> tuple[torch.Tensor, int]:
        """Hidden states ``[B, Tc, C]`` of each row's next ``counts`` tokens (right-aligned), and ``Tc``."""
        Tc = max(counts)
        self.cache, self.valid, self.used = _make_room(self.cache, self.valid, self.used, Tc)
        h = _cached_step(self.model.trunk, self.cache, self.valid, self.used, views, counts, Tc)
        self.used += Tc
        return h, Tc

    def hide_last(self, b: int, n: int):
        """Hide the last ``n`` tokens of row ``b`` (rejected drafts)."""
        if n:
            slots = self.valid[b, : self.used].nonzero().flatten()
            self.valid[b, slots[-n:]] = False

    def keep(self, rows: list[int]):
        sel = torch.tensor(rows, device=self.dev)
        self.cache.select_rows(sel)
        self.valid = self.valid[sel]


def _target_probs(logits: torch.Tensor, masks: torch.Tensor | None, temperature, top_k, top_p) -> torch.Tensor:
    if masks is not None:
        logits = logits.masked_fill(~masks, float("-inf"))
    probs = filter_logits(logits.float(), temperature, top_k, top_p).softmax(-1)
    if not torch.isfinite(probs).all():
        raise SciarError("every token was ruled out for a sequence (constraint or filtering left nothing)")
    return probs


def _mask_rows(rows: list[_Row], V: int, dev) -> torch.Tensor:
    m = allowed_mask([r.con for r in rows], V, dev)
    return m if m is not None else torch.ones(len(rows), V, dtype=torch.bool, device=dev)


@torch.no_grad()
def speculative_generate(
    model: LanguageModel,
    prompts: list[list[int]],
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: list[list[int]] | None = None,
    constraints: Sequence[Constraint | None] | ConstraintFactory | None = None,
    seed: int | Sequence[int] | None = None,
    draft: LanguageModel | None = None,
    n_draft: int | None = None,
    stats: dict | None = None,
) -> list[Generation]:
    """Sample one continuation per prompt with drafts verified by the model; same arguments and results as
    :func:`sciar.decode.tokens.generate` (the same distribution, not the same draws for a seed).

    ``draft``: a smaller model of the same vocabulary proposes ``n_draft`` tokens (default 4) per round;
    without it the model's multi-token heads propose ``n_draft`` (default: all its ``mtp_heads``).
    ``stats`` (a dict) receives ``proposed`` and ``accepted`` drafts and the model's forward ``passes``.
    """
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise SciarError("every prompt needs at least one token")
    cfg, V = model.cfg, model.cfg.vocab_size
    if draft is None:
        if not getattr(model, "mtp", None):
            raise SciarError("self-speculative decoding needs a model with multi-token heads (mtp_heads > 0); "
                             "pass a draft model instead")
        n_draft = min(n_draft or cfg.mtp_heads, cfg.mtp_heads)
    else:
        if draft.cfg.vocab_size != V:
            raise SciarError(f"the draft model's vocabulary ({draft.cfg.vocab_size}) is not the model's ({V})")
        n_draft = n_draft or 4
        draft.eval()
    if n_draft < 1:
        raise SciarError("n_draft must be at least 1")
    too_long = [len(p) for p in prompts if len(p) >= cfg.block_size]
    if too_long:
        raise SciarError(f"a prompt of {too_long[0]} tokens leaves no room in the model's context of {cfg.block_size}")
    if seed is None or isinstance(seed, (int, np.integer)):
        base = int(seed) if seed is not None else int(torch.seed())
        seeds = [row_seed(base, i) for i in range(len(prompts))]
    else:
        seeds = [int(s) for s in seed]
    if callable(constraints):
        constraints = [constraints(i) for i in range(len(prompts))]
    elif constraints is None:
        constraints = [None] * len(prompts)
    if len(constraints) != len(prompts) or len(seeds) != len(prompts):
        raise SciarError(f"{len(constraints)} constraints and {len(seeds)} seeds for {len(prompts)} prompts")
    model.eval()
    stop = stop or []
    limit = lambda p: min(len(p) + max_new_tokens, cfg.block_size)  # noqa: E731
    rows = [_Row(p, c, limit(p), s) for p, c, s in zip(prompts, constraints, seeds)]
    for r in rows:
        r.done = len(r.prompt) >= r.limit
        r.force(stop, r.limit)
    cap = max(len(r.tokens) for r in rows) + CHAIN + n_draft + 1
    tgt = _Cache(model, len(rows), cap)
    drf = _Cache(draft, len(rows), cap) if draft is not None else None
    dev = tgt.dev
    live = [r for r in rows if r.needs_pass()]
    stats = stats if stats is not None else {}
    stats.update(proposed=0, accepted=0, passes=0)
    while live:
        _sample_next(live, V, dev, temperature, top_k, top_p, stop)
        _draft(live, model, drf, n_draft, V, dev, temperature, top_k, top_p, stop)
        _verify(live, model, tgt, drf, V, temperature, top_k, top_p, stop, stats)
        keep = [b for b, r in enumerate(live) if r.needs_pass()]
        if len(keep) < len(live) and keep:
            tgt.keep(keep)
            if drf is not None:
                drf.keep(keep)
        live = [live[b] for b in keep]
    return [Generation(r.prompt, r.tokens[len(r.prompt):], float(sum(r.lps[i] for i in range(len(r.prompt), len(r.tokens)))),
                       [r.lps[i] for i in range(len(r.prompt), len(r.tokens))], r.stopped) for r in rows]


def _sample_next(live, V, dev, temperature, top_k, top_p, stop):
    """Rows whose every token is fed take the next one exactly from the model's last logits (then forced ones)."""
    todo = [r for r in live if r.last is not None and not r.done and r.fed == len(r.tokens)]
    if not todo:
        return
    logits = torch.stack([r.last for r in todo])
    probs = _target_probs(logits, _mask_rows(todo, V, dev), temperature, top_k, top_p)
    u = torch.tensor([r.rng.random() for r in todo], dtype=torch.float64, device=dev)
    toks = sample_rows(probs, u).tolist()
    logp = F.log_softmax(logits.float(), -1)
    for r, t, lp in zip(todo, toks, logp[torch.arange(len(todo)), toks].tolist()):
        r.lps[len(r.tokens)] = lp
        r.take(t, stop)


def _draft(live, model, drf, n_draft, V, dev, temperature, top_k, top_p, stop):
    """Each row's drafts of this round after its certain tokens: up to ``n_draft`` proposed ones (forced tokens
    between them cost no proposal), then the forced run that follows, at most CHAIN tokens in all."""
    for r in live:
        r.drafts = []
        r.force(stop, r.fed + CHAIN)
    for step in range(n_draft):
        todo = [r for r in live if r.last is not None and not r.done and len(r.tokens) - r.fed < CHAIN + n_draft]
        if drf is None:  # the heads read the hidden state of the last fed token: offset o uses head o - 2
            todo = [r for r in todo if len(r.tokens) - r.fed + 1 <= n_draft + 1]
            if not todo:
                break
            logits = torch.stack([r.heads[len(r.tokens) - r.fed - 1] for r in todo])
        else:
            todo = [r for r in todo if r.dfed < len(r.tokens) or step == 0]
            if not todo:
                break
            views = [SimpleNamespace(tokens=r.tokens, fed=r.dfed) for r in todo]
            counts = [len(r.tokens) - r.dfed for r in todo]
            if min(counts) == 0:  # nothing new for a row (cannot happen after _sample_next): skip it
                todo = [r for r, c in zip(todo, counts) if c]
                views = [v for v, c in zip(views, counts) if c]
                counts = [c for c in counts if c]
                if not todo:
                    break
            rows_idx = [live.index(r) for r in todo]
            h, Tc = _draft_pass(drf, live, rows_idx, views, counts)
            logits = drf.model.head(h[:, -1])
            for r in todo:
                r.dfed = len(r.tokens)
        masks = _mask_rows(todo, V, dev)
        q = _target_probs(logits, masks, temperature, top_k, top_p)
        u = torch.tensor([r.rng.random() for r in todo], dtype=torch.float64, device=dev)
        toks = sample_rows(q, u).tolist()
        for b, (r, t) in enumerate(zip(todo, toks)):
            r.drafts.append((len(r.tokens), t, q[b], masks[b]))
            r.take(t, stop)
            # forced tokens after a draft need no proposal: they are drafts with a point-mass q
            while len(r.tokens) - r.fed < CHAIN + n_draft and (f := r.forced()) is not None:
                r.drafts.append((len(r.tokens), f, None, None))
                r.take(f, stop)


def _draft_pass(drf, live, rows_idx, views, counts):
    """One pass of the draft model over some rows of the batch (the others feed nothing: hidden slots)."""
    all_views = [SimpleNamespace(tokens=r.tokens, fed=r.dfed) for r in live]
    all_counts = [0] * len(live)
    for i, v, c in zip(rows_idx, views, counts):
        all_views[i], all_counts[i] = v, c
    Tc = max(all_counts)
    # rows feeding nothing take one hidden dummy slot each (the step needs a token per row): mark it invalid
    pad = [i for i, c in enumerate(all_counts) if c == 0]
    for i in pad:
        all_views[i] = SimpleNamespace(tokens=[0], fed=0)
        all_counts[i] = 1
    h, Tc = drf.feed(all_views, all_counts)
    for i in pad:
        drf.valid[i, drf.used - 1] = False
    return h[rows_idx], Tc


def _verify(live, model, tgt, drf, V, temperature, top_k, top_p, stop, stats):
    """One pass of the model over every row's unfed tokens: accept or replace the drafts, keep the logits."""
    counts = [len(r.tokens) - r.fed for r in live]
    pad = [b for b, c in enumerate(counts) if c == 0]
    views = [r if c else SimpleNamespace(tokens=[0], fed=0) for r, c in zip(live, counts)]
    h, Tc = tgt.feed(views, [max(c, 1) for c in counts])
    for b in pad:
        tgt.valid[b, tgt.used - 1] = False
    stats["passes"] += 1
    logits = model.head(h).float()  # [B, Tc, V]
    logp = F.log_softmax(logits, -1)

    fed0 = [r.fed for r in live]

    def col(b, i):  # the column of row b's token i in this pass
        return Tc - counts[b] + (i - fed0[b])

    # the model's distribution at every proposed draft, in one batch
    items = [(b, d) for b, r in enumerate(live) for d in r.drafts if d[2] is not None]
    if items:
        lg = torch.stack([logits[b, col(b, d[0] - 1)] for b, d in items])
        masks = torch.stack([d[3] for _, d in items])
        p = _target_probs(lg, masks, temperature, top_k, top_p)
        q = torch.stack([d[2] for _, d in items])
        pos = {(b, d[0]): n for n, (b, d) in enumerate(items)}
        tok = torch.tensor([d[1] for _, d in items], device=p.device)
        ratio = (p.gather(1, tok[:, None]) / q.gather(1, tok[:, None])).squeeze(1).tolist()
    last_cols = []
    for b, r in enumerate(live):
        c = counts[b]
        reject = None
        for i, t, qd, _ in r.drafts:
            if qd is None:
                continue
            stats["proposed"] += 1
            if not r.rng.random() < min(1.0, ratio[pos[(b, i)]]):
                reject = i
                stats["proposed"] += sum(d[2] is not None for d in r.drafts if d[0] > i)
                break
            stats["accepted"] += 1
        fed_before = r.fed
        if reject is not None:
            n = pos[(b, reject)]
            resid = (p[n] - q[n]).clamp(min=0)
            if not resid.sum() > 0:
                resid = p[n]
            new = int(sample_rows(resid[None], torch.tensor([r.rng.random()], dtype=torch.float64, device=p.device))[0])
            dropped = len(r.tokens) - reject
            r.cut(dropped, stop)
            tgt.hide_last(b, dropped)
            if drf is not None and r.dfed > reject:
                drf.hide_last(live.index(r), r.dfed - reject)
                r.dfed = reject
            r.fed = reject
            r.lps[reject] = float(logp[b, col(b, reject - 1), new])
            r.take(new, stop)
        else:
            r.fed = len(r.tokens)
        for i in range(max(fed_before + 1, len(r.prompt)), min(r.fed + 1, len(r.tokens))):
            if i not in r.lps:
                r.lps[i] = float(logp[b, col(b, i - 1), r.tokens[i]])
        last_cols.append(col(b, r.fed - 1) if c else None)
        r.drafts = []
    idx = [b for b, cl in enumerate(last_cols) if cl is not None]
    if idx:
        hs = h[idx, [last_cols[b] for b in idx]]
        lasts = model.head(hs).float()
        heads = model.mtp_logits(hs).float() if getattr(model, "mtp", None) and drf is None else None
        for n, b in enumerate(idx):
            live[b].last = lasts[n]
            live[b].heads = heads[n] if heads is not None else None


def with_heads(model: LanguageModel, n: int) -> LanguageModel:
    """A copy of ``model`` with ``n`` new multi-token heads (zero-initialised) and its own weights frozen: what
    Medusa-style training of the heads alone starts from (``sciar.train.train`` trains what requires grad)."""
    from dataclasses import replace

    if getattr(model, "mtp", None):
        raise SciarError(f"the model already has {model.cfg.mtp_heads} multi-token heads")
    new = LanguageModel(replace(model.cfg, mtp_heads=n, dropout=0.0), tied=model.head.tied)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("mtp.") for k in missing):
        raise SciarError(f"weights do not fit the model with heads (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, p in new.named_parameters():
        p.requires_grad_(name.startswith("mtp."))
    return new
