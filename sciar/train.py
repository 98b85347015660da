"""One training loop for every adapter.

The model is any ``nn.Module`` whose ``forward(**batch)`` returns a scalar loss.
Batches come from a :class:`BatchSource`; the trainer hands it a generator seeded
by (seed, step, micro-batch index), so the data a step sees is a pure function of
the step. That makes resume exact (the data position is the step) and lets DDP
ranks split a step's micro-batches between them: ``torchrun`` with N processes
and accumulation A computes the same update as one process with accumulation N*A.

Checkpoints: ``OUT/`` holds the best weights by validation loss (the last ones
without validation), ``OUT/last/`` the last weights plus optimizer, RNG and step,
each written atomically. ``OUT/train_log.csv`` and ``OUT/loss.png`` record the run.
With ``ema > 0`` a moving average of the weights is updated after every optimizer step, saved
beside the weights in both (``ema.safetensors``), and validation scores the averaged weights.
Ctrl-C or SIGTERM (a scheduler's pre-emption) lets the current step finish, saves
``OUT/last/`` and then raises ``KeyboardInterrupt``: the next run resumes from that step.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from sciar.checkpoint import load_weights, read_checkpoint, refuse_other_options, save_checkpoint
from sciar.distributed import init_distributed
from sciar.ema import EMA
from sciar.errors import CheckpointError, DataError, SciarError
from sciar.interrupt import deferred_stop
from sciar.io import pyplot, save_figure, write_text_atomic


class BatchSource(Protocol):
    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A batch of tensors for ``model(**batch)``; ``split`` is ``"train"`` or ``"val"``."""


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 16  # per micro-batch, per process
    grad_accum: int = 1  # micro-batches per step, summed over all processes
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_batches: int = 20
    save_every: int = 250
    patience: int = 0  # stop after this many evaluations without improvement (0 = never)
    seed: int = 1337
    device: str = "auto"
    compile: bool = False
    progress: bool = True
    ema: float = 0.0  # decay of an exponential moving average of the weights (0 = none); see sciar.ema
    optimizer: str = "adamw"  # "adamw" | "lion" (sciar.lion; give it lion_budget's smaller lr, larger decay)
    emo: str = ""  # EMO: the checkpoint (path or shipped name) whose frozen token embedding sets the transport cost

    def __post_init__(self):
        if not 0.0 <= self.ema < 1.0:
            raise SciarError(f"ema must be a decay in [0, 1) (0 = off), got {self.ema}")
        if self.optimizer not in ("adamw", "lion"):
            raise SciarError(f"unknown optimizer {self.optimizer!r} (adamw or lion)")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SciarError("CUDA was asked for but no GPU is available")
    return torch.device(device)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * frac)) * (cfg.lr - cfg.min_lr)


def lion_budget(budget: dict, factor: float = 3.0) -> dict:
    """A training budget (TrainConfig fields) moved to Lion: learning rates ``factor`` times smaller, weight
    decay ``factor`` times larger (Chen et al.'s advice, 3-10x, keeping their product)."""
    out = dict(budget, optimizer="lion")
    for k in ("lr", "min_lr"):
        if k in out:
            out[k] = out[k] / factor
    out["weight_decay"] = out.get("weight_decay", TrainConfig.weight_decay) * factor
    return out


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SciarError("the model has no trainable parameters")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "lion":
        from sciar.lion import Lion

        return Lion(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def attach_emo(model: torch.nn.Module, checkpoint: str | Path):
    """Give a language model EMO's transport cost: the token embedding of ``checkpoint``, frozen."""
    from safetensors import safe_open

    from sciar.paths import find_checkpoint

    if not hasattr(model, "emo_cost"):
        raise SciarError("EMO (emo=...) needs a token language model")
    ck = read_checkpoint(find_checkpoint(checkpoint))
    with safe_open(str(ck.path / "model.safetensors"), "pt") as f:
        names = [n for n in ("trunk.wte.weight", "head.weight") if n in f.keys()]
        if not names:
            raise SciarError(f"{ck.path} has no token embedding for EMO's transport cost")
        emb = f.get_tensor(names[0])
    if emb.shape[0] != model.cfg.vocab_size:
        raise SciarError(f"EMO: {ck.path.name}'s embedding has {emb.shape[0]} tokens, the model {model.cfg.vocab_size}")
    model.emo_cost = emb.float().to(next(model.parameters()).device)



def _batch_generator(seed: int, step: int, micro: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step) * 1_009 + micro)
    return g


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _count_tokens(batch: dict) -> int:
    t = batch.get("targets", next(v for v in batch.values() if isinstance(v, torch.Tensor)))
    return t.shape[0] * (t.shape[1] if t.dim() > 1 else 1)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {f"state.{i}.{k}": v.detach().cpu().contiguous() for i, s in sd["state"].items() for k, v in s.items()}
    meta = {"param_groups": sd["param_groups"], "state_keys": {str(i): list(s) for i, s in sd["state"].items()}}
    return tensors, meta


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict):
    state = {int(i): {k: tensors[f"state.{i}.{k}"] for k in keys} for i, keys in meta["state_keys"].items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def train(
    model: torch.nn.Module,
    source: BatchSource,
    cfg: TrainConfig,
    out: str | Path,
    checkpoint_config: dict,
    tokenizer,
    domain: dict,
    resume: bool = True,
    callback: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train ``model`` and write checkpoints to ``out``; returns a summary dict.

    ``checkpoint_config``, ``tokenizer`` and ``domain`` describe the model for
    :func:`sciar.checkpoint.save_checkpoint`. ``callback(step, record)`` runs after
    each step on every process (tests use it to interrupt a run).
    """
    out = Path(out)
    device = resolve_device(cfg.device)
    dinfo = init_distributed(device)
    if dinfo.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dinfo.local_rank)
    # the processes share a step's micro-batches; with fewer micro-batches than processes each takes one
    local_accum = max(1, round(cfg.grad_accum / dinfo.world))
    if dinfo.main and local_accum * dinfo.world != cfg.grad_accum:
        print(f"note: {dinfo.world} processes x {local_accum} micro-batches of {cfg.batch_size}: "
              f"{local_accum * dinfo.world * cfg.batch_size} sequences per step (grad_accum {cfg.grad_accum} asked)")
    torch.manual_seed(cfg.seed)
    model.to(device)
    if cfg.emo:
        attach_emo(model, cfg.emo)
    opt = make_optimizer(model, cfg, device)
    start_step, best_val, bad_evals, log = 0, float("inf"), 0, []
    ema = EMA(model, cfg.ema) if cfg.ema else None

    last = out / "last"
    if resume and (last / "trainer.json").is_file():
        state = json.loads((last / "trainer.json").read_text())
        ck = read_checkpoint(last)  # checks every file and the weights' checksum
        refuse_other_options(ck, checkpoint_config.get("model", {}))
        was = ck.domain.get("train_config", {}).get("optimizer", "adamw")
        if was != cfg.optimizer:
            raise CheckpointError(f"{last} was trained with optimizer {was}; optimizer {cfg.optimizer} does not combine "
                                  "with its saved state (keep the optimizer, or delete it to restart)")
        if ck.domain.get("step") != state["step"]:
            raise SciarError(f"{last}: training state and weights are from different steps; delete {last} to restart")
        load_weights(ck, model, device)
        if ema is not None and "ema_sha256" in ck.domain:
            load_weights(ck, ema.model, device, ema=True)
        elif ema is not None:
            ema = EMA(model, cfg.ema)
            if dinfo.main:
                print(f"note: {last} has no EMA weights; the average starts from the resumed weights")
        _load_optimizer(opt, load_file(str(last / "optimizer.safetensors")), state["optimizer"])
        rng = load_file(str(last / "rng.safetensors"))
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)
        start_step, best_val, bad_evals, log = state["step"], state["best_val"], state["bad_evals"], state["log"]
        if dinfo.main:
            print(f"resuming from {last} at step {start_step}")

    net = model
    if dinfo.world > 1:
        net = DistributedDataParallel(model, device_ids=[dinfo.local_rank] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    meta = dict(domain, train_config=asdict(cfg))

    def save(path: Path, step: int, with_state: bool):
        def extra(tmp: Path):
            if not with_state:
                return
            tensors, opt_meta = _optimizer_tensors(opt)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            rng = {"cpu": torch.get_rng_state()}
            if device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(device)
            save_file(rng, str(tmp / "rng.safetensors"))
            state = {"step": step, "best_val": best_val, "bad_evals": bad_evals, "log": log, "optimizer": opt_meta}
            (tmp / "trainer.json").write_text(json.dumps(state))

        save_checkpoint(path, model, checkpoint_config, tokenizer, dict(meta, step=step), extra=extra,
                        ema=ema.model if ema is not None else None)

    @torch.no_grad()
    def evaluate() -> float:
        """Validation loss of the weights a user samples with: the moving average when there is one."""
        scored = ema.model if ema is not None else model
        scored.eval()
        losses = []
        for i in range(cfg.eval_batches):
            batch = source.get_batch("val", cfg.batch_size, _batch_generator(cfg.seed + 7, 0, i))
            with amp:
                losses.append(float(scored(**_to(batch, device))))
        model.train()
        return sum(losses) / len(losses)

    has_val = cfg.eval_batches > 0 and getattr(source, "has_val", True)
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=start_step, disable=not (cfg.progress and dinfo.main), desc="train",
               unit="step", mininterval=1.0)
    with deferred_stop() as interrupt:
        t0, tokens, step = time.perf_counter(), 0, start_step
        stopped_early = interrupted = False
        while step < cfg.max_steps:
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            # the loss stays on the device until the step's work is queued: reading it mid-step would stall a GPU
            loss_acc = torch.zeros((), device=device)
            for m in range(local_accum):
                micro = m * dinfo.world + dinfo.rank
                batch = _to(source.get_batch("train", cfg.batch_size, _batch_generator(cfg.seed, step, micro)), device)
                tokens += _count_tokens(batch) * dinfo.world
                sync = m == local_accum - 1 or dinfo.world == 1
                ctx = net.no_sync() if (not sync and isinstance(net, DistributedDataParallel)) else nullcontext()
                with ctx, amp:
                    loss = net(**batch) / local_accum
                loss.backward()
                loss_acc += loss.detach().float()
            if dinfo.world > 1:
                # DDP averaged the gradients; average the reported loss too, and agree on an interrupt
                # (a rank that stopped alone would leave the others waiting in the next all-reduce)
                agreed = torch.stack([loss_acc, torch.tensor(float(interrupt["stop"]), device=device)])
                dist.all_reduce(agreed)
                loss_acc, interrupted = agreed[0] / dinfo.world, bool(agreed[1] > 0)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if ema is not None:  # every rank holds the same weights after the step, so the same average
                ema.update(model)
            loss_sum = float(loss_acc)
            if not math.isfinite(loss_sum):
                # raised before anything of this step is saved: the last checkpoint holds the weights before it
                raise DataError(f"loss became {loss_sum} at step {step}; lower the learning rate or check the data")
            step += 1
            elapsed = time.perf_counter() - t0
            rec = {"step": step, "lr": lr, "loss": loss_sum, "val_loss": None, "tokens_per_s": tokens / max(elapsed, 1e-9)}
            is_last = step == cfg.max_steps
            if has_val and (step % cfg.eval_every == 0 or is_last):
                rec["val_loss"] = evaluate()
                if rec["val_loss"] < best_val:
                    best_val, bad_evals = rec["val_loss"], 0
                    if dinfo.main:
                        save(out, step, with_state=False)
                else:
                    bad_evals += 1
                    if cfg.patience and bad_evals >= cfg.patience:
                        stopped_early = True
            log.append(rec)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
            if callback is not None:
                callback(step, rec)
            if dinfo.world == 1:
                interrupted = interrupt["stop"]
            if dinfo.main and (step % cfg.save_every == 0 or is_last or stopped_early or interrupted):
                save(last, step, with_state=True)
                if not has_val:
                    save(out, step, with_state=False)
                write_log(log, out)
            if stopped_early or interrupted:
                break
        bar.close()
    if dinfo.main:
        if not (out / "model.safetensors").exists():
            save(out, step, with_state=False)
        write_log(log, out)
    if dinfo.world > 1:
        dist.barrier()
    if interrupted:
        if dinfo.main:
            tqdm.write(f"stopped at step {step}; {last} holds it: run the same command again to resume")
        raise KeyboardInterrupt
    return {"steps": step, "best_val": best_val, "final_loss": log[-1]["loss"] if log else None,
            "tokens_per_s": log[-1]["tokens_per_s"] if log else None, "stopped_early": stopped_early}


def write_log(log: list[dict], out: Path):
    """The CSV log and a loss-curve PNG."""
    import pandas as pd

    if not log:
        return
    df = pd.DataFrame(log)
    write_text_atomic(out / "train_log.csv", df.to_csv(index=False))
    fig, ax = pyplot().subplots(figsize=(6, 4))
    ax.plot(df["step"], df["loss"], label="train", lw=1)
    val = df.dropna(subset=["val_loss"])
    if len(val):
        ax.plot(val["step"], val["val_loss"], "o-", label="validation", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out / "loss.png")
