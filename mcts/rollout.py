"""Batched rollouts from tree nodes of different depths, on the core's KV cache.

A tree node keeps only the keys and values of its own edge (the tokens between
its parent and itself), so the cached prefix of any node is the concatenation of
the segments on its root path. A batch of rollouts from nodes of different depths
is decoded as one batch: every row's cached prefix is copied, right-aligned, into
one :class:`sciar.model.KVCache`, and a visibility mask hides each row's left
padding while positions run per row. Nothing is re-encoded.

Each row starts with a chosen action token, follows forced tokens (top
probability above a threshold) that together make the new child's edge, then
samples the rest of the sequence with top-k sampling. The reference modes
``"prefill"`` (re-encode each node's prefix once per rollout, then decode with the
cache) and ``"none"`` (no cache: the whole sequence is re-run for every token, as
CrystaLLM's MCTS does) exist to measure what the cache buys.

Constraints follow the core's protocol (:mod:`sciar.decode.constraints`): one
constraint object per prompt, in its state at the prompt's end; a rollout row
copies it and advances the copy by the node's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import torch

from sciar.decode.constraints import Constraint, allowed_mask
from sciar.decode.tokens import filter_logits, padded_forward, ragged_cache
from sciar.model import KVCache, LanguageModel

# keys, values [n_layer, n_head, T, head_dim]; with Primer's convolution also the projections it reads
# ([n_layer, 1, T, 3 * n_embd], KVCache.raw)
Segment = tuple[torch.Tensor, ...]


def _segment(cache, row: int, a: int, b: int) -> Segment:
    """Row ``row``'s cache slots ``a:b`` as a segment (copies)."""
    seg = (cache.k[:, row, :, a:b].clone(), cache.v[:, row, :, a:b].clone())
    return seg if cache.raw is None else seg + (cache.raw[:, row, :, a:b].clone(),)


@dataclass
class Request:
    """Roll out from a node's prefix, starting with ``action``."""

    tokens: list[int]  # the node's full token prefix (prompt included)
    prompt: int  # index of its prompt
    prompt_len: int
    segments: list[Segment] | None  # the KV segments on its root path (None: re-encode)
    action: int


@dataclass
class Rollout:
    edge: list[int]  # the new child's edge: the action and the forced tokens after it
    edge_kv: Segment | None  # keys/values of the edge (None unless tree mode)
    child_probs: torch.Tensor | None  # next-token probabilities after the edge (None if the child is terminal)
    child_terminal: bool
    sequence: list[int]  # the whole completed sequence (prompt included)
    stopped: bool  # ended by a stop sequence (else by the length limit)


class Row:
    """One sequence being decoded, with its constraint (None: unconstrained)."""

    __slots__ = ("seq", "plen", "con")

    def __init__(self, seq: list[int], plen: int, con: Constraint | None):
        self.seq, self.plen, self.con = list(seq), plen, con
        if con is not None:
            for t in self.seq[plen:]:
                con.advance(t)

    def push(self, tok: int):
        self.seq.append(tok)
        if self.con is not None:
            self.con.advance(tok)


@dataclass
class Decoding:
    """How rollouts decode: shared by every batch of one search."""

    model: LanguageModel
    limits: list[int]  # per prompt: total length at which a sequence ends
    stop: list[list[int]] = field(default_factory=list)
    top_k: int | None = None
    temperature: float = 1.0
    forced: float = 0.99  # chain tokens whose probability exceeds this into one edge
    constraints: list[Constraint | None] | None = None  # per prompt, in its state at the prompt's end
    mode: str = "tree"  # tree | prefill | none

    def row(self, tokens: list[int], prompt: int, plen: int) -> Row:
        base = self.constraints[prompt] if self.constraints else None
        return Row(tokens, plen, base.copy() if base is not None else None)

    def ends(self, row: Row, prompt: int) -> tuple[bool, bool]:
        """(terminal, stopped) for a row."""
        new = row.seq[row.plen :]
        for s in self.stop:
            if len(new) >= len(s) and new[-len(s) :] == s:
                return True, True
        return len(row.seq) >= self.limits[prompt], False

    def probs(self, rows: list[Row], logits: torch.Tensor) -> torch.Tensor:
        """Next-token probabilities with each row's constraint applied."""
        logits = logits.float()
        mask = allowed_mask([r.con for r in rows], logits.shape[-1], logits.device)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return logits.softmax(-1)


def _device(model):
    p = next(model.parameters())
    return p.device, p.dtype


@torch.no_grad()
def extend_root(dec: Decoding, tokens: list[int], prompt: int):
    """A prompt node: the prompt plus the forced tokens after it. Returns (tokens, segment, probs, terminal)."""
    model = dec.model
    dev, dtype = _device(model)
    row = dec.row(tokens, prompt, len(tokens))
    cache = KVCache(model.cfg, 1, dec.limits[prompt], dev, dtype)
    logits = model(torch.tensor([tokens], device=dev), cache=cache)[:, -1].float().cpu()
    while True:
        terminal, _ = dec.ends(row, prompt)
        if terminal:
            probs = None
            break
        probs = dec.probs([row], logits)[0]
        top, tok = probs.max(-1)
        if float(top) <= dec.forced:
            break
        row.push(int(tok))
        logits = model(torch.tensor([[int(tok)]], device=dev), cache=cache)[:, -1].float().cpu()
    n = len(row.seq)
    return row.seq, _segment(cache, 0, 0, n), probs, terminal


def _pad_mask(pad: torch.Tensor, total: int) -> torch.Tensor:
    """[B, total]: key j visible to a row unless it is left padding."""
    return torch.arange(total, device=pad.device)[None, :] >= pad[:, None]


@torch.no_grad()
def rollout_batch(dec: Decoding, reqs: list[Request], generator: torch.Generator) -> list[Rollout]:
    """Decode one batch of rollouts; rows may start from prefixes of different lengths."""
    model = dec.model
    cfg = model.cfg
    dev, dtype = _device(model)
    B = len(reqs)
    lens = torch.tensor([len(r.tokens) for r in reqs], device=dev)
    Lmax = int(lens.max())
    pad = Lmax - lens
    steps = max(dec.limits[r.prompt] - len(r.tokens) for r in reqs)  # most tokens any row can add
    rows = [dec.row(r.tokens, r.prompt, r.prompt_len) for r in reqs]
    cache = None
    if dec.mode in ("tree", "prefill"):
        cache = ragged_cache(cfg, B, Lmax + steps, dev, dtype)
        if dec.mode == "tree":
            for i, r in enumerate(reqs):
                off = int(pad[i])
                for seg in r.segments:
                    n = seg[0].shape[2]
                    cache.k[:, i, :, off : off + n] = seg[0]
                    cache.v[:, i, :, off : off + n] = seg[1]
                    if cache.raw is not None:  # Primer: the projections its convolution reads
                        cache.raw[:, i, :, off : off + n] = seg[2]
                    off += n
            cache.length = Lmax
        else:  # re-encode every prefix once (left-padded, one forward pass)
            padded_forward(model, [r.tokens for r in reqs], cache)
    edge_end = [0] * B  # length of the sequence where the child's edge ends (0: still chaining)
    child_probs: list[torch.Tensor | None] = [None] * B
    child_terminal = [False] * B
    done = [False] * B
    stopped = [False] * B
    nxt = [r.action for r in reqs]
    for t in range(steps):
        for i in range(B):
            if not done[i]:
                rows[i].push(nxt[i])
        # one forward step for every row (finished rows ride along; their outputs are ignored)
        if dec.mode == "none":
            logits = padded_forward(model, [r.seq for r in rows])[:, -1].float().cpu()
        else:
            vis = _pad_mask(pad, Lmax + t + 1)[:, None, :]
            pos = (lens + t).clamp(max=cfg.block_size - 1)[:, None]
            ids = torch.tensor(nxt, dtype=torch.long, device=dev).view(B, 1)
            logits = model(ids, cache=cache, positions=pos, mask=vis)[:, -1].float().cpu()
        live = []
        for i in range(B):
            if done[i]:
                continue
            term, stop = dec.ends(rows[i], reqs[i].prompt)
            if term:
                done[i], stopped[i] = True, stop
                if not edge_end[i]:
                    edge_end[i], child_terminal[i] = len(rows[i].seq), True
            else:
                live.append(i)
        if not live:
            break
        probs = dec.probs([rows[i] for i in live], logits[live])
        forced_tok = {}
        for j, i in enumerate(live):
            if edge_end[i]:
                continue
            top, tok = probs[j].max(-1)
            if float(top) > dec.forced:
                forced_tok[i] = int(tok)
            else:
                edge_end[i], child_probs[i] = len(rows[i].seq), probs[j].clone()
        logp = torch.where(probs > 0, probs.clamp_min(1e-30).log(), torch.full_like(probs, float("-inf")))
        filtered = filter_logits(logp, dec.temperature, dec.top_k).softmax(-1)
        sampled = torch.multinomial(filtered, 1, generator=generator).squeeze(1)
        for j, i in enumerate(live):
            nxt[i] = forced_tok.get(i, int(sampled[j]))
    out = []
    for i, r in enumerate(reqs):
        if not edge_end[i]:  # cannot happen: the length limit makes a row terminal
            edge_end[i], child_terminal[i] = len(rows[i].seq), True
        edge = rows[i].seq[len(r.tokens) : edge_end[i]]
        kv = None
        if dec.mode == "tree":
            kv = _segment(cache, i, Lmax, Lmax + len(edge))
        out.append(Rollout(edge, kv, child_probs[i], child_terminal[i], rows[i].seq, stopped[i]))
    return out
