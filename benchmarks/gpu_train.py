"""Train crystal language models on a lent GPU within a time budget; print throughput.

The GPU machine has no pymatgen, so the work is split in three:

    # here: the canonical CIF token stream of the shipped model's training data
    python benchmarks/gpu_train.py prepare --out build/gpu
    # there (PYTHONPATH=.): measure tokens/s, train each preset for its share of SECONDS, export fp16 shards
    python benchmarks/gpu_train.py run --data build/gpu --out $OUT --seconds 420 --presets crystallm-small,medium
    # here again: reassemble each model into a checkpoint directory
    python benchmarks/gpu_train.py assemble --shards DIR --out build/crystals/runs

Per-split fine-tuning (CDVAE's protocol trains one model per split; here it starts from the shipped
model and keeps the weights with the lowest loss on the first rows of the split's own val file):

    python benchmarks/gpu_train.py prepare --name mp_20 --data ../shared/data/crystals/mp_20/train.csv.gz \
        --val ../shared/data/crystals/mp_20/val.csv.gz --val-rows 500
    python benchmarks/gpu_train.py run --sets perov_5,carbon_24,mp_20 --presets medium \
        --init data/checkpoints/crystal-medium --lr 3e-4 --seconds 330 --out $OUT

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

from sciar.runtime import count_parameters  # noqa: E402

DATA = ["data/crystals/default.parquet", "../shared/data/crystals/perov_5/train.csv.gz",
        "../shared/data/crystals/carbon_24/train.csv.gz", "../shared/data/crystals/mp_20/train.csv.gz"]
SHARD_BYTES = 15 * 2**20


def prepare(out: Path, block_size: int = 1024, data=DATA, name: str = "crystal", val: str | None = None,
            val_rows: int | None = None):
    """Write the token stream (train/val ids and window starts) and what a checkpoint records about it.

    Without ``val`` 2% of the training CIFs are held out; with it, its first ``val_rows`` rows are the validation set.
    """
    import pandas as pd

    from domains.crystals.lm import corpus_source
    from domains.crystals.tokenizer import cif_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    if val is not None and val_rows:
        # a slice file of its own, so that its canonical form is cached like any input
        sliced = out / f"{name}_val{val_rows}.csv"
        pd.read_csv(val).head(val_rows).to_csv(sliced, index=False)
        val = str(sliced)
    src, info, fp, sources = corpus_source(data, block_size, dedup=False, val=val)
    (tr, trs), (va, vas) = src.splits["train"], src.splits["val"]
    np.savez_compressed(out / f"{name}_tokens.npz", train=tr.numpy().astype(np.uint16), train_starts=trs.numpy(),
                        val=va.numpy().astype(np.uint16), val_starts=vas.numpy())
    meta = {"data_fingerprint": fp, "data": sources, "block_size": block_size, "tokenizer": cif_tokenizer().to_dict(),
            "val": val, **info}
    (out / f"{name}_tokens.json").write_text(json.dumps(meta))
    print(f"{info['n_train_cifs']} train CIFs, {info['train_tokens']} tokens, {info['n_val_cifs']} val CIFs -> {out}")


def _source(data: Path, name: str = "crystal"):
    from sciar.data import TokenWindows

    z = np.load(data / f"{name}_tokens.npz")
    meta = json.loads((data / f"{name}_tokens.json").read_text())
    src = TokenWindows(z["train"].astype(np.int64), meta["block_size"], z["val"].astype(np.int64),
                       z["train_starts"], z["val_starts"])
    return src, meta


@torch.no_grad()
def val_loss(model, src, batch_size: int, device, batches: int = 10, seed: int = 1337) -> float:
    """The loss on the fixed validation batches the trainer evaluates (same generator), in eval mode."""
    from sciar.train import _batch_generator

    cuda = device.type == "cuda"
    model.eval()
    losses = []
    for i in range(batches):
        b = src.get_batch("val", batch_size, _batch_generator(seed + 7, 0, i))
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext():
            losses.append(float(model(b["idx"].to(device), targets=b["targets"].to(device))))
    model.train()
    return sum(losses) / len(losses)


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
        device: str = "cuda", probe_steps: int = 20, min_steps: int = 50, sets: list[str] | None = None,
        init: Path | None = None, lr: float | None = None, warmup: int | None = None):
    """Train one model per (preset, token set) pair for its share of ``seconds``; ``init`` starts each from a checkpoint.

    A single preset or set is used for every run. Fine-tuning (``init``) decays the rate to a tenth of ``lr``.
    """
    from domains.crystals import DOMAIN
    from domains.crystals.lm import preset
    from sciar.checkpoint import load_weights, read_checkpoint
    from sciar.model import LanguageModel, ModelConfig
    from sciar.tokenizer import tokenizer_from_dict
    from sciar.train import TrainConfig, train

    t_start = time.perf_counter()
    device = torch.device(device)
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    sets = sets or ["crystal"]
    n = max(len(presets), len(sets))
    presets, sets = presets * (n // len(presets)), sets * (n // len(sets))
    if not (len(presets) == len(sets) == len(shares) == n):
        raise SystemExit("give one preset or one per set, and one share per run")
    base = read_checkpoint(init, DOMAIN) if init else None
    print(f"{gpu}, torch {torch.__version__}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    results = {"gpu": gpu, "torch": torch.__version__, "init": str(init) if init else None, "runs": {}}
    tar = tarfile.open(out / "runs.tar", "w")
    for i, (pname, set_name) in enumerate(zip(presets, sets)):
        name = pname if set_name == "crystal" else f"{pname}-{set_name}"
        src, meta = _source(data, set_name)
        tok = tokenizer_from_dict(meta["tokenizer"])
        p = preset(pname)
        cfg = ModelConfig(vocab_size=tok.vocab_size, **p["model"])
        if base is not None and ModelConfig.from_dict(base.config["model"]) != cfg:
            raise SystemExit(f"{init} is not of preset {pname}'s shape")
        tcfg = dict(p["train"])
        if lr:
            tcfg.update(lr=lr, min_lr=lr / 10)
        if warmup is not None:
            tcfg["warmup_steps"] = warmup
        rate = probe(cfg, tcfg, src, device, steps=probe_steps)
        tok_s = rate * tcfg["batch_size"] * cfg.block_size
        left = seconds - (time.perf_counter() - t_start)
        budget = left * shares[i] / sum(shares[i:])
        # evaluation and saving take the rest of the budget
        steps = max(min_steps, int(budget * rate * 0.85))
        tcfg.update(max_steps=steps, eval_every=max(min_steps, steps // 20), save_every=max(min_steps, steps // 2),
                    warmup_steps=min(tcfg["warmup_steps"], max(1, steps // 10)))
        print(f"{name}: {meta['train_tokens']} train tokens, {meta['n_val_cifs']} val CIFs; {rate:.2f} steps/s = "
              f"{tok_s:,.0f} tokens/s (probe); {steps} steps in ~{budget:.0f} s "
              f"({steps * tcfg['batch_size'] * cfg.block_size / meta['train_tokens']:.1f} epochs)", flush=True)
        torch.manual_seed(1337)
        model = LanguageModel(cfg)
        start_val = None
        if base is not None:
            load_weights(base, model, device)
            start_val = val_loss(model, src, tcfg["batch_size"], device)
            print(f"{name}: validation loss of {init} before training {start_val:.4f}", flush=True)
        n_params = count_parameters(model)
        domain = {"domain": DOMAIN, "data_fingerprint": meta["data_fingerprint"], "data": meta["data"], "preset": pname,
                  **{k: meta[k] for k in ["n_train_cifs", "n_val_cifs", "n_dropped_too_long", "train_tokens",
                                          "max_cif_tokens"]},
                  "command": f"python benchmarks/gpu_train.py run --seconds {seconds:g} --presets {','.join(presets)}"
                             + (f" --sets {','.join(sets)}" if set_name != "crystal" else "")
                             + (f" --init {init} --lr {tcfg['lr']:g}" if init else ""),
                  "device": gpu}
        if meta.get("val"):
            domain["val_data"] = meta["val"]
        if init:
            domain["init"] = {"checkpoint": str(init), "data_fingerprint": base.domain.get("data_fingerprint"),
                              "val_loss_before": start_val}
        t0 = time.perf_counter()
        s = train(model, src, TrainConfig(device=device.type, seed=1337, progress=False, eval_batches=10, **tcfg),
                  work / name, {"model": cfg.to_dict(), "tied": True}, tok, domain, resume=False)
        wall = time.perf_counter() - t0
        k = export(work / name, name, out, tar)
        results["runs"][name] = {"params": n_params, "probe_steps_per_s": rate, "probe_tokens_per_s": tok_s,
                                 "steps": steps, "batch_size": tcfg["batch_size"], "lr": tcfg["lr"],
                                 "train_wall_s": wall, "tokens_per_s": s["tokens_per_s"], "val_before": start_val,
                                 "best_val": s["best_val"], "final_loss": s["final_loss"], "shards": k}
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
        print(f"{name}: {count_parameters(model):,} parameters -> {dest}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--out", type=Path, default=Path("build/gpu"))
    a.add_argument("--name", default="crystal", help="Name of the token set (what run's --sets names).")
    a.add_argument("--data", nargs="+", default=DATA, help="Training files (default: the shipped model's data).")
    a.add_argument("--val", help="Validation file (default: 2%% of the training CIFs).")
    a.add_argument("--val-rows", type=int, help="Use only the first rows of --val.")
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
    a.add_argument("--sets", default="crystal", help="Token sets prepared under --data, one run each.")
    a.add_argument("--init", type=Path, help="Start every run from this checkpoint (fine-tuning).")
    a.add_argument("--lr", type=float, help="Peak learning rate (default: the preset's).")
    a.add_argument("--warmup", type=int, help="Warm-up steps (default: the preset's).")
    a = sub.add_parser("assemble")
    a.add_argument("--shards", type=Path, required=True)
    a.add_argument("--out", type=Path, default=Path("build/crystals/runs"))
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.out, data=args.data, name=args.name, val=args.val, val_rows=args.val_rows)
    elif args.cmd == "run":
        presets, sets = args.presets.split(","), args.sets.split(",")
        n = max(len(presets), len(sets))
        shares = [float(x) for x in args.shares.split(",")] if args.shares else [1.0] * n
        run(args.data, args.out, args.seconds, presets, shares, args.work, args.device, args.probe_steps,
            args.min_steps, sets, args.init, args.lr, args.warmup)
    else:
        assemble(args.shards, args.out)


if __name__ == "__main__":
    main()
