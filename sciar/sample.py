"""Batched autoregressive sampling with a preallocated KV cache.

:func:`generate` samples continuations of token prompts: temperature, top-k,
top-p, stop sequences, per-sequence log-probabilities and a logits-processor
hook through which adapters constrain decoding. Prompts of different lengths
are grouped by length so every group decodes as one batch with no padding.

:class:`Decoder` is the lower-level piece (prefill a prompt, then step one
token at a time) that tree search uses to fork a cached prefix. On CUDA its
decode step can run as a CUDA graph (``torch.compile(mode="reduce-overhead")``
over a static cache), which removes the per-token launch overhead that
dominates small-model decoding on a GPU.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from sciar.errors import SciarError
from sciar.model import KVCache, LanguageModel

# (token ids so far [B, T], next-token logits [B, V]) -> logits; set -inf to forbid a token
LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def _ends_with(seq: list[int], stop: list[int]) -> bool:
    return len(seq) >= len(stop) and seq[-len(stop) :] == stop


@torch.no_grad()
def generate(
    model: LanguageModel,
    prompts: list[list[int]],
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: list[list[int]] | None = None,
    logits_processor: LogitsProcessor | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    graphs: bool = False,
    max_batch: int = 256,
) -> list[Generation]:
    """Sample one continuation per prompt (repeat a prompt to sample it several times).

    Returns one :class:`Generation` per prompt, in order. Generation stops at the
    first stop sequence, after ``max_new_tokens``, or at the model's context.
    ``use_cache=False`` re-runs the whole sequence every step (the slow reference).
    """
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise SciarError("every prompt needs at least one token")
    block = model.cfg.block_size
    too_long = [len(p) for p in prompts if len(p) >= block]
    if too_long:
        raise SciarError(f"a prompt of {too_long[0]} tokens leaves no room in the model's context of {block}")
    if generator is None:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed if seed is not None else torch.seed())
    model.eval()
    groups = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[len(p)].append(i)
    results: list[Generation | None] = [None] * len(prompts)
    for length, idxs in sorted(groups.items()):
        for c in range(0, len(idxs), max_batch):
            chunk = idxs[c : c + max_batch]
            gens = _generate_group([prompts[i] for i in chunk], max_new_tokens, temperature, top_k, top_p,
                                   stop or [], logits_processor, generator, model, use_cache, graphs)
            for i, g in zip(chunk, gens):
                results[i] = g
    return results


def _generate_group(prompts, max_new, temperature, top_k, top_p, stop, processor, generator, model, use_cache, graphs):
    device = next(model.parameters()).device
    B, T0 = len(prompts), len(prompts[0])
    steps = min(max_new, model.cfg.block_size - T0)
    seqs = torch.tensor(prompts, dtype=torch.long)
    new = [[] for _ in range(B)]
    lps = [[] for _ in range(B)]
    done = [False] * B
    stopped = [False] * B
    dec = Decoder(model, B, T0 + steps, graphs=graphs) if use_cache else None
    logits = dec.prefill(seqs) if use_cache else model(seqs.to(device))[:, -1].float()
    for t in range(steps):
        logp = F.log_softmax(logits, dim=-1).cpu()
        if processor is not None:
            logits = processor(seqs, logits)
        probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1).cpu()
        bad = ~torch.isfinite(probs).all(-1) | (probs.sum(-1) <= 0)
        if bad.any():
            raise SciarError("every token was ruled out for a sequence (logits processor or filtering left nothing)")
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        seqs = torch.cat([seqs, nxt[:, None]], dim=1)
        for b in range(B):
            if done[b]:
                continue
            tok = int(nxt[b])
            new[b].append(tok)
            lps[b].append(float(logp[b, tok]))
            if any(_ends_with(new[b], s) for s in stop):
                done[b] = stopped[b] = True
        if all(done) or t == steps - 1:
            break
        logits = dec.step(nxt) if use_cache else model(seqs.to(device))[:, -1].float()
    return [Generation(p, n, float(sum(lp)), lp, s) for p, n, lp, s in zip(prompts, new, lps, stopped)]
