"""Train crystal language models on a lent GPU within a time budget; print throughput.

The GPU machine has no pymatgen, so the work is split in three:

    # here: the canonical CIF token stream of the shipped model's training data
    python benchmarks/gpu_train.py prepare --out build/gpu
    # there (PYTHONPATH=.): measure tokens/s, train each preset for its share of SECONDS, export fp16 shards
    python benchmarks/gpu_train.py run --data build/gpu --out $OUT --seconds 420 --presets crystallm-small,medium
    # here again: reassemble each model into a checkpoint directory
    python benchmarks/gpu_train.py assemble --shards DIR --out build/crystals/runs

The number of steps is fixed before training from a short throughput probe, so the
cosine schedule runs to its end (a run cut by the clock would stop at a high rate).
Weights travel back as fp16 (the lent machine returns at most 64 MiB); assembling
casts them back to fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = ["data/crystals/default.parquet", "../shared/data/crystals/perov_5/train.csv.gz",
        "../shared/data/crystals/carbon_24/train.csv.gz", "../shared/data/crystals/mp_20/train.csv.gz"]
SHARD_BYTES = 15 * 2**20


def prepare(out: Path, block_size: int = 1024, data=DATA):
    """Write the token stream (train/val ids and window starts) and what a checkpoint records about it."""
    from domains.crystals.lm import corpus_source
    from domains.crystals.tokenizer import cif_tokenizer

    src, info, fp, sources = corpus_source(data, block_size, dedup=False)
    out.mkdir(parents=True, exist_ok=True)
    (tr, trs), (va, vas) = src.splits["train"], src.splits["val"]
    np.savez_compressed(out / "crystal_tokens.npz", train=tr.numpy().astype(np.uint16), train_starts=trs.numpy(),
                        val=va.numpy().astype(np.uint16), val_starts=vas.numpy())
    meta = {"data_fingerprint": fp, "data": sources, "block_size": block_size, "tokenizer": cif_tokenizer().to_dict(),
            **info}
    (out / "crystal_tokens.json").write_text(json.dumps(meta))
    print(f"{info['n_train_cifs']} train CIFs, {info['train_tokens']} tokens, {info['n_val_cifs']} val CIFs -> {out}")


def _source(data: Path):
    from sciar.data import TokenWindows

    z = np.load(data / "crystal_tokens.npz")
    meta = json.loads((data / "crystal_tokens.json").read_text())
    src = TokenWindows(z["train"].astype(np.int64), meta["block_size"], z["val"].astype(np.int64),
                       z["train_starts"], z["val_starts"])
    return src, meta


def probe(cfg, tcfg: dict, src, device, steps: int = 20, warm: int = 5) -> float:
    """Training steps per second of this shape and batch (bf16 autocast, fused AdamW), as the trainer runs them."""
    from sciar.model import LanguageModel
    from sciar.train import TrainConfig, _batch_generator, make_optimizer

    cuda = device.type == "cuda"
    model = LanguageModel(cfg).to(device)
    opt = make_optimizer(model, TrainConfig(lr=tcfg["lr"]), device)
    for i in range(warm + steps):
        if i == warm:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        b = src.get_batch("train", tcfg["batch_size"], _batch_generator(0, i, 0))
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext():
            loss = model(b["idx"].to(device), targets=b["targets"].to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())
    rate = steps / (time.perf_counter() - t0)
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return rate


def export(ck_dir: Path, name: str, out: Path, tar: tarfile.TarFile):
    """The best weights as fp16 shards under ``out``; the checkpoint's other files and the run's log into ``tar``."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(ck_dir / "model.safetensors"))
    big = [k for k, v in sd.items() if v.is_floating_point() and float(v.abs().max()) > 6e4]
    if big:
        raise SystemExit(f"{name}: {big[:3]} do not fit fp16")
    shards, cur, size = [], {}, 0
    for k, v in sd.items():
        v = v.half().contiguous() if v.is_floating_point() else v.contiguous()
        if cur and size + v.numel() * v.element_size() > SHARD_BYTES:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = v, size + v.numel() * v.element_size()
    shards.append(cur)
    for i, s in enumerate(shards):
        save_file(s, str(out / f"{name}.{i}.safetensors"))
    for f in ["config.json", "tokenizer.json", "domain.json", "train_log.csv", "loss.png"]:
        if (ck_dir / f).exists():
            tar.add(ck_dir / f, arcname=f"{name}/{f}")
    return len(shards)


def run(data: Path, out: Path, seconds: float, presets: list[str], shares: list[float], work: Path,
        device: str = "cuda", probe_steps: int = 20, min_steps: int = 50):
    from domains.crystals import DOMAIN
    from domains.crystals.lm import preset
    from sciar.model import LanguageModel, ModelConfig
    from sciar.tokenizer import tokenizer_from_dict
    from sciar.train import TrainConfig, train

    t_start = time.perf_counter()
    device = torch.device(device)
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    src, meta = _source(data)
    tok = tokenizer_from_dict(meta["tokenizer"])
    print(f"{gpu}, torch {torch.__version__}; {meta['train_tokens']} train tokens", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    results = {"gpu": gpu, "torch": torch.__version__, "runs": {}}
    tar = tarfile.open(out / "runs.tar", "w")
    for name, share in zip(presets, shares):
        p = preset(name)
        cfg = ModelConfig(vocab_size=tok.vocab_size, **p["model"])
        tcfg = dict(p["train"])
        rate = probe(cfg, tcfg, src, device, steps=probe_steps)
        tok_s = rate * tcfg["batch_size"] * cfg.block_size
        left = seconds - (time.perf_counter() - t_start)
        budget = left * share / sum(shares[presets.index(name):])
        # evaluation and saving take the rest of the budget
        steps = max(min_steps, int(budget * rate * 0.85))
        tcfg.update(max_steps=steps, eval_every=max(min_steps, steps // 20), save_every=max(min_steps, steps // 2),
                    warmup_steps=min(tcfg["warmup_steps"], max(1, steps // 10)))
        print(f"{name}: {rate:.2f} steps/s = {tok_s:,.0f} tokens/s (probe); {steps} steps in ~{budget:.0f} s "
              f"({steps * tcfg['batch_size'] * cfg.block_size / meta['train_tokens']:.1f} epochs)", flush=True)
        torch.manual_seed(1337)
        model = LanguageModel(cfg)
        n_params = sum(x.numel() for x in model.parameters())
        domain = {"domain": DOMAIN, "data_fingerprint": meta["data_fingerprint"], "data": meta["data"], "preset": name,
                  **{k: meta[k] for k in ["n_train_cifs", "n_val_cifs", "n_dropped_too_long", "train_tokens",
                                          "max_cif_tokens"]},
                  "command": f"python benchmarks/gpu_train.py run --seconds {seconds:g} --presets {','.join(presets)}",
                  "device": gpu}
        t0 = time.perf_counter()
        s = train(model, src, TrainConfig(device=device.type, seed=1337, progress=False, eval_batches=10, **tcfg),
                  work / name, {"model": cfg.to_dict(), "tied": True}, tok, domain, resume=False)
        wall = time.perf_counter() - t0
        n = export(work / name, name, out, tar)
        results["runs"][name] = {"params": n_params, "probe_steps_per_s": rate, "probe_tokens_per_s": tok_s,
                                 "steps": steps, "batch_size": tcfg["batch_size"], "train_wall_s": wall,
                                 "tokens_per_s": s["tokens_per_s"], "best_val": s["best_val"],
                                 "final_loss": s["final_loss"], "shards": n}
        print(json.dumps({name: results["runs"][name]}), flush=True)
    results["total_s"] = time.perf_counter() - t_start
    (work / "results.json").write_text(json.dumps(results, indent=1))
    tar.add(work / "results.json", arcname="results.json")
    tar.close()
    print(json.dumps(results), flush=True)


def assemble(shards: Path, out: Path):
    """Rebuild each exported model as a checkpoint directory (fp32) under ``out``."""
    from safetensors.torch import load_file

    from sciar.checkpoint import save_checkpoint
    from sciar.model import LanguageModel, ModelConfig
    from sciar.tokenizer import tokenizer_from_dict

    with tarfile.open(shards / "runs.tar") as t:
        t.extractall(out / ".gpu-meta", filter="data")
    meta_dir = out / ".gpu-meta"
    for d in sorted(p for p in meta_dir.iterdir() if p.is_dir()):
        name = d.name
        cfg_all = json.loads((d / "config.json").read_text())
        domain = json.loads((d / "domain.json").read_text())
        tok = tokenizer_from_dict(json.loads((d / "tokenizer.json").read_text()))
        sd = {}
        for f in sorted(shards.glob(f"{name}.*.safetensors")):
            sd.update({k: v.float() for k, v in load_file(str(f)).items()})
        model = LanguageModel(ModelConfig.from_dict(cfg_all["model"]), tied=cfg_all.get("tied", True))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        # safetensors stores a tied weight once; the other name shares its storage
        loaded = {p.data_ptr() for k, p in model.state_dict().items() if k in sd}
        untied = [k for k in missing if model.state_dict()[k].data_ptr() not in loaded]
        if untied or unexpected:
            raise SystemExit(f"{name}: shards do not fit the model (missing {untied[:3]}, unexpected {unexpected[:3]})")
        domain.pop("weights_sha256", None)
        domain["weights_note"] = "trained in fp32 with bf16 autocast; carried back as fp16 and cast to fp32"
        dest = out / f"crystal-{name}-gpu"
        save_checkpoint(dest, model, {k: v for k, v in cfg_all.items() if k != "format"}, tok, domain)
        for f in ["train_log.csv", "loss.png"]:
            if (d / f).exists():
                (dest / f).write_bytes((d / f).read_bytes())
        print(f"{name}: {sum(v.numel() for v in model.parameters()):,} parameters -> {dest}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--out", type=Path, default=Path("build/gpu"))
    a = sub.add_parser("run")
    a.add_argument("--data", type=Path, default=Path("build/gpu"))
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--seconds", type=float, default=420, help="Wall-clock budget for all presets together.")
    a.add_argument("--presets", default="crystallm-small,medium")
    a.add_argument("--shares", default="", help="Relative time shares (default equal).")
    a.add_argument("--work", type=Path, default=Path("/tmp/sciar-gpu"))
    a.add_argument("--device", default="cuda")
    a.add_argument("--probe-steps", type=int, default=20)
    a.add_argument("--min-steps", type=int, default=50)
    a = sub.add_parser("assemble")
    a.add_argument("--shards", type=Path, required=True)
    a.add_argument("--out", type=Path, default=Path("build/crystals/runs"))
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.out)
    elif args.cmd == "run":
        presets = args.presets.split(",")
        shares = [float(x) for x in args.shares.split(",")] if args.shares else [1.0] * len(presets)
        run(args.data, args.out, args.seconds, presets, shares, args.work, args.device, args.probe_steps,
            args.min_steps)
    else:
        assemble(args.shards, args.out)


if __name__ == "__main__":
    main()
