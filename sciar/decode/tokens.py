"""Cached token decoding: temperature, top-k/p, stop sequences, a constraint per row.

:func:`generate` samples continuations of token prompts as one batch with a preallocated KV cache.
Prompts of different lengths are left-padded, the padding hidden by a visibility mask over the cached
and new keys, with positions counted per row. Each row has its own random numbers (seeded by the run's
seed and the row's index; a token is drawn by inverting the row's CDF at the row's next uniform), so a
row's output does not depend on the batch it was decoded in. The
per-token work stays on the device: masking, filtering and sampling run there and only the chosen ids
(and their log-probabilities) come back. A row's constraint (:mod:`sciar.decode.constraints`) that
allows exactly one token forces it; such runs of forced tokens are fed ``CHAIN`` at a time per forward pass, their
slots in the batch's other rows hidden like the left padding (the cache is compacted when the hidden
slots pile up).

:class:`Decoder` is the lower-level piece (prefill a prompt, then step one token at a time, fork a
cached prefix into several rows). On CUDA its decode step can run as a CUDA graph
(``torch.compile(mode="reduce-overhead")`` over a static cache), which removes the per-token launch
overhead that dominates small-model decoding on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from sciar.decode.constraints import Constraint, ConstraintFactory, allowed_mask, single
from sciar.errors import SciarError
from sciar.model import KVCache, LanguageModel


@dataclass
class Generation:
    prompt: list[int]
    tokens: list[int]  # the new tokens, stop sequence included
    logprob: float  # sum of the model's log-probabilities of the new tokens (temperature 1, no filtering)
    token_logprobs: list[float] = field(repr=False)
    stopped: bool  # ended by a stop sequence (else by max_new_tokens or the context)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
    """Apply temperature, top-k and nucleus (top-p) filtering; returns logits (masked with -inf)."""
    if temperature <= 0:
        raise SciarError("temperature must be positive (use top_k=1 for greedy decoding)")
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def row_seed(seed: int, row: int) -> int:
    """The seed of row ``row`` of a run seeded ``seed`` (numpy's SeedSequence mixes the two)."""
    return int(np.random.SeedSequence([seed % 2**63, row]).generate_state(1, np.uint64)[0] % 2**63)


def row_uniforms(seeds: Sequence[int], n: int) -> torch.Tensor:
    """[rows, n] uniforms in [0, 1), row i from its own generator seeded ``seeds[i]`` (drawn on the CPU, so
    that a seed gives the same numbers on every device)."""
    out = torch.empty(len(seeds), n, dtype=torch.float64)
    for i, s in enumerate(seeds):
        out[i] = torch.rand(n, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
    return out


def sample_rows(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs`` [B, V] (unnormalised, >= 0) by inverting its CDF at ``u`` [B]."""
    cdf = probs.double().cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
    # u * total can round up to the total: stay on the last token with mass
    last = torch.where(probs > 0, torch.arange(probs.shape[1], device=probs.device), 0).amax(-1)
    return torch.minimum(idx, last)


class Decoder:
    """Incremental decoding of one batch with a KV cache.

    ``prefill(ids)`` runs the prompt and returns the last logits; ``step(next_ids)``
    appends one token per row. ``fork(rows, repeat)`` copies the cached prefix of some
    rows into a new decoder (tree search expands a node without re-encoding it).
    """

    def __init__(self, model: LanguageModel, batch: int, capacity: int, cache: KVCache | None = None, graphs: bool = False):
        self.model = model
        p = next(model.parameters())
        self.device = p.device
        self.dtype = torch.bfloat16 if (self.device.type == "cuda" and p.dtype != torch.float32) else p.dtype
        self.cache = cache or KVCache(model.cfg, batch, capacity, self.device, self.dtype)
        self.graphs = graphs and self.device.type == "cuda"
        self._step_fn = None

    @property
    def length(self) -> int:
        return self.cache.length

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(ids.to(self.device), cache=self.cache)
        return logits[:, -1].float()

    @torch.no_grad()
    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        if self.cache.length >= self.cache.capacity:
            raise SciarError(f"decoding past the cache capacity of {self.cache.capacity}")
        if not self.graphs:
            return self.model(next_ids.view(-1, 1).to(self.device), cache=self.cache)[:, -1].float()
        if self._step_fn is None:
            # fixed addresses for the cache, so the captured graph writes into the same buffers each replay
            torch._dynamo.mark_static_address(self.cache.k)
            torch._dynamo.mark_static_address(self.cache.v)
            self.cache.pos = torch.tensor([self.cache.length], device=self.device)
            self._ids = torch.zeros(self.cache.batch, 1, dtype=torch.long, device=self.device)
            self._step_fn = torch.compile(self._static_step, mode="reduce-overhead", fullgraph=True)
        self._ids.copy_(next_ids.view(-1, 1))
        self.cache.pos.fill_(self.cache.length)
        out = self._step_fn(self._ids).clone()
        self.cache.length += 1
        return out

    def _static_step(self, ids):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            return self.model(ids, cache=self.cache)[:, -1].float()

    def fork(self, rows=None, repeat: int = 1, capacity: int | None = None) -> "Decoder":
        return Decoder(self.model, 0, 0, cache=self.cache.fork(rows, repeat, capacity or self.cache.capacity))


def ragged_cache(cfg, batch: int, capacity: int, device, dtype) -> KVCache:
    """A cache whose storage may exceed the context: rows with hidden slots (left padding, padding
    of other rows' forced runs) need more slots than their positions, which stay within the context."""
    cache = KVCache(cfg, batch, min(capacity, cfg.block_size), device, dtype)
    if capacity > cfg.block_size:
        cache.grow(capacity, 0)
    return cache


def padded_forward(model, seqs: list[list[int]], cache=None) -> torch.Tensor:
    """Logits [B, T, V] of left-padded sequences of different lengths (the padding hidden), in one
    forward pass; the last column is every row's next-token logits."""
    dev = next(model.parameters()).device
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.tensor(s)
    pad = torch.tensor([T - len(s) for s in seqs], device=dev)
    pos = (torch.arange(T, device=dev)[None, :] - pad[:, None]).clamp(0, model.cfg.block_size - 1)
    vis = (torch.arange(T, device=dev)[None, :] >= pad[:, None])[:, None, :] & torch.ones(
        T, T, dtype=torch.bool, device=dev).tril()[None]
    vis |= torch.eye(T, dtype=torch.bool, device=dev)[None]  # padding rows see themselves: no NaN
    return model(ids.to(dev), cache=cache, positions=pos, mask=vis)


def _ends_with(seq: list[int], stop: list[int]) -> bool:
    return len(seq) >= len(stop) and seq[-len(stop):] == stop


@torch.no_grad()
def generate(
    model: LanguageModel,
    prompts: list[list[int]],
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: list[list[int]] | None = None,
    constraints: Sequence[Constraint | None] | ConstraintFactory | None = None,
    seed: int | Sequence[int] | None = None,
    use_cache: bool = True,
    max_batch: int = 256,
) -> list[Generation]:
    """Sample one continuation per prompt (repeat a prompt to sample it several times).

    Returns one :class:`Generation` per prompt, in order. Generation stops at the first stop
    sequence, after ``max_new_tokens``, or at the model's context. ``constraints``: one constraint
    per prompt (None: that row is free), or a factory called with each row's index. ``seed``: the
    run's seed (row i then draws from ``row_seed(seed, i)``), or one seed per row. ``use_cache=False``
    re-runs every whole sequence each step (the slow reference).
    """
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise SciarError("every prompt needs at least one token")
    block = model.cfg.block_size
    too_long = [len(p) for p in prompts if len(p) >= block]
    if too_long:
        raise SciarError(f"a prompt of {too_long[0]} tokens leaves no room in the model's context of {block}")
    if seed is None or isinstance(seed, (int, np.integer)):
        base = int(seed) if seed is not None else int(torch.seed())
        seeds = [row_seed(base, i) for i in range(len(prompts))]
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != len(prompts):
            raise SciarError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    if callable(constraints):
        constraints = [constraints(i) for i in range(len(prompts))]
    elif constraints is None:
        constraints = [None] * len(prompts)
    elif len(constraints) != len(prompts):
        raise SciarError(f"{len(constraints)} constraints for {len(prompts)} prompts")
    model.eval()
    out: list[Generation] = []
    for c in range(0, len(prompts), max_batch):
        sl = slice(c, c + max_batch)
        out += _generate_batch(model, prompts[sl], seeds[sl], list(constraints[sl]), max_new_tokens, temperature,
                               top_k, top_p, stop or [], use_cache)
    return out


# Forced tokens fed per row and forward pass: longer runs wait for the next pass, so that rows in a long forced
# stretch (a CIF's loop headers) do not make every other row of the batch compute that many padding slots.
CHAIN = 16


class _Row:
    """One sequence being decoded: its tokens, how many of them the cache holds, its constraint."""

    __slots__ = ("prompt", "tokens", "lps", "con", "limit", "fed", "draws", "stopped", "done")

    def __init__(self, prompt, con, limit):
        self.prompt, self.con, self.limit = list(prompt), con, limit
        self.tokens = list(prompt)
        self.lps: list[float] = []  # log-probabilities of the new tokens known so far (in order)
        self.fed = 0  # tokens fed to the model (in the cache)
        self.draws = 0  # random numbers used
        self.stopped = self.done = False

    @property
    def new(self) -> list[int]:
        return self.tokens[len(self.prompt):]

    def take(self, tok: int, stop):
        self.tokens.append(tok)
        if self.con is not None:
            self.con.advance(tok)
        new = self.tokens[len(self.prompt):]
        if any(_ends_with(new, s) for s in stop):
            self.done = self.stopped = True
        elif len(self.tokens) >= self.limit:
            self.done = True

    def force(self, stop):
        """Take the tokens the constraint forces (while it allows exactly one)."""
        while not self.done and self.con is not None:
            tok = single(self.con.allowed())
            if tok is None:
                return
            self.take(tok, stop)

    def needs_pass(self) -> bool:
        """Still to sample, or forced tokens whose log-probabilities a forward pass has yet to give."""
        return not self.done or len(self.lps) < len(self.tokens) - len(self.prompt)


def _generate_batch(model, prompts, seeds, cons, max_new, temperature, top_k, top_p, stop, use_cache):
    p0 = next(model.parameters())
    dev = p0.device
    dtype = torch.bfloat16 if (dev.type == "cuda" and p0.dtype != torch.float32) else p0.dtype
    block, V = model.cfg.block_size, model.cfg.vocab_size
    rows = [_Row(p, c, min(len(p) + max_new, block)) for p, c in zip(prompts, cons)]
    for r in rows:
        r.done = len(r.prompt) >= r.limit
        r.force(stop)
    U = row_uniforms(seeds, max(1, min(max_new, block))).to(dev)  # one number per token a row can sample
    cache, valid, used = None, None, 0
    if use_cache:
        cap = max(len(r.tokens) for r in rows) + CHAIN
        cache = ragged_cache(model.cfg, len(rows), cap, dev, dtype)
        valid = torch.zeros(len(rows), cap, dtype=torch.bool, device=dev)
    idx = [i for i, r in enumerate(rows) if r.needs_pass()]  # the rows in the batch (and the cache), in order
    first = True
    while idx:
        live = [rows[i] for i in idx]
        # the first pass takes the prompts whole; later ones at most CHAIN tokens per row
        feed = [len(r.tokens) - r.fed if first else min(len(r.tokens) - r.fed, CHAIN) for r in live]
        Tc = max(feed)
        if use_cache:
            cache, valid, used = _make_room(cache, valid, used, Tc)
            logits = _cached_step(model, cache, valid, used, live, feed, Tc)
            used += Tc
        else:
            logits = padded_forward(model, [r.tokens[: r.fed + c] for r, c in zip(live, feed)])[:, -Tc:]
        logp = F.log_softmax(logits.float(), dim=-1)  # [B, Tc, V]
        # log-probabilities of the taken tokens that this pass predicts (forced ones: the sampled have theirs)
        fr, fc, ft = [], [], []
        for b, (r, c) in enumerate(zip(live, feed)):
            for j in range(c):
                i = r.fed + j + 1  # the token predicted at this column
                if len(r.prompt) <= i < len(r.tokens):
                    fr.append(b)
                    fc.append(Tc - c + j)
                    ft.append(r.tokens[i])
        sampling = [b for b, (r, c) in enumerate(zip(live, feed)) if not r.done and r.fed + c == len(r.tokens)]
        parts = [logp.new_zeros(1)]
        if fr:
            parts.append(logp[fr, fc, ft])
        if sampling:
            last = logits[sampling, -1].float()
            mask = allowed_mask([live[b].con for b in sampling], V, dev)
            if mask is not None:
                last = last.masked_fill(~mask, float("-inf"))
            probs = filter_logits(last, temperature, top_k, top_p).softmax(-1)
            bad = ~(probs.sum(-1) > 0)  # NaN where every token was ruled out
            probs = torch.nan_to_num(probs, nan=0.0)
            probs[bad, 0] = 1.0
            tok = sample_rows(probs, U[[idx[b] for b in sampling], [live[b].draws for b in sampling]])
            parts += [tok, logp[sampling, -1].gather(1, tok[:, None]).squeeze(1), bad]
        got = torch.cat([x.double() for x in parts]).tolist()[1:]  # the one copy to the host per pass
        for b, lp in zip(fr, got[: len(fr)]):
            live[b].lps.append(lp)
        for r, c in zip(live, feed):
            r.fed += c
        if sampling:
            n, got = len(sampling), got[len(fr):]
            if any(got[2 * n:]):
                raise SciarError("every token was ruled out for a sequence (constraint or filtering left nothing)")
            for b, t, lp in zip(sampling, got[:n], got[n: 2 * n]):
                r = live[b]
                r.draws += 1
                r.take(int(t), stop)
                r.lps.append(lp)
                r.force(stop)
        keep = [b for b, r in enumerate(live) if r.needs_pass()]
        if len(keep) < len(live) and use_cache and keep:
            sel = torch.tensor(keep, device=dev)
            cache.select_rows(sel)
            valid = valid[sel]
        idx = [idx[b] for b in keep]
        first = False
    return [Generation(r.prompt, r.new, float(sum(r.lps)), r.lps, r.stopped) for r in rows]


def _cached_step(model, cache, valid, used, live, feed, Tc):
    """Feed each row's next ``feed`` tokens, right-aligned in ``Tc`` new slots (the slots before them hidden)."""
    dev = valid.device
    B = len(live)
    ids = torch.zeros(B, Tc, dtype=torch.long)
    pos = torch.zeros(B, Tc, dtype=torch.long)
    new_valid = torch.zeros(B, Tc, dtype=torch.bool)
    for b, (r, c) in enumerate(zip(live, feed)):
        ids[b, Tc - c:] = torch.tensor(r.tokens[r.fed: r.fed + c])
        pos[b, Tc - c:] = torch.arange(r.fed, r.fed + c)
        new_valid[b, Tc - c:] = True
    valid[:, used:used + Tc] = new_valid.to(dev)
    keys = torch.arange(used + Tc, device=dev)[None, None, :]
    query = used + torch.arange(Tc, device=dev)[None, :, None]
    vis = (valid[:, None, :used + Tc] & (keys <= query)) | (keys == query)  # hidden slots see themselves: no NaN
    cache.length = used
    return model(ids.to(dev), cache=cache, positions=pos.to(dev), mask=vis)


def _make_room(cache, valid, used, T):
    """Room for ``T`` more slots: compact the cache when it is full or half hidden slots, grow it if still full."""
    visible = int(valid[:, :used].sum(1).max()) if used else 0
    if used + T > valid.shape[1] or used - visible > max(64, used // 2):
        used = _compact(cache, valid, used)
    if used + T > valid.shape[1]:
        cap = max(2 * valid.shape[1], used + T)
        cache.grow(cap, used)
        valid = torch.cat([valid, valid.new_zeros(valid.shape[0], cap - valid.shape[1])], dim=1)
    return cache, valid, used


def _compact(cache, valid, used) -> int:
    """Move every row's visible slots to the right end of the first ``max visible`` slots, in order
    (left padding before them); returns the new number of used slots."""
    n = valid[:, :used].sum(1)
    N = int(n.max())
    order = torch.sort(valid[:, :used].to(torch.int8), dim=1, stable=True).indices[:, used - N:]  # [B, N]
    cache.gather_slots(order)
    valid[:, :] = False
    valid[:, :N] = torch.arange(N, device=valid.device)[None, :] >= (N - n)[:, None]
    return N
