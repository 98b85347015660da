"""Speculative decoding: draft several tokens cheaply, check them all in one forward pass of the model.

Two kinds of draft: the model's own multi-token heads (self-speculative, after Medusa and "Your LLM Knows the
Future": ``ModelConfig.mtp_heads`` heads read the last hidden state and propose the tokens 2, 3, ... ahead), or
a smaller model of the same vocabulary (classic speculative decoding, Leviathan et al. / Chen et al. 2023).

Every round a row samples its next token exactly from the model's last logits (unless a rejection left one),
takes the forced run after it, then drafts; one pass of the model over the row's unfed tokens and drafts returns
the logits after each. Draft ``d`` proposed from ``q`` is accepted with probability ``min(1, p(d) / q(d))``,
where ``p`` is the model's distribution there after the row's constraint, temperature and top-k/top-p; the first
rejected one is replaced by a draw from ``max(p - q, 0)`` (normalised) and the rest are dropped. Each emitted
token then has exactly the distribution plain sampling gives it (the standard rejection-sampling argument, which
holds for any proposal ``q``), so the output distribution is the model's, only faster when drafts are accepted.

The constraint only ever advances by tokens that are kept: drafts are checked against it in verification, draft by
draft, as it advances by the accepted ones, so nothing is undone in it (a grammar written as a generator could
only be rewound by replaying the whole row, which cost a third of the time at batch 1). The price is that only
the first draft's proposal is masked by the constraint. Rejected drafts' cache slots are hidden, as a ragged batch
hides its padding (:mod:`sciar.decode.tokens`). How many tokens a round drafts follows their measured acceptance
(:class:`_Depth`).
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
    """One sequence: its certain tokens (``fed`` of them in the model's cache, ``dfed`` in the draft's), its
    constraint (advanced by the certain tokens only), its random numbers, and this round's drafts
    (``(token, q)``, after the certain tokens)."""

    def __init__(self, prompt, con, limit, seed):
        self.prompt, self.tokens, self.con, self.limit = list(prompt), list(prompt), con, limit
        self.fed = self.dfed = 0
        self.lps: dict[int, float] = {}
        self.rng = np.random.default_rng(seed)
        self.stopped = self.done = False
        self.drafts: list[tuple[int, torch.Tensor]] = []
        self.last = self.heads = None  # the model's logits after the last fed token, and the heads' there
        self.state = None  # sequential heads: the draft state after the certain tokens and this round's drafts

    def take(self, tok: int, stop):
        self.tokens.append(int(tok))
        if self.con is not None:
            self.con.advance(int(tok))
        n = len(self.tokens) - len(self.prompt)
        self.stopped = any(len(s) <= n and _ends_with(self.tokens, s) for s in stop)
        self.done = self.stopped or len(self.tokens) >= self.limit

    def forced(self) -> int | None:
        return None if self.done or self.con is None else single(self.con.allowed())

    def force(self, stop, upto: int):
        while len(self.tokens) < upto and (tok := self.forced()) is not None:
            self.take(tok, stop)

    def view(self) -> SimpleNamespace:
        """The tokens a pass feeds from (certain ones, then drafts) and how many the cache holds."""
        return SimpleNamespace(tokens=self.tokens + [t for t, _ in self.drafts], fed=self.fed)

    def needs_pass(self) -> bool:
        return not self.done or len(self.lps) < len(self.tokens) - len(self.prompt)  # a log-probability missing


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
        """Hidden states ``[B, Tc, C]`` of each row's next ``counts`` tokens (right-aligned), and ``Tc``; a row
        with a count of 0 feeds one hidden dummy slot."""
        dummy = [b for b, c in enumerate(counts) if c == 0]
        views = [SimpleNamespace(tokens=[0], fed=0) if c == 0 else v for v, c in zip(views, counts)]
        counts = [max(c, 1) for c in counts]
        Tc = max(counts)
        self.cache, self.valid, self.used = _make_room(self.cache, self.valid, self.used, Tc)
        h = _cached_step(self.model.trunk, self.cache, self.valid, self.used, views, counts, Tc)
        self.used += Tc
        for b in dummy:
            self.valid[b, self.used - 1] = False
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


def _mask_rows(rows: list[_Row], V: int, dev) -> torch.Tensor | None:
    return allowed_mask([r.con for r in rows], V, dev)


class _Depth:
    """How far to draft: draft ``j`` of a round (0-based) is made only while the estimated chance that it is
    accepted, the product of the acceptance rates of drafts ``0..j`` so far in this call (optimistic, 1 before
    any try), is at least ``min_gain`` tokens; a draft that would rarely be reached costs a fed token for little.
    The depth depends only on past rounds, so the rejection-sampling argument still holds."""

    def __init__(self, n: int, min_gain: float):
        self.tried, self.acc, self.n, self.min_gain = np.zeros(n), np.zeros(n), n, min_gain

    def depth(self) -> int:
        reach = np.cumprod((self.acc + 1) / (self.tried + 1))
        return int(max(1, (reach >= self.min_gain).sum()))

    def record(self, j: int, ok: bool):
        self.tried[j] += 1
        self.acc[j] += ok


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
    min_gain: float = 0.1,
    stats: dict | None = None,
) -> list[Generation]:
    """Sample one continuation per prompt with drafts verified by the model; same arguments and results as
    :func:`sciar.decode.tokens.generate` (the same distribution, not the same draws for a seed).

    ``draft``: a smaller model of the same vocabulary proposes up to ``n_draft`` tokens (default 4) per round;
    without it the model's multi-token heads propose up to ``n_draft`` (default: all its ``mtp_heads``).
    ``min_gain``: a round drafts only as deep as the drafts' measured acceptance makes worth a fed token
    (:class:`_Depth`; 0 always drafts ``n_draft``). ``stats`` (a dict) receives ``proposed`` and ``accepted``
    drafts and the model's forward ``passes``.
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
    depth = _Depth(n_draft, min_gain)
    filt = (temperature, top_k, top_p)
    live = [r for r in rows if r.needs_pass()]
    stats = stats if stats is not None else {}
    stats.update(proposed=0, accepted=0, passes=0)
    while live:
        _sample_next(live, V, tgt.dev, filt, stop)
        _draft(live, drf, depth.depth(), V, tgt.dev, filt, stop, model)
        _verify(live, model, tgt, drf, V, filt, stop, stats, depth)
        keep = [b for b, r in enumerate(live) if r.needs_pass()]
        if len(keep) < len(live) and keep:
            tgt.keep(keep)
            if drf is not None:
                drf.keep(keep)
        live = [live[b] for b in keep]
    return [Generation(r.prompt, r.tokens[len(r.prompt):], float(sum(r.lps[i] for i in range(len(r.prompt), len(r.tokens)))),
                       [r.lps[i] for i in range(len(r.prompt), len(r.tokens))], r.stopped) for r in rows]


def _sample_next(live, V, dev, filt, stop):
    """Rows whose every token is fed take the next one exactly from the model's last logits."""
    todo = [r for r in live if r.last is not None and not r.done and r.fed == len(r.tokens)]
    if not todo:
        return
    logits = torch.stack([r.last for r in todo])
    probs = _target_probs(logits, _mask_rows(todo, V, dev), *filt)
    u = torch.tensor([r.rng.random() for r in todo], dtype=torch.float64, device=dev)
    toks = sample_rows(probs, u).tolist()
    logp = F.log_softmax(logits.float(), -1)
    for r, t, lp in zip(todo, toks, logp[torch.arange(len(todo)), toks].tolist()):
        r.lps[len(r.tokens)] = lp
        r.take(t, stop)


def _draft(live, drf, depth, V, dev, filt, stop, model):
    """Each row takes the forced run after its certain tokens (at most CHAIN unfed), then drafts up to ``depth``
    tokens. The constraint is not advanced by drafts (so nothing is ever undone in it): the first draft's proposal
    is masked by the constraint, later ones are not (a draft the grammar rules out is rejected in verification,
    where the model's probability of it is 0). Heads draft the token ``o`` places after the last fed one only for
    ``o <= mtp_heads + 1``: parallel head ``o - 2`` reads that token's hidden state; the sequential head steps from
    it through the certain unfed tokens and each draft in turn."""
    for r in live:
        r.drafts = []
        r.force(stop, r.fed + CHAIN)
    K = model.cfg.mtp_heads
    seq = drf is None and model.sequential_draft
    if seq:
        _step_states(model, [(r, r.heads, r.tokens[r.fed:]) for r in live
                             if r.last is not None and not r.done and len(r.tokens) - r.fed <= K])
    for j in range(depth):
        todo = [r for r in live if r.last is not None and not r.done and len(r.drafts) == j
                and len(r.tokens) + j < r.limit and (j > 0 or r.forced() is None)]
        if drf is None:
            todo = [r for r in todo if 0 <= len(r.tokens) + j - r.fed - 1 < K]
            if not todo:
                break
            if seq:
                if j:
                    _step_states(model, [(r, r.state, [r.drafts[-1][0]]) for r in todo])
                logits = model.head(torch.stack([r.state for r in todo])).float()
            else:
                logits = torch.stack([r.heads[len(r.tokens) + j - r.fed - 1] for r in todo])
        else:
            if not todo:
                break
            views = [SimpleNamespace(tokens=r.view().tokens, fed=r.dfed) for r in live]
            ids = {id(r) for r in todo}
            counts = [len(v.tokens) - v.fed if id(r) in ids else 0 for v, r in zip(views, live)]
            if not any(counts):
                break
            h, _ = drf.feed(views, counts)
            for r, v, c in zip(live, views, counts):
                r.dfed = len(v.tokens) if c else r.dfed
            todo = [r for r, c in zip(live, counts) if c]
            logits = drf.model.head(h[[b for b, c in enumerate(counts) if c], -1])
        q = _target_probs(logits, _mask_rows(todo, V, dev) if j == 0 else None, *filt)
        u = torch.tensor([r.rng.random() for r in todo], dtype=torch.float64, device=dev)
        for b, (r, t) in enumerate(zip(todo, sample_rows(q, u).tolist())):
            r.drafts.append((t, q[b]))


def _step_states(model, items):
    """Sequential heads: for each ``(row, state, tokens)``, ``row.state`` becomes ``state`` stepped through
    ``tokens``, all rows' steps batched."""
    for r, g, _ in items:
        r.state = g
    for s in range(max((len(t) for _, _, t in items), default=0)):
        rows = [(r, t[s]) for r, _, t in items if len(t) > s]
        g = model.draft_step(torch.stack([r.state for r, _ in rows]),
                             torch.tensor([t for _, t in rows], device=rows[0][0].state.device))
        for n, (r, _) in enumerate(rows):
            r.state = g[n]


def _verify(live, model, tgt, drf, V, filt, stop, stats, depth):
    """One pass of the model over every row's unfed tokens and drafts; then, draft by draft across the rows,
    accept each with probability ``min(1, p/q)`` (``p`` under the constraint advanced by the tokens accepted so
    far) or replace the first rejected one from ``max(p - q, 0)``; keep the logits after the last accepted token."""
    views = [r.view() for r in live]
    counts = [len(v.tokens) - r.fed for v, r in zip(views, live)]
    h, Tc = tgt.feed(views, counts)
    stats["passes"] += 1
    logits = model.head(h).float()  # [B, Tc, V]
    logp = F.log_softmax(logits, -1)
    fed0 = [r.fed for r in live]
    certain = [len(r.tokens) for r in live]

    def col(b, i):  # the column of row b's token i in this pass
        return Tc - counts[b] + (i - fed0[b])

    for b, r in enumerate(live):  # log-probabilities of the certain tokens this pass predicts
        for i in range(max(fed0[b] + 1, len(r.prompt)), certain[b]):
            r.lps[i] = float(logp[b, col(b, i - 1), r.tokens[i]])
    open_ = [b for b, r in enumerate(live) if r.drafts]
    accepted = [0] * len(live)
    for j in range(max((len(r.drafts) for r in live), default=0)):
        open_ = [b for b in open_ if len(live[b].drafts) > j and not live[b].done]
        if not open_:
            break
        rs = [live[b] for b in open_]
        cols = [col(b, len(live[b].tokens) - 1) for b in open_]
        p = _target_probs(logits[open_, cols], _mask_rows(rs, V, tgt.dev), *filt)
        q = torch.stack([r.drafts[j][1] for r in rs])
        tok = torch.tensor([r.drafts[j][0] for r in rs], device=p.device)
        ratio = (p.gather(1, tok[:, None]) / q.gather(1, tok[:, None])).squeeze(1).tolist()
        still = []
        for n, (b, r) in enumerate(zip(open_, rs)):
            ok = r.rng.random() < min(1.0, ratio[n])
            depth.record(j, ok)
            if ok:
                t = r.drafts[j][0]
                accepted[b] += 1
                still.append(b)
            else:
                resid = (p[n] - q[n]).clamp(min=0)
                if not resid.sum() > 0:
                    resid = p[n]
                t = int(sample_rows(resid[None], torch.tensor([r.rng.random()], dtype=torch.float64, device=p.device))[0])
            r.lps[len(r.tokens)] = float(logp[b, cols[n], t])
            r.take(t, stop)
        open_ = still
    for b, r in enumerate(live):
        a, d = accepted[b], len(r.drafts)
        stats["proposed"] += d
        stats["accepted"] += a
        tgt.hide_last(b, d - a)  # drafts after the first rejection (or after a stop): slots hidden
        r.fed = certain[b] + a if counts[b] else r.fed
        if drf is not None and r.dfed > r.fed:
            drf.hide_last(b, r.dfed - r.fed)
            r.dfed = r.fed
        r.drafts = []
    idx = [b for b, c in enumerate(counts) if c]
    if idx:
        cols = [col(b, live[b].fed - 1) for b in idx]
        hs, lasts = h[idx, cols], logits[idx, cols]
        heads = None
        if getattr(model, "mtp", None) is not None and drf is None:  # sequential heads keep the trunk's state
            heads = hs if model.sequential_draft else model.mtp_logits(hs).float()
        for n, b in enumerate(idx):
            live[b].last = lasts[n]
            live[b].heads = heads[n] if heads is not None else None


def with_heads(model: LanguageModel, n: int, kind: str = "parallel") -> LanguageModel:
    """A copy of ``model`` with ``n`` new multi-token heads (zero-initialised; ``kind`` "sequential": one draft
    step unrolled ``n`` times, see :class:`sciar.draft_heads.DraftStep`) and its own weights frozen: what Medusa-style
    training of the heads alone starts from (``sciar.train.train`` trains what requires grad)."""
    from dataclasses import replace

    if getattr(model, "mtp", None) is not None:
        raise SciarError(f"the model already has {model.cfg.mtp_heads} multi-token heads")
    new = LanguageModel(replace(model.cfg, mtp_heads=n, mtp_kind=kind, dropout=0.0), tied=model.head.tied)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("mtp.") for k in missing):
        raise SciarError(f"weights do not fit the model with heads (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, p in new.named_parameters():
        p.requires_grad_(name.startswith("mtp."))
    return new


def fit_heads(model: LanguageModel, source, windows: int, epochs: int = 3, batch: int = 4, lr: float = 2e-3,
              seed: int = 0, distill: bool = False, progress: bool = True) -> dict:
    """Train the multi-token heads of ``model`` alone on its frozen trunk (Medusa-style, after :func:`with_heads`).

    The trunk's hidden states of ``windows`` training windows of ``source`` (a :class:`sciar.data.TokenWindows`)
    are computed once and every epoch reuses them: the trunk is frozen, so recomputing them each step (as
    :func:`sciar.train.train` would) costs several times the heads' own training. AdamW with a cosine schedule.
    ``distill``: the heads learn the model's own distributions, not the data (:func:`sciar.draft_heads.draft_loss`).
    Returns each head's validation cross-entropy and top-1 agreement with the data, and its overlap with the model,
    ``sum min(p, q)`` at temperature 1: the chance that its draft is accepted (on up to 8 validation windows).
    """
    from tqdm.auto import tqdm

    from sciar.draft_heads import head_predictions
    from sciar.train import TrainConfig, lr_at

    if not getattr(model, "mtp", None):
        raise SciarError("the model has no multi-token heads to train (see with_heads)")
    gen = torch.Generator().manual_seed(seed)
    model.eval()

    def states(split, n):
        hs, ys = [], []
        for i in tqdm(range(0, n, batch), desc=f"trunk states ({split})", disable=not progress):
            b = source.get_batch(split, min(batch, n - i), gen)
            with torch.no_grad():
                hs.append(model.trunk(b["idx"]).to(torch.bfloat16))
            ys.append(b["targets"])
        return torch.cat(hs), torch.cat(ys)

    h, y = states("train", windows)
    hv, yv = states("val", min(8, windows)) if source.has_val else (None, None)
    opt = torch.optim.AdamW(model.mtp.parameters(), lr=lr, weight_decay=0.0)
    steps = epochs * -(-len(h) // batch)
    schedule = TrainConfig(lr=lr, min_lr=0.1 * lr, warmup_steps=0, max_steps=steps)  # the trainer's cosine, no warmup
    bar = tqdm(total=steps, desc="heads", disable=not progress)
    loss, step = None, 0
    for _ in range(epochs):
        for idx in torch.randperm(len(h), generator=gen).split(batch):
            loss = model.mtp_loss(h[idx].float(), y[idx], distill)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, schedule)
            opt.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    bar.close()
    out = {"windows": windows, "epochs": epochs, "steps": steps, "distill": distill, "train_loss": float(loss.detach())}
    if hv is not None:
        with torch.no_grad():
            for i, (logits, t, h_next) in enumerate(head_predictions(model, hv.float(), yv)):
                ok = t >= 0
                out[f"head_{i}_val_loss"] = float(F.cross_entropy(logits[ok].float(), t[ok]))
                out[f"head_{i}_val_top1"] = float((logits.argmax(-1)[ok] == t[ok]).float().mean())
                p, q = model.head(h_next[ok]).float().softmax(-1), logits[ok].float().softmax(-1)
                out[f"head_{i}_val_overlap"] = float(torch.minimum(p, q).sum(-1).mean())
    return out
