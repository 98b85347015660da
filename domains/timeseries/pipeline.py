"""Training and evaluating the forecaster on a dataset: presets, parts, checkpoints, the model as a forecaster."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sciar.checkpoint import load_model, load_weights, read_checkpoint
from sciar.errors import SciarError
from sciar.io import fingerprint
from sciar.model import ModelConfig
from sciar.presets import choose, override
from sciar.runtime import count_parameters
from sciar.train import TrainConfig, train

from .data import (Part, SegmentWindows, Series, StandardScaler, calendar, future_timestamps,
                   standard_splits)
from .model import HeadConfig, SegmentForecaster, build_model

DOMAIN = "timeseries"

# model shapes (the trunk, the width of the segment embedding and projection) and training budgets;
# "default" trains ETTh1 in minutes on 2 CPU cores
PRESETS = {
    "tiny": {"model": dict(n_layer=1, n_head=2, n_embd=32), "hidden": 64,
             "train": dict(max_steps=60, batch_size=32, lr=1e-3, eval_every=30)},
    "small": {"model": dict(n_layer=2, n_head=4, n_embd=64), "hidden": 128,
              "train": dict(max_steps=600, batch_size=128, lr=1e-3, eval_every=100)},
    "default": {"model": dict(n_layer=3, n_head=4, n_embd=128), "hidden": 256,
                "train": dict(max_steps=1500, batch_size=64, lr=5e-4, eval_every=150)},
    "base": {"model": dict(n_layer=6, n_head=8, n_embd=256), "hidden": 512,
             "train": dict(max_steps=4000, batch_size=128, lr=5e-4, eval_every=250)},
}


# the horizons a dataset model is validated on by default (rolled forecasts, as the benchmark scores them)
VAL_HORIZONS = [96, 192, 336, 720]


def model_configs(preset: str, segment: int = 96, context: int = 7, embed: str = "mlp", time: bool = True,
                  block_size: int = 32, dropout: float = 0.1, window: int = 16, skip: int = 0, stats: bool = False,
                  anchor: str = "mean") -> tuple[ModelConfig, HeadConfig]:
    p = choose(PRESETS, preset)
    window = max(window, context + 1)
    mcfg = ModelConfig(vocab_size=0, block_size=max(block_size, window), dropout=dropout, pos="rope", **p["model"])
    head = HeadConfig(segment=segment, context=context, window=window, embed=embed, hidden=p["hidden"], dropout=dropout,
                      time=time, skip=skip, stats=stats, anchor=anchor)
    return mcfg, head


def preset_budget(preset: str) -> dict:
    """The preset's training budget: steps, batch size, peak rate, evaluation interval."""
    return choose(PRESETS, preset)["train"]


def train_config(preset: str, **over) -> TrainConfig:
    """The preset's schedule (cosine from its rate to a tenth, early stopping) with the options given (not None)."""
    p = preset_budget(preset)
    cfg = dict(max_steps=p["max_steps"], batch_size=p["batch_size"], lr=p["lr"], min_lr=p["lr"] / 10,
               warmup_steps=min(100, p["max_steps"] // 10), weight_decay=0.05, eval_every=p["eval_every"],
               save_every=p["eval_every"], eval_batches=20, patience=4, grad_clip=1.0)
    return TrainConfig.from_dict(override(cfg, **over))


@dataclass
class Prepared:
    """A dataset ready for training and evaluation: standardised parts and the scaler."""

    series: Series
    scaler: StandardScaler
    train: Part
    val: Part
    test: Part
    splits: object


def prepare(series: Series, lookback: int, split: str = "auto") -> Prepared:
    sp = standard_splits(series, lookback, split)
    sc = StandardScaler.fit(series.values[sp.train[0] : sp.train[1]])
    v = sc.transform(series.values).astype(np.float32)
    step = series.step
    cal = calendar(series.timestamps, series.length, step)

    def part(r, name):
        return Part(v[r[0] : r[1]], cal[r[0] : r[1]], name)

    return Prepared(series, sc, part(sp.train, "train"), part(sp.val, "val"), part(sp.test, "test"), sp)


def load_forecaster(checkpoint: str | Path, device: str = "cpu") -> tuple[SegmentForecaster, object]:
    """A trained forecaster (eval mode) and its checkpoint record from a path or a shipped name."""
    return load_model(checkpoint, DOMAIN, device)


def fit(
    model: SegmentForecaster, train_parts: list[Part], val_parts: list[Part] | None, out: str | Path, tcfg: TrainConfig,
    extra_config: dict | None = None, domain_extra: dict | None = None, adapter_only: bool = False, resume: bool = True,
    keep_start: bool = False, val_horizons: list[int] | None = None,
) -> dict:
    """Train ``model`` on windows of the parts with :func:`sciar.train.train`; writes a checkpoint to ``out``.

    ``keep_start``: also score the starting weights on the validation batches and keep them when no
    training step beats them (fine-tuning a backbone that already generalises better than it can be tuned).
    ``val_horizons``: validate (early stopping, best checkpoint, ``keep_start``) on the rolled forecast's MSE
    averaged over these horizons (:meth:`SegmentForecaster.rolled_loss`) instead of the next-segment loss.
    """
    head = model.head
    val_horizons = rolled_horizons(head, val_horizons)
    src = SegmentWindows(train_parts, val_parts, head.segment, head.window - 1, val_horizons=val_horizons)
    model.freeze_trunk(adapter_only)
    config = {"model": model.cfg.to_dict(), "head": head.to_dict(), **(extra_config or {})}
    fp = fingerprint([p.name for p in train_parts] + [str(p.values.shape) + str(float(p.values[:100].sum()))
                                                      for p in train_parts])
    domain = {"domain": DOMAIN, "data_fingerprint": fp, "adapter_only": adapter_only, "val_horizons": val_horizons,
              "trainable_params": count_parameters(model, True), "params": count_parameters(model), **(domain_extra or {})}
    start_val = None
    if keep_start and src.has_val and not (resume and (Path(out) / "last" / "trainer.json").is_file()):
        start_val = val_loss(model, src, tcfg)
        start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    summary = train(model, src, tcfg, out, checkpoint_config=config, tokenizer=None, domain=domain, resume=resume)
    if start_val is not None:
        summary["start_val"] = start_val
        summary["kept_start"] = bool(start_val <= summary["best_val"])
        if summary["kept_start"]:
            # fine-tuning never beat the starting weights on the validation split: keep those
            from sciar.checkpoint import save_checkpoint

            model.load_state_dict(start_state)
            save_checkpoint(out, model, config, None, dict(domain, train_config=asdict(tcfg), step=0,
                                                           kept_start=True, start_val=start_val))
    summary["val_horizons"] = val_horizons
    summary["adapter_only"] = adapter_only
    summary["stats"] = head.stats
    summary["train_windows"] = src.num_windows("train")
    summary["trainable_params"] = domain["trainable_params"]
    return summary


def pretrain(out: str | Path, corpus: list[Path], packages: bool = True, synthetic: int = 600_000,
             preset: str = "default", segment: int = 96, context: int = 7, max_steps: int | None = None,
             batch_size: int | None = None, lr: float | None = None, time: bool = True, untimed_steps: int = 600,
             anchor: str = "mean", device: str = "auto", progress: bool = True, resume: bool = True,
             log=print) -> tuple[dict, dict | None]:
    """``sciar timeseries pretrain``: the backbone on the corpus (:func:`corpus.load_corpus`) for a fixed budget,
    keeping the best corpus-validation checkpoint, then :func:`fit_untimed` for ``untimed_steps`` steps.
    Returns the two stages' training summaries (the second None when skipped or done before)."""
    from .corpus import corpus_names, describe, load_corpus

    mcfg, head = model_configs(preset, segment=segment, context=context, time=time, anchor=anchor)
    series = load_corpus(corpus, packages=packages, min_length=(context + 1) * segment, synthetic=synthetic)
    table = describe(series)
    log(f"corpus: {len(series)} sources, {int(table['channels'].sum())} channels, {int(table['points'].sum()):,} points")
    train_parts, val_parts = corpus_parts(series)
    model = SegmentForecaster(mcfg, head)
    # a fixed budget over a large corpus: no early stopping, the best validation checkpoint is kept
    tcfg = train_config(preset, max_steps=max_steps, batch_size=batch_size, lr=lr, device=device, progress=progress,
                        patience=0, eval_every=250, save_every=250)
    summary = fit(model, train_parts, val_parts, out, tcfg, extra_config={"corpus": corpus_names(table)},
                  domain_extra={"stage": "pretrain", "corpus": table.to_dict("records")}, resume=resume)
    untimed = None
    if untimed_steps and time:
        untimed = fit_untimed(out, train_parts, train_config(preset, max_steps=untimed_steps, batch_size=batch_size,
                                                             lr=lr, device=device, progress=progress, save_every=250),
                              resume=resume)
    return summary, untimed


def fit_untimed(out: str | Path, train_parts: list[Part], tcfg: TrainConfig, resume: bool = True) -> dict | None:
    """Pretraining's second stage: fit the calendar's "unknown" entries, which series without timestamps get
    (M4, plain tables), on the training windows shown without their timestamps, every other weight frozen
    (:meth:`SegmentForecaster.train_only_untimed`), so forecasts of timestamped series do not change.

    Starts from the checkpoint in ``out`` (the first stage's best) and writes it back, recording the stage in
    ``domain.json``; does nothing if that checkpoint has been through it or has no calendar embedding.
    ``tcfg.max_steps`` steps; the stage's own training state lives in ``out/untimed`` until it ends."""
    import shutil

    from sciar.checkpoint import save_checkpoint

    out = Path(out)
    ck = read_checkpoint(out, DOMAIN)
    if "untimed" in ck.domain:
        return None
    model = build_model(ck.config)
    load_weights(ck, model, "cpu")
    if model.time is None:
        return None
    model.train_only_untimed()
    src = SegmentWindows(train_parts, None, model.head.segment, model.head.window - 1, time_dropout=1.0)
    # no weight decay: the frozen rows of the trained tables would shrink without it
    tcfg = TrainConfig.from_dict({**asdict(tcfg), "weight_decay": 0.0, "patience": 0})
    work = out / "untimed"
    domain = dict(ck.domain)
    summary = train(model, src, tcfg, work, checkpoint_config=ck.config, tokenizer=None, domain=domain, resume=resume)
    domain["untimed"] = {"steps": summary["steps"], "final_loss": summary["final_loss"],
                         "trained": "the calendar's unknown entries (day of week, day, month, step class)"}
    save_checkpoint(out, model.cpu(), ck.config, None, domain)
    shutil.rmtree(work, ignore_errors=True)
    return summary


def rolled_horizons(head: HeadConfig, horizons: list[int] | None) -> list[int] | None:
    """The validation horizons that a training window holds after its lookback (longer ones are cut to it)."""
    if not horizons:
        return None
    room = head.window * head.segment - head.lookback
    if room < 1:
        return None
    return sorted({min(int(h), room) for h in horizons})


@torch.no_grad()
def val_loss(model: SegmentForecaster, src: SegmentWindows, tcfg: TrainConfig) -> float:
    """The validation loss exactly as :func:`sciar.train.train` computes it (same batches)."""
    from sciar.train import _batch_generator

    was = model.training
    model.eval()
    losses = [float(model(**src.get_batch("val", tcfg.batch_size, _batch_generator(tcfg.seed + 7, 0, i))))
              for i in range(tcfg.eval_batches)]
    model.train(was)
    return sum(losses) / len(losses)


def window_marks(cal: np.ndarray, starts: np.ndarray, n_seg: int, segment: int) -> np.ndarray:
    """Calendar marks ``[N, n_seg, 10]`` of the segments of windows starting at ``starts`` in ``cal``."""
    idx = starts[:, None] + np.arange(n_seg)[None, :] * segment
    return np.concatenate([cal[idx], cal[idx + segment - 1]], axis=2)


def extended_calendar(prep_part_cal: np.ndarray, series: Series, end_row: int, extra: int) -> np.ndarray:
    """A part's calendar continued ``extra`` steps past its end (future timestamps)."""
    if series.timestamps is None:
        return np.concatenate([prep_part_cal, np.repeat(prep_part_cal[-1:], extra, axis=0)])
    ts = series.timestamps[:end_row]
    fut = future_timestamps(ts, series.step, extra)
    return np.concatenate([prep_part_cal, calendar(fut, extra, series.step)])


def model_forecaster(model: SegmentForecaster, cal: np.ndarray | None, lookback: int, horizon: int,
                     batch: int = 2048, device: str = "cpu", prompt_segments: int = 0):
    """Wrap the model as an :func:`evaluate` forecaster over a part whose (extended) calendar is ``cal``.

    ``prompt_segments``: the windows it gets hold that many segments before the lookback, which go in
    front of it as an in-context prompt (normalised on their own, with their own calendar marks)."""
    S = model.head.segment
    P = prompt_segments * S
    n_seg = (P + lookback) // S + -(-horizon // S)

    def fn(ctx: np.ndarray, starts: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(0, len(ctx), batch):
            c = torch.from_numpy(ctx[i : i + batch]).to(device)
            m = None
            if cal is not None and model.time is not None:
                m = torch.from_numpy(window_marks(cal, starts[i : i + batch], n_seg, S)).to(device)
            pr = c[:, :P] if P else None
            pm = m[:, :prompt_segments] if P and m is not None else None
            outs.append(model.forecast(c[:, P:], m[:, prompt_segments:] if m is not None else None, horizon,
                                       prompt=pr, prompt_marks=pm).cpu().numpy())
        return np.concatenate(outs)

    return fn


def corpus_parts(series: list[Series], val_frac: float = 0.1, lookback: int = 672) -> tuple[list[Part], list[Part]]:
    """Each corpus series: its first 90% for training, the rest (starting a lookback earlier) for validation;
    standardised by the training part's statistics."""
    train_parts, val_parts = [], []
    for s in series:
        n_val = int(s.length * val_frac)
        cut = s.length - n_val
        sc = StandardScaler.fit(s.values[:cut])
        v = sc.transform(s.values).astype(np.float32)
        cal = calendar(s.timestamps, s.length, s.step)
        train_parts.append(Part(v[:cut], cal[:cut], s.name))
        lo = max(0, cut - lookback)
        val_parts.append(Part(v[lo:], cal[lo:], s.name))
    return train_parts, val_parts


def fit_window(model: SegmentForecaster, train: Part, val: Part | None):
    """Shrink the training window (in segments) to what the training split holds, keeping >= 4 windows,
    and, where possible, to what the validation split holds; never below the lookback plus one segment."""
    S, k = model.head.segment, model.head.context
    fits = lambda p: max(0, (p.values.shape[0] - 4) // S) if p is not None else 0
    w = min(model.head.window, fits(train))
    if val is not None and fits(val) >= k + 1:
        w = min(w, fits(val))
    model.head.window = max(w, k + 1)
    if model.cfg.block_size < model.head.window:
        model.head.window = model.cfg.block_size


def init_skip(model: SegmentForecaster, parts: list[Part], ridge: float = 0.1, max_rows: int = 200_000, seed: int = 0):
    """Least-squares start for the linear path: the next segment from the last ``skip`` segments of the
    lookback, on windows normalised by their lookback as in training; the projection's last layer starts
    at zero, so training begins from this linear forecaster and learns what it misses."""
    S, k, n = model.head.segment, model.head.skip, model.head.context
    L = n * S
    rows = [(i, c, s) for i, p in enumerate(parts) for c in range(p.values.shape[1])
            for s in range(p.values.shape[0] - L - S + 1)]
    if not rows:
        return
    rng = np.random.default_rng(seed)
    if len(rows) > max_rows:
        rows = [rows[j] for j in rng.choice(len(rows), max_rows, replace=False)]
    xtx, xty = np.zeros((k * S, k * S)), np.zeros((k * S, S))
    for a in range(0, len(rows), 8192):
        w = np.stack([parts[i].values[s : s + L + S, c] for i, c, s in rows[a : a + 8192]]).astype(np.float64)
        mean, std = w[:, :L].mean(1, keepdims=True), np.sqrt(w[:, :L].var(1, keepdims=True) + model.head.eps)
        w = (w - mean) / std
        X = np.zeros((len(w), k * S))
        m = min(k, n) * S
        X[:, k * S - m :] = w[:, L - m : L]
        xtx += X.T @ X
        xty += X.T @ w[:, L:]
    W = np.linalg.solve(xtx + ridge * np.trace(xtx) / (k * S) * np.eye(k * S), xty)
    with torch.no_grad():
        model.skip.weight.copy_(torch.from_numpy(W.T).float())
        last = model.proj[-1] if isinstance(model.proj, torch.nn.Sequential) else model.proj
        last.weight.zero_()
        last.bias.zero_()


def dataset_parts(prep: Prepared, channels: list[int] | None) -> tuple[Part, Part]:
    def sel(p: Part) -> Part:
        return p if channels is None else Part(p.values[:, channels], p.cal, p.name)

    return sel(prep.train), sel(prep.val)


def init_model(init: str | Path | None, preset: str, segment: int, context: int, embed: str, time: bool,
               dropout: float = 0.1, skip: int = 0, stats: bool = False) -> tuple[SegmentForecaster, dict]:
    """A fresh model, or one loaded from a checkpoint (its shapes win; the training context is ``context``)."""
    if init is None:
        mcfg, head = model_configs(preset, segment=segment, context=context, embed=embed, time=time, dropout=dropout,
                                   skip=skip, stats=stats)
        return SegmentForecaster(mcfg, head), {}
    model, ck = load_forecaster(init)
    if model.head.segment != segment:
        raise SciarError(f"{ck.path} uses segments of {model.head.segment} steps, not {segment}")
    model.head.context = context
    if model.cfg.block_size < context + 1:
        raise SciarError(f"{ck.path} takes at most {model.cfg.block_size} segments; the lookback needs {context + 1}")
    if stats and model.stats is None:
        model.add_stats()
    if skip and model.skip is None:
        model.add_skip(skip)  # at zero, fitted jointly with the backbone (no least-squares start)
    return model, {"init": str(ck.path), "init_sha256": ck.domain.get("weights_sha256")}


def train_on_series(csv, out, target=None, features="all", init=None, adapter_only=None, preset="default",
                    lookback=672, segment=96, embed="mlp", time=True, split="auto", fill="error", max_steps=None,
                    batch_size=None, lr=None, device="auto", progress=True, resume=True, series: Series | None = None,
                    seed: int = 1337, window: int | None = None, skip: int = 0,
                    val_horizons: list[int] | None = VAL_HORIZONS, stats: bool | None = None,
                    patience: int | None = None, eval_batches: int | None = None, model_hook=None) -> dict:
    """``sciar timeseries train``: fit one dataset's training split, validate on its validation split.

    From a backbone (``init``) the whole model is fine-tuned (``adapter_only``: only the adapter, at twice
    the preset's rate) and checkpoints are selected on the rolled forecast's validation MSE
    (``val_horizons``). ``stats`` adds the window-statistics inputs (off by default: on ETTh1 they win on
    validation and lose on test, see the README). ``model_hook``: a function given the model before training,
    returning the model to train (benchmarks/timeseries_recipes.py adds experimental training losses there)."""
    from .data import read_series

    if features not in ("all", "target"):
        raise SciarError(f"--features must be all or target (got {features!r})")
    if lookback % segment or lookback < segment:
        raise SciarError(f"the lookback ({lookback}) must be a positive multiple of the segment length ({segment})")
    if adapter_only and init is None:
        raise SciarError("--adapter-only needs --init: a pretrained backbone to freeze")
    adapter_only, stats = bool(adapter_only), bool(stats)
    series = series if series is not None else read_series(csv, target=target, fill=fill)
    if series.length < lookback + segment:
        raise SciarError(f"{series.name}: {series.length} rows is shorter than the lookback ({lookback}) plus one "
                         f"segment ({segment})")
    prep = prepare(series, lookback, split)
    chans = None if features == "all" else [series.columns.index(series.target)]
    tr, va = dataset_parts(prep, chans)
    model, init_info = init_model(init, preset, segment, lookback // segment, embed, time, skip=skip, stats=stats)
    if model_hook is not None:
        model = model_hook(model)
    if window is not None:
        model.head.window = window
    fit_window(model, tr, va)
    if skip and init is None:
        init_skip(model, [tr])
    if adapter_only:
        # the adapter on a frozen backbone: a faster rate, frequent validation
        lr = lr or preset_budget(preset)["lr"] * 2
        max_steps = max_steps or min(preset_budget(preset)["max_steps"], 1200)
    elif init is not None:
        # fine-tuning a backbone: a gentler rate, short schedule and frequent validation (small sets overfit fast)
        lr = lr or preset_budget(preset)["lr"] / 5
        max_steps = max_steps or min(preset_budget(preset)["max_steps"], 600)
    tcfg = train_config(preset, max_steps=max_steps, batch_size=batch_size, lr=lr, device=device, progress=progress,
                        seed=seed, patience=patience, eval_batches=eval_batches,
                        **({"eval_every": 50, "save_every": 50} if init is not None else {}))
    data_info = {"name": series.name, "columns": series.columns, "target": series.target, "features": features,
                 "lookback": lookback, "split": prep.splits.kind, "scaler": prep.scaler.to_dict(),
                 "step": str(series.step) if series.step is not None else None}
    import time as _time

    t0 = _time.perf_counter()
    summary = fit(model, [tr], [va], out, tcfg, extra_config={"data": data_info},
                  domain_extra={"stage": "adapter" if adapter_only else ("finetune" if init else "train"), **init_info},
                  adapter_only=adapter_only, resume=resume, keep_start=init is not None or bool(skip),
                  val_horizons=val_horizons)
    summary["seconds"] = round(_time.perf_counter() - t0, 1)
    return summary


def evaluate_model(model: SegmentForecaster, prep: Prepared, lookback: int, horizons: list[int],
                   max_windows: int | None = None, channels: list[int] | None = None, device: str = "cpu",
                   split: str = "test", prompt_segments: int = 0) -> dict:
    """The benchmark's figures of the model on the test (or val) split; with ``prompt_segments`` the same
    windows, each with that many segments before its lookback as an in-context prompt."""
    from .evaluate import evaluate

    values, cal = split_values(model, prep, split, max(horizons), prompt_segments * model.head.segment)
    fn = model_forecaster(model, cal, lookback, max(horizons), device=device, prompt_segments=prompt_segments)
    return evaluate(fn, values, lookback + prompt_segments * model.head.segment, horizons, channels=channels,
                    max_windows=max_windows)


def split_values(model: SegmentForecaster, prep: Prepared, split: str, horizon: int, before: int = 0):
    """A split's standardised values starting ``before`` rows early (in-context prompts read them) and its
    calendar continued past its end."""
    part, (lo, hi) = getattr(prep, split), getattr(prep.splits, split)
    if not before:
        return part.values, extended_calendar(part.cal, prep.series, hi, horizon + model.head.segment)
    if lo - before < 0:
        raise SciarError(f"the {split} split starts {lo} rows into the series: no room for a prompt of {before} steps")
    s = prep.series
    values = prep.scaler.transform(s.values[lo - before : hi]).astype(np.float32)
    cal = calendar(s.timestamps, s.length, s.step)[lo - before : hi]
    return values, extended_calendar(cal, s, hi, horizon + model.head.segment)


def split_forecaster(model: SegmentForecaster, prep: Prepared, lookback: int, horizon: int, device: str = "cpu",
                     split: str = "test"):
    """The model as a forecaster over the test (or val) part of ``prep`` (calendar continued past its end)."""
    _, cal = split_values(model, prep, split, horizon)
    return model_forecaster(model, cal, lookback, horizon, device=device)


def evaluate_checkpoint(checkpoint, series: Series, lookback: int | None, horizons: list[int], split: str = "auto",
                        max_windows: int | None = None) -> dict:
    """Test-split metrics of a checkpoint; ``lookback`` None is the one it was trained at."""
    from .forecast import resolve_lookback

    model, ck = load_forecaster(checkpoint)
    lookback = resolve_lookback(model, lookback)
    prep = prepare(series, lookback, split)
    res = evaluate_model(model, prep, lookback, horizons, max_windows)
    res["checkpoint"] = str(ck.path)
    res["lookback"] = lookback
    return res
