"""MCTS structure search vs best-of-N sampling, and what the KV cache buys the search.

For each of a fixed list of compositions (chosen before any run, common binary and
ternary compounds with small cells, not tuned to), the search runs a budget of
simulations; plain sampling with the ``sample`` command's defaults then draws as
many CIFs as the search completed. Both go through the same validity checks and
the same formation-energy scorer (CGCNN by default). Reported per composition and
overall: ``valid_rate_mcts``, ``valid_rate_sampling``, ``best_energy_mcts``,
``best_energy_sampling``, ``win_rate`` (share of composition-seed pairs where the search found
the lower best energy; a tie within 1e-4 eV/atom counts half), ``simulations_per_s``.
Two search arms run on the same budget: CrystaLLM's mean backup (the default of
``sciar crystal search``, whose figures are the headline keys) and max backup
(``--backup max``: a node's value is the best reward below it); keys of the second
arm end in ``_max``.

Speed, in the same run and on the same compositions: the search with KV-cache
rollouts (each node stores its edge's keys/values; rollouts start from the cached
prefix) against two references that re-encode: ``none`` re-runs the whole
sequence for every token as CrystaLLM's MCTS does (no KV cache), ``prefill``
re-encodes the node's prefix once per rollout and then decodes with a cache.
All three runs use the same seed and draw the same sequences.

    python benchmarks/mcts.py --quick --seeds 0,1,2 --json mcts.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from domains.crystals import DEFAULT_CHECKPOINT  # noqa: E402

COMPOSITIONS = ["Na4Cl4", "Mg4O4", "Zn2O2", "Ga4As4", "Ti2O4", "Ca4F8", "Ba1Ti1O3", "Sr1Ti1O3",
                "Cs1Cl1", "Li8O4", "K4Br4", "Zn4S4"]


def outcome(bm: float, bs: float) -> float:
    """1 if the search found the lower best energy, 0 if sampling did, 0.5 for a tie (1e-4 eV/atom) or neither valid."""
    if math.isnan(bm) and math.isnan(bs):
        return 0.5
    if math.isnan(bs) or (not math.isnan(bm) and bm < bs - 1e-4):
        return 1.0
    if math.isnan(bm) or bm > bs + 1e-4:
        return 0.0
    return 0.5


def best(evs) -> float:
    e = [ev.score for ev in evs if ev.valid and math.isfinite(ev.score)]
    return min(e) if e else math.nan


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small budgets (minutes on 2 CPU cores)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    ap.add_argument("--simulations", type=int, help="per composition (default 100, quick 32)")
    ap.add_argument("--width", type=int, default=5)
    ap.add_argument("--c", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--k", type=float, default=2.0, help="reward sigmoid steepness")
    ap.add_argument("--temperature", type=float, default=1.0, help="temperature of the search's rollouts")
    ap.add_argument("--root-temperature", type=float, default=1.0,
                    help="flatten the priors of the search's first choice (the space group): prior ** (1 / T)")
    ap.add_argument("--rollout-top-k", type=int, default=None, help="top-k of the rollouts (default: the width, as CrystaLLM)")
    ap.add_argument("--backup", default="mean,max", help="search arms by backup rule; the first gives the headline figures")
    ap.add_argument("--scorer", default="cgcnn")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds: each composition is searched and sampled once per seed")
    ap.add_argument("--speed-compositions", type=int, default=None, help="compositions timed in all three cache modes (default 2, quick 1)")
    ap.add_argument("--speed-simulations", type=int, default=None, help="simulations per speed run (default 16, quick 8)")
    ap.add_argument("--limit", type=int, help="only the first N compositions")
    ap.add_argument("--compositions", default=None,
                    help="comma-separated cell compositions instead of the fixed list (to check a setting on others)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import torch

    from sciar.runtime import count_parameters, set_threads

    set_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    from domains.crystals.energy import make_scorer
    from domains.crystals.generate import make_prompt
    from domains.crystals.search import evaluate_cifs, load_generator, search_composition

    sims = args.simulations or (32 if args.quick else 100)
    comps = args.compositions.split(",") if args.compositions else COMPOSITIONS
    comps = comps[: args.limit] if args.limit else comps
    gen = load_generator(args.checkpoint)
    scorer = make_scorer(args.scorer)
    dev = next(gen.model.parameters()).device
    print(f"checkpoint {gen.path} ({count_parameters(gen.model) / 1e6:.2f} M params), device {dev}, "
          f"{torch.get_num_threads()} threads; {len(comps)} compositions, {sims} simulations each, width {args.width}, "
          f"c {args.c}, batch {args.batch}, scorer {args.scorer}", flush=True)

    arms = [x.strip() for x in args.backup.split(",") if x.strip()]
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    args.seed = seeds[0]
    rows = []
    for seed, comp in [(sd, cp) for sd in seeds for cp in comps]:
        runs = {}
        for arm in arms:
            t0 = time.perf_counter()
            cs = search_composition(comp, simulations=sims, width=args.width, c=args.c, scorer=scorer, seed=seed,
                                    batch=args.batch, backup=arm, generator=gen, progress=False,
                                    rollout_top_k=args.rollout_top_k, k=args.k,
                                    temperature=args.temperature, root_temperature=args.root_temperature)
            runs[arm] = (cs, time.perf_counter() - t0)
        n = len(runs[arms[0]][0].table)
        t0 = time.perf_counter()
        samples = gen.sample([make_prompt(comp)], n=n, seed=seed)  # the sample command's defaults
        evs = evaluate_cifs([s.text for s in samples], scorer)
        t_samp = time.perf_counter() - t0
        bs = best(evs)
        r = {"composition": comp, "seed": seed, "sequences": n,
             "valid_rate_sampling": sum(e.valid for e in evs) / len(evs), "best_energy_sampling": bs,
             "mean_energy_sampling": (sum(e.score for e in evs if e.valid) / max(1, sum(e.valid for e in evs)))
             if any(e.valid for e in evs) else math.nan, "seconds_sampling": round(t_samp, 2)}
        line = [f"{comp:>9} seed {seed}: n={n:3d} sampling valid {r['valid_rate_sampling']:.2f} best {bs:8.4f}"]
        for arm in arms:
            cs, t_mcts = runs[arm]
            t = cs.table
            v = t["valid"].astype(bool)
            bm = float(t.loc[v, "energy"].min()) if v.any() else math.nan
            sfx = "" if arm == arms[0] else f"_{arm}"
            r.update({f"valid_rate_mcts{sfx}": float(v.mean()), f"best_energy_mcts{sfx}": bm,
                      f"win{sfx}": outcome(bm, bs), f"mean_energy_mcts{sfx}": float(t.loc[v, "energy"].mean()) if v.any() else math.nan,
                      f"seconds_mcts{sfx}": round(t_mcts, 2), f"simulations{sfx}": int(cs.result.simulations),
                      f"simulations_per_s{sfx}": round(cs.result.simulations / t_mcts, 3)})
            line.append(f"mcts[{arm}] valid {v.mean():.2f} best {bm:8.4f} win {r[f'win{sfx}']} ({t_mcts:5.1f} s)")
        rows.append(r)
        print(" | ".join(line) + f" | sampling {t_samp:5.1f} s", flush=True)

    def mean(key):
        v = [r[key] for r in rows if not (isinstance(r[key], float) and math.isnan(r[key]))]
        return sum(v) / len(v) if v else math.nan

    n_seq = sum(r["sequences"] for r in rows)
    overall = {"compositions": len(comps), "seeds": seeds, "runs": len(rows),
               "valid_rate_sampling": sum(r["valid_rate_sampling"] * r["sequences"] for r in rows) / n_seq,
               "best_energy_sampling": mean("best_energy_sampling")}
    for arm in arms:
        sfx = "" if arm == arms[0] else f"_{arm}"
        overall.update({
            f"valid_rate_mcts{sfx}": sum(r[f"valid_rate_mcts{sfx}"] * r["sequences"] for r in rows) / n_seq,
            f"best_energy_mcts{sfx}": mean(f"best_energy_mcts{sfx}"),
            f"win_rate{sfx}": sum(r[f"win{sfx}"] for r in rows) / len(rows),
            f"wins{sfx}": sum(r[f"win{sfx}"] == 1.0 for r in rows), f"ties{sfx}": sum(r[f"win{sfx}"] == 0.5 for r in rows),
            f"losses{sfx}": sum(r[f"win{sfx}"] == 0.0 for r in rows),
            f"simulations_per_s{sfx}": sum(r[f"simulations{sfx}"] for r in rows) / sum(r[f"seconds_mcts{sfx}"] for r in rows),
        })
        print(f"overall mcts[{arm}] backup: win_rate {overall[f'win_rate{sfx}']:.2f} ({overall[f'wins{sfx}']} wins, "
              f"{overall[f'ties{sfx}']} ties, {overall[f'losses{sfx}']} losses); valid mcts {overall[f'valid_rate_mcts{sfx}']:.3f} "
              f"vs sampling {overall['valid_rate_sampling']:.3f}; mean best E mcts {overall[f'best_energy_mcts{sfx}']:.4f} "
              f"vs sampling {overall['best_energy_sampling']:.4f}; {overall[f'simulations_per_s{sfx}']:.2f} simulations/s", flush=True)

    # ---- speed: the same searches with the KV cache and with re-encoding (same seed, same sequences)
    n_speed = args.speed_compositions or (1 if args.quick else 2)
    s_sims = args.speed_simulations or (8 if args.quick else 16)
    speed = {"compositions": comps[:n_speed], "simulations": s_sims}
    seqs = {}
    for mode in ("tree", "prefill", "none"):
        total_t, total_s, total_roll, total_encode = 0.0, 0, 0.0, 0.0
        seqs[mode] = []
        for comp in comps[:n_speed]:
            roll = {"t": 0.0, "encode": 0.0}
            import mcts.engine as engine
            import mcts.rollout as rollout

            orig, orig_forward = engine.rollout_batch, rollout.padded_forward

            def timed(*a, **k):
                t0 = time.perf_counter()
                out = orig(*a, **k)
                roll["t"] += time.perf_counter() - t0
                return out

            def timed_forward(model, seqs, cache=None):
                # with a cache it is the prefill reference re-encoding a node's prefix: the only work a
                # prefix cache can save, so its share of the prefill search bounds any cache's speedup
                t0 = time.perf_counter()
                out = orig_forward(model, seqs, cache)
                if cache is not None:
                    roll["encode"] += time.perf_counter() - t0
                return out

            engine.rollout_batch, rollout.padded_forward = timed, timed_forward
            try:
                t0 = time.perf_counter()
                cs = search_composition(comp, simulations=s_sims, width=args.width, c=args.c, scorer=scorer,
                                        seed=args.seed, batch=args.batch, backup=arms[0], generator=gen,
                                        progress=False, cache=mode)
                total_t += time.perf_counter() - t0
            finally:
                engine.rollout_batch, rollout.padded_forward = orig, orig_forward
            total_s += cs.result.simulations
            total_roll += roll["t"]
            total_encode += roll["encode"]
            seqs[mode] += cs.table["cif"].tolist()
        speed[f"simulations_per_s_{mode}"] = total_s / total_t
        speed[f"rollout_seconds_{mode}"] = round(total_roll, 2)
        speed[f"seconds_{mode}"] = round(total_t, 2)
        if mode == "prefill":
            speed["prefix_encode_seconds_prefill"] = round(total_encode, 2)
            speed["max_speedup_vs_prefill"] = total_t / max(total_t - total_encode, 1e-9)
        print(f"speed {mode:>7}: {total_s / total_t:.3f} simulations/s ({total_t:.1f} s, of which rollouts {total_roll:.1f} s)", flush=True)
    speed["same_sequences"] = seqs["tree"] == seqs["prefill"] == seqs["none"]
    speed["speedup_vs_no_cache"] = speed["simulations_per_s_tree"] / speed["simulations_per_s_none"]
    speed["speedup_vs_prefill"] = speed["simulations_per_s_tree"] / speed["simulations_per_s_prefill"]
    speed["rollout_speedup_vs_no_cache"] = speed["rollout_seconds_none"] / max(speed["rollout_seconds_tree"], 1e-9)
    print(f"KV-cache search: {speed['speedup_vs_no_cache']:.2f}x the simulations/s of re-encoding every token "
          f"(rollouts alone {speed['rollout_speedup_vs_no_cache']:.2f}x), {speed['speedup_vs_prefill']:.2f}x of re-encoding "
          f"the prefix once per rollout; same sequences: {speed['same_sequences']}", flush=True)
    print(f"re-encoding prefixes took {speed['prefix_encode_seconds_prefill']:.2f} s of the prefill search's "
          f"{speed['seconds_prefill']:.1f} s: no prefix cache can make that search more than "
          f"{speed['max_speedup_vs_prefill']:.2f}x faster", flush=True)
    overall["kv_cache_speedup"] = speed["speedup_vs_no_cache"]

    result = {"benchmark": "mcts", "quick": args.quick, "checkpoint": str(gen.path), "device": str(dev),
              "threads": torch.get_num_threads(), "config": {"simulations": sims, "width": args.width, "c": args.c,
              "batch": args.batch, "scorer": args.scorer, "seeds": seeds, "backup": arms,
              "sampling": "sample command defaults: temperature 1, top_k 10, grammar on"},
              "per_composition": rows, "overall": overall, "speed": speed, **overall}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=float))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
