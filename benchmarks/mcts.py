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


def _energy(v) -> float:
    return math.nan if v is None else float(v)


def win_rate_ceiling(rows: list[dict], arms=("search", "sampling")) -> float:
    """The win rate against sampling of a search that always returned, for its target, the lowest best energy that
    any of ``arms`` found on any seed: what these pairs allow a search at this budget (1 for a pair that sampling
    did not reach that minimum, 0.5 for one it did), so a target above it is out of reach of the model's proposals."""
    pooled: dict[str, float] = {}
    for r in rows:
        for arm in arms:
            e = _energy(r.get(f"best_energy_{arm}"))
            if not math.isnan(e):
                pooled[r["id"]] = min(pooled.get(r["id"], math.inf), e)
    scores = [outcome(pooled.get(r["id"], math.nan), _energy(r.get("best_energy_sampling"))) for r in rows]
    return sum(scores) / max(len(scores), 1)


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
    ap.add_argument("--parts", default="energy,recovery",
                    help="energy: search vs sampling on the fixed list (CGCNN, unrelaxed) and the cache timings; "
                         "recovery: ground-state recovery on MP-20 targets at equal scorer calls (relaxed rewards)")
    ap.add_argument("--split", default="test", help="MP-20 split the recovery targets come from (val to tune)")
    ap.add_argument("--targets", type=int, default=None, help="recovery targets drawn from the split (default 50, quick 8)")
    ap.add_argument("--target-seed", type=int, default=0, help="seed of the draw of recovery targets")
    ap.add_argument("--calls", type=int, default=None,
                    help="scorer calls (relaxed and scored structures) per arm and target (default 8, quick 4)")
    ap.add_argument("--max-simulations", type=int, default=None, help="simulation cap of a recovery search (default 6 x calls)")
    ap.add_argument("--root-noise", type=float, default=0.0, help="recovery search: Dirichlet noise on the root priors")
    ap.add_argument("--widening", type=float, default=0.0, help="recovery search: progressive widening exponent")
    ap.add_argument("--spread", action="store_true", help="recovery search: try every root-level child once first")
    ap.add_argument("--merge", nargs="+", type=Path, help="recovery: merge the JSONs of runs on other seeds or targets")
    ap.add_argument("--skip-retrieval", action="store_true", help="recovery: leave retrieval to another run of --merge")
    ap.add_argument("--dedupe", action="store_true",
                    help="recovery: a structure equivalent to one relaxed before costs no call (every arm's scorer)")
    ap.add_argument("--search-only", action="store_true", help="recovery: run only the search arm (to compare settings)")
    ap.add_argument("--retrieval-prompts", type=int, default=0,
                    help="recovery search: also prompt with the cells and space groups of retrieval's N best candidates")
    args = ap.parse_args(argv)
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    args.targets = args.targets or (8 if args.quick else 50)
    args.calls = args.calls or (4 if args.quick else 8)

    import torch

    from sciar.runtime import count_parameters, set_threads

    set_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    from domains.crystals.energy import make_scorer
    from domains.crystals.generate import make_prompt
    from domains.crystals.search import evaluate_cifs, load_generator, search_composition

    sims = args.simulations or (32 if args.quick else 100)
    if args.merge:  # runs of the same settings split over processes (seeds or targets): one set of figures
        runs = [json.loads(p.read_text()) for p in args.merge]
        rows = [r for run in runs for r in run["recovery_rows"]]
        names = dict.fromkeys((r["id"], r["composition"]) for r in rows)
        targets = [{"id": i, "composition": c} for i, c in names]
        seeds = sorted({r["seed"] for r in rows})
        cfg = runs[0]["recovery_config"]
        for k in ("width", "c", "batch", "root_noise", "widening", "spread", "retrieval_prompts", "target_seed", "backup"):
            setattr(args, k, cfg[k])
        args.dedupe = cfg.get("dedupe", False)
        args.calls, args.split = runs[0]["scorer_calls"], runs[0]["recovery_split"]
        # retrieval is deterministic: runs started with --skip-retrieval take it from the run that computed it
        done = {r["id"]: r for r in rows if r["calls_retrieval"]}
        for r in rows:
            if not r["calls_retrieval"] and r["id"] in done:
                d = done[r["id"]]
                r.update(calls_retrieval=d["calls_retrieval"], best_energy_retrieval=d["best_energy_retrieval"],
                         match_retrieval=d["match_retrieval"],
                         win_vs_retrieval=outcome(r["best_energy_search"], d["best_energy_retrieval"]))
        t = sum(r["seconds_search"] for r in rows)
        n = sum(r["calls_search"] for r in rows)
        result = {"benchmark": "mcts", "merged": [str(p) for p in args.merge], **recovery_summary(rows, args, targets, seeds, t, n)}
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, default=float))
            print(f"wrote {args.json}")
        return result
    gen = load_generator(args.checkpoint)
    if "energy" not in parts:
        result = {"benchmark": "mcts", "checkpoint": str(gen.path), "threads": torch.get_num_threads(), **recovery(args, gen)}
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2, default=float))
            print(f"wrote {args.json}")
        return result
    comps = args.compositions.split(",") if args.compositions else COMPOSITIONS
    comps = comps[: args.limit] if args.limit else comps
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
    if "recovery" in parts:
        result.update(recovery(args, gen))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=float))
        print(f"wrote {args.json}")
    return result


# ---------------------------------------------------------------- ground-state recovery (the users' question)

MAX_CELL_ATOMS = 8  # compositions whose conventional cell holds at most this many atoms (relaxation cost)


def choose_compositions(split, n: int, seed: int, gen, max_atoms: int = MAX_CELL_ATOMS) -> list[dict]:
    """``n`` test targets of a CDVAE split, drawn with ``seed`` from the eligible ones, fixed before any search.

    Eligible: a reduced formula that occurs once in the split (so its structure is the one answer), a
    conventional cell of at most ``max_atoms`` atoms that the model's prompts fit, and elements with
    CHGNet references (the scorer). Returns ``{"id", "composition" (cell formula), "cif"}`` rows.
    """
    import random

    import pandas as pd
    from pymatgen.core import Composition

    from domains.crystals.canonical import canonicalize
    from domains.crystals.energy import _dcdft_names
    from domains.crystals.generate import make_prompt
    from domains.crystals.readers import structure_from_cif
    from sciar.errors import SciarError

    df = pd.read_csv(split)
    red = df["formula"].map(lambda f: Composition(f).reduced_formula)
    once = df[red.map(red.value_counts()) == 1].sort_values("material_id").reset_index(drop=True)
    refs = _dcdft_names()
    order = list(range(len(once)))
    random.Random(seed).shuffle(order)
    out = []
    for i in order:
        rec = once.iloc[i]
        comp = Composition(rec["formula"])
        if any(str(el) not in refs for el in comp.elements):
            continue
        try:
            target = structure_from_cif(rec["cif"], rebuild=False)
            cell = canonicalize(target)
            if cell.n_atoms > max_atoms:
                continue
            gen.fitting([make_prompt(cell.formula)])
        except SciarError:
            continue
        out.append({"id": rec["material_id"], "composition": cell.formula, "cif": rec["cif"],
                    "spacegroup": cell.spacegroup})
        if len(out) == n:
            break
    return out


def template_index(train, compositions: list[str]):
    """Retrieval's index over the training structures that share a count pattern with the compositions.

    Candidates only ever come from the query's count pattern, so the rest of the split changes no
    ranking; structures are read from their CIFs as given (atom counts of those cells break ties).
    """
    import pandas as pd
    from pymatgen.core import Composition

    from domains.crystals.retrieval import RetrievalIndex, count_pattern

    df = pd.read_csv(train)
    wanted = {count_pattern(Composition(c)) for c in compositions}
    keep = df["formula"].map(lambda f: count_pattern(Composition(f)) in wanted)
    sub = df[keep].rename(columns={"material_id": "id"})[["id", "cif"]]
    return RetrievalIndex.from_table(sub.reset_index(drop=True))


def sign_test(wins: int, losses: int) -> float:
    """Two-sided sign test over the decided pairs (ties dropped)."""
    from scipy.stats import binomtest

    n = wins + losses
    return float(binomtest(wins, n, 0.5).pvalue) if n else 1.0


def _matches(sm, target, cif_text) -> bool:
    from domains.crystals.readers import structure_from_cif

    if not isinstance(cif_text, str):
        return False
    try:
        return bool(sm.fit(target, structure_from_cif(cif_text)))  # canonical text: symmetry rebuilt
    except Exception:
        return False


def sample_until(gen, comp: str, calls: int, scorer, seed: int, max_draws: int, batch: int = 2):
    """Best-of-N sampling at a budget of scorer calls: draws (the ``sample`` command's defaults) until
    ``calls`` new structures were scored; the evaluations of every draw."""
    from domains.crystals.generate import make_prompt
    from domains.crystals.search import evaluate_cifs

    evs, spent, draws, k = [], 0.0, 0, 0
    while spent < calls and draws < max_draws:
        m = min(batch, max_draws - draws)
        samples = gen.sample([make_prompt(comp)], n=m, seed=seed * 100003 + k)
        k += 1
        draws += m
        for ev in evaluate_cifs([s.text for s in samples], scorer):
            if spent >= calls and ev.cost:  # over budget: this one was scored beyond the N calls
                continue
            spent += ev.cost
            evs.append(ev)
    return evs, spent


def _best_ev(evs):
    v = [e for e in evs if e.valid and math.isfinite(e.score)]
    return min(v, key=lambda e: e.score) if v else None


def recovery(args, gen) -> dict:
    """Ground-state recovery: search vs best-of-N sampling vs template retrieval at equal scorer calls."""
    from domains.crystals.canonical import canonicalize
    from domains.crystals.energy import RelaxedScorer, duplicate_matcher, make_scorer
    from domains.crystals.matching import matcher
    from domains.crystals.readers import structure_from_cif
    from domains.crystals.search import evaluate_cifs, retrieval_prompts, search_composition
    from pymatgen.core import Composition

    split = ROOT / ".." / "shared" / "data" / "crystals" / "mp_20" / f"{args.split}.csv.gz"
    train = ROOT / ".." / "shared" / "data" / "crystals" / "mp_20" / "train.csv.gz"
    targets = choose_compositions(split, args.targets, args.target_seed, gen)
    print(f"recovery: {len(targets)} {args.split} compositions (seed {args.target_seed}): "
          + ", ".join(t["composition"] for t in targets), flush=True)
    need_index = args.retrieval_prompts or not (args.search_only or args.skip_retrieval)
    index = template_index(train, [t["composition"] for t in targets]) if need_index else None
    sm = matcher()
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    calls = args.calls
    rows = []
    t_search = n_search_calls = 0.0
    stop = False

    def relaxed():  # each arm's own scorer and cache
        return RelaxedScorer(make_scorer(args.scorer), match=duplicate_matcher() if args.dedupe else None)

    for t in targets:
        if stop:
            break
        target = structure_from_cif(t["cif"], rebuild=False)
        comp = t["composition"]
        # retrieval: its N best candidates, relaxed and scored like the others; deterministic, so once per target
        rs = relaxed()
        cands = [] if args.search_only or args.skip_retrieval else index.predict(Composition(comp), calls, sm)
        texts = []
        for c in cands:
            try:
                texts.append(canonicalize(c.structure).cif)
            except Exception:
                texts.append(c.structure.to(fmt="cif"))
        r_evs = evaluate_cifs(texts, rs) if texts and not (args.search_only or args.skip_retrieval) else []
        r_best = _best_ev(r_evs)
        r_match = r_best is not None and _matches(sm, target, r_best.info.get("relaxed_cif"))
        extra = retrieval_prompts(index, comp, args.retrieval_prompts) if args.retrieval_prompts else []
        for seed in seeds:
            t0, c0 = time.perf_counter(), time.process_time()
            cs = search_composition(comp, simulations=args.max_simulations or 6 * calls, calls=calls, width=args.width,
                                    c=args.c, scorer=make_scorer(args.scorer), relax=True, seed=seed, batch=args.batch,
                                    backup=args.backup.split(",")[0], generator=gen, progress=False,
                                    root_noise=args.root_noise, widening=args.widening, spread=args.spread,
                                    extra_prompts=extra, dedupe=args.dedupe)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            if cs.result.interrupted:  # Ctrl-C / SIGTERM: the figures of the pairs finished so far
                stop = True
                break
            t_search += dt
            n_search_calls += cs.result.calls
            tb = cs.table
            tb = tb[tb["cost"].astype(float).cumsum() <= calls]  # a batch may overshoot the budget by a call
            v = tb[tb["valid"].astype(bool)].sort_values("energy", kind="stable")
            m_best = float(v["energy"].iloc[0]) if len(v) else math.nan
            m_match = bool(len(v)) and _matches(sm, target, v["relaxed_cif"].iloc[0])
            s_evs, s_calls = ([], 0.0) if args.search_only else \
                sample_until(gen, comp, calls, relaxed(), seed, 6 * calls)
            s_best = _best_ev(s_evs)
            s_e = s_best.score if s_best is not None else math.nan
            s_match = s_best is not None and _matches(sm, target, s_best.info.get("relaxed_cif"))
            r_e = r_best.score if r_best is not None else math.nan
            row = {"id": t["id"], "composition": comp, "target_spacegroup": t["spacegroup"], "seed": seed,
                   "calls_search": cs.result.calls, "calls_sampling": s_calls, "calls_retrieval": len(r_evs),
                   "best_energy_search": m_best, "best_energy_sampling": s_e, "best_energy_retrieval": r_e,
                   "spacegroup_search": v["spacegroup"].iloc[0] if len(v) else None,
                   "match_search": m_match, "match_sampling": s_match, "match_retrieval": r_match,
                   "valid_rate_search": float(tb["valid"].astype(bool).mean()) if len(tb) else 0.0,
                   "valid_rate_sampling": sum(e.valid for e in s_evs) / max(1, len(s_evs)),
                   "sequences_search": len(tb), "sequences_sampling": len(s_evs),
                   "simulations_search": int(cs.result.simulations), "nodes_search": int(cs.result.nodes),
                   "win_vs_sampling": outcome(m_best, s_e), "win_vs_retrieval": outcome(m_best, r_e),
                   "seconds_search": round(dt, 2), "cpu_seconds_search": round(cpu, 2),
                   "seconds_per_call_search": round(dt / max(cs.result.calls, 1), 2)}
            rows.append(row)
            print(f"{comp:>12} seed {seed}: search {m_best:8.4f} match {m_match:d} valid {row['valid_rate_search']:.2f} "
                  f"({cs.result.calls:.0f} calls, {len(tb)} CIFs, {dt:.0f} s) | sampling {s_e:8.4f} match {s_match:d} "
                  f"valid {row['valid_rate_sampling']:.2f} ({s_calls:.0f} calls, {len(s_evs)} CIFs) | retrieval "
                  f"{r_e:8.4f} match {r_match:d} | win {row['win_vs_sampling']}", flush=True)
    return recovery_summary(rows, args, targets, seeds, t_search, n_search_calls)


def recovery_summary(rows: list[dict], args, targets: list[dict], seeds: list[int], t_search: float,
                     n_search_calls: float) -> dict:
    """The recovery figures of per-target rows (of one run, or of runs merged with ``--merge``)."""
    import pandas as pd

    calls = args.calls
    df = pd.DataFrame(rows)
    w = df["win_vs_sampling"]
    wins, ties, losses = int((w == 1).sum()), int((w == 0.5).sum()), int((w == 0).sum())
    by_target = df.groupby("id")
    out = {
        "recovery_split": args.split, "recovery_targets": [t["composition"] for t in targets],
        "recovery_ids": [t["id"] for t in targets], "recovery_seeds": seeds,
        "recovery_search": float(df["match_search"].mean()), "recovery_sampling": float(df["match_sampling"].mean()),
        "recovery_retrieval": float(by_target["match_retrieval"].first().mean()),
        "scorer_calls": calls, "scorer": f"{args.scorer} after CHGNet relaxation",
        "win_rate_recovery": float(w.mean()), "wins_recovery": wins, "ties_recovery": ties, "losses_recovery": losses,
        "sign_test_p": sign_test(wins, losses),
        "win_rate_vs_retrieval": float(df["win_vs_retrieval"].mean()),
        "win_rate_ceiling": win_rate_ceiling(rows),
        "win_rate_ceiling_with_retrieval": win_rate_ceiling(rows, ("search", "sampling", "retrieval")),
        "valid_rate_search": float((df["valid_rate_search"] * df["sequences_search"]).sum() / df["sequences_search"].sum()),
        "valid_rate_sampling_recovery": float((df["valid_rate_sampling"] * df["sequences_sampling"]).sum()
                                              / max(1, df["sequences_sampling"].sum())),
        "mean_best_energy_search": float(df["best_energy_search"].mean()),
        "mean_best_energy_sampling": float(df["best_energy_sampling"].mean()),
        "mean_best_energy_retrieval": float(df["best_energy_retrieval"].mean()),
        "seconds_per_scorer_call_search": t_search / max(n_search_calls, 1),
        "cpu_seconds_per_scorer_call_search": float(df["cpu_seconds_search"].sum() / max(df["calls_search"].sum(), 1))
        if "cpu_seconds_search" in df else None,
        "recovery_config": {"width": args.width, "c": args.c, "batch": args.batch, "backup": args.backup.split(",")[0],
                            "root_noise": args.root_noise, "widening": args.widening, "spread": args.spread,
                            "retrieval_prompts": args.retrieval_prompts, "target_seed": args.target_seed,
                            "dedupe": args.dedupe, "max_cell_atoms": MAX_CELL_ATOMS},
        "recovery_rows": rows,
    }
    print(f"recovery over {len(df)} pairs: search {out['recovery_search']:.3f}, sampling {out['recovery_sampling']:.3f}, "
          f"retrieval {out['recovery_retrieval']:.3f}; best energy win rate vs sampling {out['win_rate_recovery']:.3f} "
          f"({wins} wins, {ties} ties, {losses} losses, sign test p {out['sign_test_p']:.3g}), vs retrieval "
          f"{out['win_rate_vs_retrieval']:.3f} (ceiling {out['win_rate_ceiling']:.3f}, with retrieval's minima "
          f"{out['win_rate_ceiling_with_retrieval']:.3f}); valid search {out['valid_rate_search']:.3f} vs sampling "
          f"{out['valid_rate_sampling_recovery']:.3f}; {out['seconds_per_scorer_call_search']:.2f} s per scorer call "
          f"of the search", flush=True)
    return out


if __name__ == "__main__":
    main()
