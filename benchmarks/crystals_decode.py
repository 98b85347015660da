"""Constrained CIF decoding: the core's loop (``sciar.decode.tokens``) against the loop it replaced, same process.

    python benchmarks/crystals_decode.py                       # NaCl, 20 structures, crystal-medium, 3 rounds
    python benchmarks/crystals_decode.py --composition Li4Pb1O4 --checkpoint crystal-small --rounds 5

The reference is the loop as it stood at commit 82c2686, kept here: prompts grouped by token length
(one batch each, no padding), a row-blind logits hook over one CIF-grammar generator per row, the
logits copied to the host and sampled there every token, one token per forward pass. Ours: one
ragged batch, a grammar constraint per row, masking and sampling on the device, runs of forced tokens
fed in one forward pass. Both decode the same prompts with the same grammar (``cif_grammar``) and no
snapping or bond fitting; rounds alternate between the two arms so that a busy spell on a shared
machine hits both alike. Prints seconds per arm (best and median of the rounds) and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from domains.crystals import DEFAULT_CHECKPOINT  # noqa: E402
from domains.crystals.grammar import cif_grammar  # noqa: E402
from sciar.decode.tokens import filter_logits, generate  # noqa: E402
from sciar.model import KVCache  # noqa: E402


# --- the reference: the decoding loop at 82c2686 ------------------------------------------------
class _GrammarHook:
    """The row-blind logits hook of 82c2686: one grammar generator per row, rows in batch order."""

    def __init__(self, vocab, prompts):
        self.gens = [cif_grammar(vocab, p) for p in prompts]
        self.started = [False] * len(prompts)

    def __call__(self, seqs, logits):
        mask = torch.full_like(logits, float("-inf"))
        for b in range(seqs.shape[0]):
            g = self.gens[b]
            if g is None:
                mask[b] = 0
                continue
            try:
                allowed = next(g) if not self.started[b] else g.send(int(seqs[b, -1]))
                self.started[b] = True
            except StopIteration:
                self.gens[b] = None
                mask[b] = 0
                continue
            mask[b, allowed] = 0
        return logits + mask


@torch.no_grad()
def reference_decode(model, vocab, prompts, ids, top_k, seed, max_new):
    """Prompts grouped by length, one token per step, logits to the host each step (82c2686)."""
    generator = torch.Generator().manual_seed(seed)
    groups = defaultdict(list)
    for i, p in enumerate(ids):
        groups[len(p)].append(i)
    n_tokens = 0
    nl = vocab.nl
    for length, idxs in sorted(groups.items()):
        hook = _GrammarHook(vocab, [prompts[i] for i in idxs])
        seqs = torch.tensor([ids[i] for i in idxs])
        B = len(idxs)
        steps = min(max_new, model.cfg.block_size - length)
        cache = KVCache(model.cfg, B, length + steps)
        logits = model(seqs, cache=cache)[:, -1].float()
        new = [[] for _ in range(B)]
        done = [False] * B
        for t in range(steps):
            F.log_softmax(logits, dim=-1).cpu()
            probs = filter_logits(hook(seqs, logits), 1.0, top_k).softmax(-1).cpu()
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            seqs = torch.cat([seqs, nxt[:, None]], dim=1)
            for b in range(B):
                if not done[b]:
                    new[b].append(int(nxt[b]))
                    done[b] = new[b][-2:] == [nl, nl]
            if all(done) or t == steps - 1:
                break
            logits = model(nxt.view(-1, 1), cache=cache)[:, -1].float()
        n_tokens += sum(len(x) for x in new)
    return n_tokens


def ours_decode(model, vocab, prompts, ids, top_k, seed, max_new):
    from domains.crystals.grammar import cif_constraint

    gens = generate(model, ids, max_new_tokens=max_new, top_k=top_k, stop=[[vocab.nl, vocab.nl]], seed=seed,
                    constraints=[cif_constraint(vocab, p) for p in prompts])
    return sum(len(g.tokens) for g in gens)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--composition", default="NaCl", help="as `sciar crystal sample --composition` takes it")
    ap.add_argument("--n", type=int, default=20, help="structures per round")
    ap.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    from domains.crystals.generate import CrystalGenerator
    from domains.crystals.prompts import prompts_for

    gen = CrystalGenerator(args.checkpoint)  # one thread, as `sample` runs
    fitting = gen.fitting(prompts_for(args.composition))
    prompts = [p for p, k in zip(fitting, gen.allocate(fitting, args.n)) for _ in range(k)]
    ids = [gen.tok.encode(p.text) for p in prompts]
    times = {"reference": [], "ours": []}
    tokens = {}
    for r in range(args.rounds):
        for name, fn in (("reference", reference_decode), ("ours", ours_decode)):
            t = time.perf_counter()
            tokens[name] = fn(gen.model, gen.vocab, prompts, ids, 10, r, gen.block)
            times[name].append(time.perf_counter() - t)
    res = {"composition": args.composition, "n": args.n, "checkpoint": str(args.checkpoint),
           "prompt_lengths": sorted({len(i) for i in ids}), "threads": torch.get_num_threads()}
    for name, ts in times.items():
        res[name] = {"best_s": round(min(ts), 3), "median_s": round(statistics.median(ts), 3), "tokens_last": tokens[name]}
        print(f"{name:9s} best {min(ts):.2f} s, median {statistics.median(ts):.2f} s ({tokens[name]} tokens last round)")
    res["speedup_best"] = round(min(times["reference"]) / min(times["ours"]), 2)
    res["speedup_median"] = round(statistics.median(times["reference"]) / statistics.median(times["ours"]), 2)
    print(f"ours / reference: {res['speedup_best']:.2f}x faster (best), {res['speedup_median']:.2f}x (median)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
