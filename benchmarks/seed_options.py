"""The core's options against the default, several seeds each, at equal training compute; and speculative decoding.

    python benchmarks/seed_options.py --json options.json                              # the issue's run (long)
    python benchmarks/seed_options.py --json o.json --steps 40 --seeds 0,1,2 --n-valid 40 --out /work/runs/options

Training: the crystal corpus shipped in ``data/crystals/default.parquet`` at the ``tiny`` preset, one run per
(configuration, seed), every configuration with the same steps and batch (equal training compute). Each run
records the validation loss at its last step (equal steps) and at the wall time the slowest configuration
allows all (equal wall time: the last evaluation before that time), training tokens/s, cached decoding
tokens/s, and raw validity: ``--n-valid`` CIFs sampled for held-out MP-20 test compositions (reduced formula in
no training data) without grammar, snapping or bond fitting, checked by ``check_cif`` (``--bonds`` adds the
CrystalNN bond check). An option wins when its mean validation loss over seeds beats the default's by more
than two standard errors (of the difference of the means) without losing raw validity (a fall of more than two
standard errors of the difference of the two shares).

Speculative decoding (``--speculative``): tokens/s of self-speculative decoding (``--heads``, a checkpoint with
multi-token heads) and of classic speculative decoding (``--draft`` drafting for ``--target``) against plain
cached decoding with forced-token chaining, at batch 1 and 16, same prompts, grammar on, rounds alternating.
Runs are resumable: each writes ``OUT/<config>-s<seed>/result.json`` and is skipped when that exists.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from types import SimpleNamespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# "default" is the model before Primer was adopted by the crystal presets (GELU, no convolution), and every other
# option is measured on top of it, so the runs stay comparable with those made before the adoption
BASE = {"mlp": "gelu", "qkv_conv": False}
CONFIGS = {  # name -> (ModelConfig options, TrainConfig options)
    "default": (BASE, {}),
    "primer": ({"mlp": "relu2", "qkv_conv": True}, {}),
    "lion": (BASE, {"optimizer": "lion"}),
    "emo": (BASE, {"emo": "crystal-medium"}),  # frozen embedding of the shipped model of the same domain
    "meap15": ({**BASE, "meap": 0.15}, {}),  # the paper's pre-training share
    "meap30": ({**BASE, "meap": 0.30}, {}),
}


def heldout_prompts(k: int, seed: int = 0) -> list[str]:
    """k MP-20 test compositions whose reduced formula is in no training data (as benchmarks/crystals.py)."""
    from crystals import heldout_compositions

    return heldout_compositions(ROOT.parent / "shared" / "data" / "crystals", k, seed)


def raw_validity(model, tok, comps: list[str], n: int, seed: int, bonds: bool) -> float:
    from pymatgen.core import Composition

    from domains.crystals.generate import CrystalGenerator, make_prompt
    from domains.crystals.validity import check_cif

    gen = CrystalGenerator.from_model(model, tok)
    per = [n // len(comps) + (i < n % len(comps)) for i in range(len(comps))]
    ok = total = 0
    for c, m in zip(comps, per):
        if not m:
            continue
        for s in gen.sample([make_prompt(Composition(c))], m, seed=seed, constrained=False, snap=False, fit=False):
            ok += bool(s.complete and check_cif(s.text, bonds=bonds)["valid"])
            total += 1
    return ok / max(total, 1)


def decode_speed(model, tok, comps: list[str], n: int, seed: int) -> float:
    """Tokens/s of plain cached decoding with the grammar (forced tokens chained), n samples in one batch."""
    from pymatgen.core import Composition

    from domains.crystals.generate import CrystalGenerator, make_prompt

    gen = CrystalGenerator.from_model(model, tok)
    t = time.perf_counter()
    out = gen.sample([make_prompt(Composition(comps[0]))], n, seed=seed, snap=False, fit=False)
    return sum(s.n_tokens for s in out) / (time.perf_counter() - t)


def one_run(name: str, seed: int, args, corpus, comps) -> dict:
    import torch

    from domains.crystals.lm import corpus_source, preset
    from domains.crystals.tokenizer import cif_tokenizer
    from sciar.model import LanguageModel, ModelConfig
    from sciar.presets import train_budget
    from sciar.train import TrainConfig, lion_budget, train

    out = Path(args.out) / f"{name}-s{seed}"
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    mopt, topt = CONFIGS[name]
    p = preset("tiny")
    tok = cif_tokenizer()
    cfg = ModelConfig(vocab_size=tok.vocab_size, **{**p["model"], **mopt})
    src, info, fp, _ = corpus_source(corpus, cfg.block_size, seed=1337, progress=False)
    budget = train_budget(p["train"], steps=args.steps)
    budget["eval_every"] = max(1, args.steps // 8)
    if topt.get("optimizer") == "lion":
        budget = lion_budget(budget)
    tc = TrainConfig(**{**budget, **topt}, device="cpu", seed=seed, progress=False, eval_batches=args.eval_batches)
    torch.manual_seed(seed)
    model = LanguageModel(cfg)
    t0 = time.perf_counter()
    times = []
    summary = train(model, src, tc, out, {"model": cfg.to_dict(), "tied": True}, tok,
                    {"domain": "crystal", "data_fingerprint": fp, "preset": "tiny", "benchmark": name},
                    resume=True, callback=lambda step, rec: times.append((step, time.perf_counter() - t0, rec["val_loss"])))
    log = [(s, t, v) for s, t, v in times if v is not None]
    model.eval()
    model.emo_cost = None
    res = {"config": name, "seed": seed, "steps": summary["steps"], "val_loss": log[-1][2] if log else None,
           "val_curve": log, "train_tokens_per_s": summary["tokens_per_s"], "train_seconds": times[-1][1] if times else None}
    res["raw_valid"] = raw_validity(model, tok, comps, args.n_valid, seed, args.bonds)
    res["n_valid"] = args.n_valid
    res["decode_tokens_per_s"] = decode_speed(model, tok, comps, args.n_decode, seed)
    out.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(res, indent=1))
    return res


def train_heads(args) -> dict:
    """Medusa-style: the target checkpoint frozen, only ``--n-heads`` new multi-token heads trained on the trunk's
    hidden states of ``--heads-windows`` corpus windows (computed once, reused ``--heads-epochs`` times)."""
    from domains.crystals.corpus import read_corpus
    from domains.crystals.lm import corpus_source
    from sciar.checkpoint import load_language_model, save_checkpoint
    from sciar.decode.speculative import fit_heads, with_heads
    from sciar.paths import find_checkpoint

    base, tok, ck = load_language_model(find_checkpoint(args.target))
    model = with_heads(base, args.n_heads, kind=args.heads_kind)
    corpus = read_corpus(ROOT / "data" / "crystals" / "default.parquet")
    src, info, fp, _ = corpus_source(corpus, model.cfg.block_size, seed=1337, progress=False)
    summary = fit_heads(model, src, args.heads_windows, epochs=args.heads_epochs, batch=args.heads_batch,
                        distill=args.heads_distill)
    domain = {k: v for k, v in ck.domain.items() if k not in ("step", "train_config")}
    save_checkpoint(args.train_heads, model, {"model": model.cfg.to_dict(), "tied": True}, tok,
                    dict(domain, base_checkpoint=str(args.target), heads_only=True, heads_training=summary))
    print(f"heads trained: {summary}", flush=True)
    return summary


def speculative_speed(args, comps: list[str]) -> dict:
    """Tokens/s of self-speculative and draft-model speculative decoding over plain cached decoding (forced
    tokens chained), grammar on, top-k 10, at batch 1 and 16; round r decodes the r-th held-out composition
    (cycling) with every arm in turn."""
    from pymatgen.core import Composition

    from domains.crystals.generate import CrystalGenerator, make_prompt
    from domains.crystals.grammar import cif_constraint
    from sciar.checkpoint import load_language_model
    from sciar.decode.speculative import speculative_generate
    from sciar.decode.tokens import generate
    from sciar.paths import find_checkpoint

    target, tok, _ = load_language_model(find_checkpoint(args.target))
    draft = load_language_model(find_checkpoint(args.draft))[0] if args.draft else None
    heads = [load_language_model(h)[0] for h in args.heads.split(",")] if args.heads else []
    vocab = CrystalGenerator.from_model(target, tok).vocab
    stop = [[vocab.nl, vocab.nl]]
    out = {"target": str(args.target), "draft": args.draft, "heads": args.heads,
           "compositions": comps[: args.rounds], "max_new_tokens": args.spec_tokens, "top_k": 10}
    for batch in [int(b) for b in args.spec_batches.split(",")]:
        arms = {"plain": lambda ids, cons, seed: generate(target, [ids] * batch, args.spec_tokens, top_k=10, stop=stop,
                                                           constraints=cons, seed=seed)}
        stats = {"draft": {}}

        def self_arm(m, st):
            return lambda ids, cons, seed: speculative_generate(m, [ids] * batch, args.spec_tokens, top_k=10, stop=stop,
                                                                constraints=cons, seed=seed, stats=st)

        for i, m in enumerate(heads):  # "self" (the first --heads), then "self_2", ... to compare heads in one run
            name = "self" if i == 0 else f"self_{i + 1}"
            stats[name] = {}
            arms[name] = self_arm(m, stats[name])
        if draft is not None:
            arms["draft"] = lambda ids, cons, seed: speculative_generate(target, [ids] * batch, args.spec_tokens,
                                                                         top_k=10, stop=stop, constraints=cons,
                                                                         seed=seed, draft=draft, n_draft=args.n_draft,
                                                                         stats=stats["draft"])
        tokens = {k: 0 for k in arms}
        secs = {k: 0.0 for k in arms}
        cpu = {k: 0.0 for k in arms}  # this process's CPU time: the cost on a core, whatever else runs
        passes = {k: 0 for k in stats}
        acc = {k: [0, 0] for k in stats}
        for rnd in range(args.rounds):  # round r: the r-th held-out composition (cycling), every arm on it
            prompt = make_prompt(Composition(comps[rnd % len(comps)]))
            ids = tok.encode(prompt.text)
            for name, fn in arms.items():
                cons = [cif_constraint(vocab, prompt) for _ in range(batch)]
                t, c = time.perf_counter(), time.process_time()
                gens = fn(ids, cons, rnd)
                secs[name] += time.perf_counter() - t
                cpu[name] += time.process_time() - c
                tokens[name] += sum(len(g.tokens) for g in gens)
                if name in stats:
                    acc[name][0] += stats[name]["accepted"]
                    acc[name][1] += stats[name]["proposed"]
                    passes[name] += stats[name]["passes"]
            print(f"batch {batch} round {rnd}: " + ", ".join(f"{k} {tokens[k] / secs[k]:.1f} tok/s ({tokens[k] / cpu[k]:.1f} per CPU-s)"
                                                             for k in arms), flush=True)
        rate = {k: tokens[k] / secs[k] for k in arms}
        out[f"tokens_per_s_batch_{batch}"] = rate
        out[f"self_speedup_batch_{batch}"] = rate["self"] / rate["plain"] if "self" in rate else None
        out[f"draft_speedup_batch_{batch}"] = rate["draft"] / rate["plain"] if "draft" in rate else None
        out[f"acceptance_batch_{batch}"] = {k: (a / p if p else None) for k, (a, p) in acc.items()}
        out[f"cpu_tokens_per_s_batch_{batch}"] = crate = {k: tokens[k] / cpu[k] for k in arms}
        out[f"cpu_speedup_batch_{batch}"] = {k: crate[k] / crate["plain"] for k in arms if k != "plain"}
        out[f"tokens_per_pass_batch_{batch}"] = {k: tokens[k] / batch / passes[k] for k in passes if passes[k]}
    out["acceptance"] = {k: out.get(f"acceptance_batch_{b}", {}).get(k) for k in ("self", "draft")
                         for b in [args.spec_batches.split(",")[0]]}
    for i in range(2, len(heads) + 1):
        out[f"self_{i}_speedup"] = {b: out[f"tokens_per_s_batch_{b}"][f"self_{i}"] / out[f"tokens_per_s_batch_{b}"]["plain"]
                                    for b in [int(x) for x in args.spec_batches.split(",")]}
    return out


def _passes(forced: list[bool], depth: int | None) -> int:
    """Forward passes after the prompt's to decode a row whose tokens the grammar forces where ``forced``: plain
    cached decoding (``depth`` None: one sampled token and the forced run after it, at most CHAIN fed a pass), or
    self-speculative decoding whose drafts are all accepted (the rules of ``sciar.decode.speculative``: the forced
    run, then drafts up to ``depth`` tokens ahead of the last fed one, the first only where the grammar leaves a
    choice; the pass gives the next token)."""
    from sciar.decode.tokens import CHAIN

    n, passes = len(forced), 0
    fed = next((i for i, f in enumerate(forced) if not f), n)  # the prompt's pass took the forced tokens before
    taken = fed
    while fed < n:
        if taken == fed:  # everything fed: the next token is sampled from the last pass
            taken += 1
        if depth is None:
            while taken < n and forced[taken]:
                taken += 1
            passes += -(-(taken - fed) // CHAIN)
            fed = taken
            continue
        while taken < n and forced[taken] and taken < fed + CHAIN:
            taken += 1
        drafts = 0
        while (drafts < depth and taken + drafts < n and taken + drafts - fed - 1 < depth
               and (drafts or not forced[taken])):
            drafts += 1
        passes += 1
        fed = taken + drafts
        taken = min(fed + 1, n)  # the pass's own next token (sampled, or forced)
    return passes


def speculative_ceiling(args, comps: list[str]) -> dict:
    """What self-speculative decoding could give at best: drafts that are always accepted. Rows sampled from the
    target (plain, grammar on, top-k 10) give which tokens the grammar forces; :func:`_passes` counts the passes
    of plain decoding and of perfect drafts of each depth; the cost of a pass is measured against the tokens it
    feeds (cached, batch 1, one thread). The ceiling is the plain time over the perfect-draft time, leaving out
    drafting and verification overhead (so an upper bound)."""
    import torch
    from pymatgen.core import Composition

    from domains.crystals.generate import CrystalGenerator, make_prompt
    from domains.crystals.grammar import cif_constraint
    from sciar.checkpoint import load_language_model
    from sciar.decode.constraints import single
    from sciar.decode.tokens import _cached_step, generate, ragged_cache
    from sciar.paths import find_checkpoint

    target, tok, _ = load_language_model(find_checkpoint(args.target))
    vocab = CrystalGenerator.from_model(target, tok).vocab
    rows = []
    for r in range(args.rounds):
        prompt = make_prompt(Composition(comps[r % len(comps)]))
        g = generate(target, [tok.encode(prompt.text)], args.spec_tokens, top_k=10, stop=[[vocab.nl, vocab.nl]],
                     constraints=[cif_constraint(vocab, prompt)], seed=r)[0]
        con, forced = cif_constraint(vocab, prompt), []
        for t in g.tokens:
            forced.append(single(con.allowed()) is not None)
            con.advance(t)
        rows.append(forced)
    cost = {}  # ms of CPU per pass feeding T tokens, after 300 cached ones
    ids = torch.randint(target.cfg.vocab_size, (700,)).tolist()
    for T in (1, 2, 4, 6, 8, 12, 16):
        cache = ragged_cache(target.cfg, 1, 1024, "cpu", torch.float32)
        valid = torch.zeros(1, 1024, dtype=torch.bool)
        with torch.no_grad():
            _cached_step(target.trunk, cache, valid, 0, [SimpleNamespace(tokens=ids[:300], fed=0)], [300], 300)
            used, t0, k = 300, time.process_time(), 0
            while used + T <= 620:
                target.head(_cached_step(target.trunk, cache, valid, used, [SimpleNamespace(tokens=ids[: used + T], fed=used)], [T], T))
                used, k = used + T, k + 1
        cost[T] = (time.process_time() - t0) / k * 1000

    def ms(t):  # linear between the measured sizes
        xs = sorted(cost)
        t = min(max(t, xs[0]), xs[-1])
        hi = next(x for x in xs if x >= t)
        lo = max(x for x in xs if x <= t)
        return cost[lo] if hi == lo else cost[lo] + (cost[hi] - cost[lo]) * (t - lo) / (hi - lo)

    n = sum(len(f) for f in rows)
    plain = sum(_passes(f, None) for f in rows)
    out = {"tokens": n, "forced_share": sum(map(sum, rows)) / n, "plain_passes": plain,
           "pass_ms_by_tokens_fed": cost, "perfect_drafts": {}}
    for depth in (2, 4, 6, 8, 12):
        p = sum(_passes(f, depth) for f in rows)
        out["perfect_drafts"][depth] = {"passes": p, "pass_ratio": plain / p,
                                        "speedup_ceiling": plain * ms(n / plain) / (p * ms(n / p))}
    print(f"ceiling over {args.rounds} CIFs ({n} tokens, {out['forced_share']:.0%} forced): plain {plain} passes; "
          + ", ".join(f"depth {d}: {v['passes']} passes, at most {v['speedup_ceiling']:.2f}x"
                      for d, v in out["perfect_drafts"].items()), flush=True)
    return out


def summarise(results: list[dict]) -> dict:
    by = {}
    for r in results:
        by.setdefault(r["config"], []).append(r)
    # equal wall time: the shortest total training time of any configuration's runs
    wall = min(min(r["train_seconds"] for r in rs) for rs in by.values())
    out = {}
    for name, rs in by.items():
        v = [r["val_loss"] for r in rs]
        at_wall = [max((c for c in r["val_curve"] if c[1] <= wall), key=lambda c: c[1], default=(0, 0, None))[2] for r in rs]
        mean = statistics.fmean(v)
        se = statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else None
        aw = [x for x in at_wall if x is not None]
        out[name] = {"seeds": len(rs), "val_loss_mean": mean, "val_loss_se": se, "val_loss": v,
                     "val_loss_at_equal_wall_mean": statistics.fmean(aw) if aw else None, "equal_wall_s": wall,
                     "raw_valid": statistics.fmean(r["raw_valid"] for r in rs),
                     "raw_valid_samples": sum(r.get("n_valid", 200) for r in rs),
                     "train_tokens_per_s": statistics.fmean(r["train_tokens_per_s"] for r in rs),
                     "decode_tokens_per_s": statistics.fmean(r["decode_tokens_per_s"] for r in rs)}
    base = out.get("default")
    for name, o in out.items():
        if base is None or name == "default" or o["val_loss_se"] is None or base["val_loss_se"] is None:
            o["wins"] = None
            continue
        se = (o["val_loss_se"] ** 2 + base["val_loss_se"] ** 2) ** 0.5
        o["delta_vs_default"] = o["val_loss_mean"] - base["val_loss_mean"]
        # raw validity is lost when it falls by more than two standard errors of the difference of two
        # binomial shares (pooled), over the samples of all seeds
        n1, n2 = o["raw_valid_samples"], base["raw_valid_samples"]
        pool = (o["raw_valid"] * n1 + base["raw_valid"] * n2) / (n1 + n2)
        vse = (pool * (1 - pool) * (1 / n1 + 1 / n2)) ** 0.5
        o["raw_valid_lost"] = bool(base["raw_valid"] - o["raw_valid"] > 2 * vse)
        o["wins"] = bool(o["delta_vs_default"] < -2 * se and not o["raw_valid_lost"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--out", default="build/seed_options", help="folder of the runs (resumable)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=300, help="training steps of every run (the tiny preset's 300)")
    ap.add_argument("--eval-batches", type=int, default=10)
    ap.add_argument("--n-valid", type=int, default=200, help="CIFs sampled for the raw validity")
    ap.add_argument("--k-comps", type=int, default=10, help="held-out compositions they are spread over")
    ap.add_argument("--bonds", action="store_true", help="include CrystalNN's bond check in validity")
    ap.add_argument("--n-decode", type=int, default=8, help="samples timed for decoding tokens/s")
    ap.add_argument("--no-train", action="store_true", help="only the speculative decoding part")
    ap.add_argument("--collect", action="store_true", help="summarise the finished runs in --out, train nothing")
    ap.add_argument("--speculative", action="store_true", help="also time speculative decoding")
    ap.add_argument("--ceiling", action="store_true", help="the speed-up perfect drafts would give (--rounds CIFs)")
    ap.add_argument("--target", default="crystal-medium")
    ap.add_argument("--heads", default=None,
                    help="checkpoint of the target with multi-token heads; several, comma separated, are timed side by side")
    ap.add_argument("--draft", default="crystal-small")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-draft", type=int, default=4, help="tokens the draft model proposes per round")
    ap.add_argument("--spec-batches", default="1,16")
    ap.add_argument("--spec-tokens", type=int, default=1024, help="longest continuation decoded")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-heads", default=None, help="train multi-token heads on the frozen --target into this folder")
    ap.add_argument("--n-heads", type=int, default=3)
    ap.add_argument("--heads-kind", default="parallel", choices=["parallel", "sequential"],
                    help="one head per distance (Medusa) or one draft step unrolled (sequential)")
    ap.add_argument("--heads-windows", type=int, default=800, help="corpus windows the heads train on")
    ap.add_argument("--heads-epochs", type=int, default=3)
    ap.add_argument("--heads-batch", type=int, default=4, help="windows per step")
    ap.add_argument("--heads-distill", action="store_true",
                    help="heads learn the target's own next-token distributions (self-distillation), not the data")
    args = ap.parse_args()

    import torch

    from domains.crystals.corpus import read_corpus

    torch.set_num_threads(args.threads)
    if args.train_heads:
        train_heads(args)
        return
    out_json = Path(args.json)
    result = json.loads(out_json.read_text()) if out_json.is_file() else {}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    comps_file = Path(args.out) / "heldout.json"
    if comps_file.is_file():
        comps = json.loads(comps_file.read_text())
    else:
        comps = heldout_prompts(args.k_comps)
        comps_file.write_text(json.dumps(comps))
    if args.collect:  # the runs finished so far, none started
        runs = [json.loads(f.read_text()) for f in sorted(Path(args.out).glob("*-s*/result.json"))]
        result["options"] = summarise(runs)
        result["setup"] = {"preset": "tiny", "steps": runs[0]["steps"] if runs else None, "n_valid": args.n_valid,
                           "runs": [f"{r['config']}-s{r['seed']}" for r in runs], "heldout": comps}
    elif not args.no_train:
        corpus = read_corpus(ROOT / "data" / "crystals" / "default.parquet")
        runs = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in args.configs.split(","):
                r = one_run(name, seed, args, corpus, comps)
                print(f"{name} seed {seed}: val {r['val_loss']:.4f}, raw valid {r['raw_valid']:.3f}, "
                      f"train {r['train_tokens_per_s']:.0f} tok/s, decode {r['decode_tokens_per_s']:.0f} tok/s", flush=True)
                runs.append(r)
        result["options"] = summarise(runs)
        result["setup"] = {"preset": "tiny", "steps": args.steps, "seeds": args.seeds, "n_valid": args.n_valid,
                           "bonds": args.bonds, "corpus": "data/crystals/default.parquet", "heldout": comps}
    if args.speculative:
        result["speculative"] = speculative_speed(args, comps)
    if args.ceiling:
        result["speculative_ceiling"] = speculative_ceiling(args, comps)
    out_json.write_text(json.dumps(result, indent=1))
    for name, o in result.get("options", {}).items():
        print(f"{name:8s} seeds {o['seeds']} val {o['val_loss_mean']:.4f} +- {o['val_loss_se'] or 0:.4f}  raw valid {o['raw_valid']:.3f}  "
              f"train {o['train_tokens_per_s']:.0f} tok/s  decode {o['decode_tokens_per_s']:.0f} tok/s  wins {o['wins']}")


if __name__ == "__main__":
    main()
