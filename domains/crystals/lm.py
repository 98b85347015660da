"""Training the CIF language model: presets, the token stream, windows starting at CIF boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from domains.crystals import DOMAIN
from sciar.errors import DataError, SciarError
from sciar.presets import choose, train_budget
from sciar.runtime import count_parameters

# model shape and a training budget for each preset; CLI options override the budget
# Primer (squared ReLU, causal convolution after Q, K and V) won the core's option benchmark on this corpus
# (benchmarks/seed_options.py: validation loss 0.674 against 0.735 at equal steps, 3 seeds, sciar/README.md):
# new crystal models train with it; shipped checkpoints keep the configuration they were trained with
PRIMER = dict(mlp="relu2", qkv_conv=True)

PRESETS = {
    # trains on 2 CPU cores in minutes
    "tiny": {
        "model": dict(n_layer=3, n_head=4, n_embd=128, block_size=1024, dropout=0.0, **PRIMER),
        "train": dict(max_steps=300, batch_size=8, lr=2e-3, min_lr=2e-4, warmup_steps=30, eval_every=100, save_every=100),
    },
    # the shipped model's shape: CPU-trainable (about 0.8 M parameters), an hour on one busy core
    "small": {
        "model": dict(n_layer=4, n_head=4, n_embd=128, block_size=1024, dropout=0.0, **PRIMER),
        "train": dict(max_steps=1200, batch_size=8, lr=2e-3, min_lr=2e-4, warmup_steps=50, eval_every=100, save_every=50),
    },
    # the shipped default model (about 4.8 M parameters): trained on a GPU (benchmarks/gpu_train.py),
    # small enough to sample 20 structures in seconds on 2 CPU cores
    "medium": {
        "model": dict(n_layer=6, n_head=8, n_embd=256, block_size=1024, dropout=0.1, **PRIMER),
        "train": dict(max_steps=20000, batch_size=32, lr=1.5e-3, min_lr=1.5e-4, warmup_steps=200, eval_every=500, save_every=500),
    },
    # CrystaLLM's small model: 8 layers, 8 heads, width 512, context 1024 (~25 M parameters)
    "crystallm-small": {
        "model": dict(n_layer=8, n_head=8, n_embd=512, block_size=1024, dropout=0.1, **PRIMER),
        "train": dict(max_steps=20000, batch_size=32, lr=1e-3, min_lr=1e-4, warmup_steps=100, eval_every=500, save_every=500),
    },
}


def preset(name: str) -> dict:
    """A copy of the preset ``name`` (``{"model": ..., "train": ...}``); an unknown name is a one-line SciarError."""
    return choose(PRESETS, name)


@dataclass
class Corpus:
    texts: list[str]  # canonical CIFs, each ending in a newline
    n_dropped_long: int
    fingerprint: str


def load_corpus(paths, dedup: bool = True, workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Canonical, usable rows from every input (cached), deduplicated by (formula, space group).

    ``df.attrs`` holds ``unusable`` (the rejected inputs and why, a table) and ``duplicates`` (how many
    usable rows the deduplication removed), so that callers can report what was left out.
    """
    from domains.crystals.canon_cache import load_canonical, split_usable

    df = load_canonical(paths, workers=workers, progress=progress)
    n_ok = int(df["reason"].isna().sum()) if "reason" in df.columns else len(df)
    df, bad = split_usable(df, dedup)
    if len(df) == 0:
        first = f" (first: {bad['source'].iloc[0]}: {bad['reason'].iloc[0]})" if len(bad) else ""
        raise DataError(f"no usable structures in the training data: {len(bad)} inputs unusable{first}")
    df = df.reset_index(drop=True)
    df.attrs = {"unusable": bad, "duplicates": n_ok - len(df)}
    return df


def token_stream(texts: list[str], tok) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Concatenate CIFs, each followed by a blank line; returns (ids, start offsets, lengths)."""
    ids, starts, lengths = [], [], []
    sep = tok.encode("\n")
    for t in texts:
        e = tok.encode(t) + sep
        starts.append(len(ids))
        lengths.append(len(e))
        ids.extend(e)
    return np.asarray(ids, dtype=np.int64), np.asarray(starts, dtype=np.int64), lengths


def make_source(df: pd.DataFrame, tok, block_size: int, val_fraction: float = 0.02, seed: int = 0,
                val_df: pd.DataFrame | None = None):
    """A TokenWindows source (train/val by CIF, windows start at ``data_``) and a summary."""
    from sciar.data import TokenWindows

    texts = df["canonical"].tolist()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    texts = [texts[i] for i in order]
    lengths = np.array([len(tok.encode(t)) + 1 for t in texts])
    keep = lengths <= block_size
    dropped = int((~keep).sum())
    texts = [t for t, k in zip(texts, keep) if k]
    if not texts:
        raise DataError(f"every CIF is longer than the context of {block_size} tokens")
    if val_df is not None:
        val_texts = [t for t in val_df["canonical"].tolist() if len(tok.encode(t)) + 1 <= block_size]
        train_texts = texts
    else:
        n_val = int(round(len(texts) * val_fraction)) if len(texts) >= 50 else 0
        val_texts, train_texts = texts[:n_val], texts[n_val:]
    tr_ids, tr_starts, _ = token_stream(train_texts, tok)
    va_ids, va_starts, _ = token_stream(val_texts, tok) if val_texts else (None, None, None)
    src = TokenWindows(tr_ids, block_size, va_ids, tr_starts, va_starts)
    info = {"n_train_cifs": len(train_texts), "n_val_cifs": len(val_texts), "n_dropped_too_long": dropped,
            "train_tokens": int(len(tr_ids)), "max_cif_tokens": int(lengths[keep].max())}
    return src, info


def _init_model(init, tok, block_size: int | None):
    """The model of crystal checkpoint ``init`` (training mode), its context extended to ``block_size`` if larger,
    and what the new checkpoint records of its start (name, data fingerprint, context)."""
    from sciar.checkpoint import load_language_model
    from sciar.errors import CheckpointError
    from sciar.model import with_context
    from sciar.paths import find_checkpoint

    model, base_tok, ck = load_language_model(find_checkpoint(init), DOMAIN)
    if base_tok.to_dict() != tok.to_dict():
        raise CheckpointError(f"{ck.path.name}: its tokenizer is not this version's CIF tokenizer; it cannot be fine-tuned")
    old = model.cfg.block_size
    if block_size is not None and block_size < old:
        raise SciarError(f"--block-size {block_size} is below {ck.path.name}'s context of {old}; a fine-tune keeps or extends it")
    if block_size is not None and block_size > old:
        model = with_context(model, block_size)
    start = {"checkpoint": ck.path.name, "data_fingerprint": ck.domain.get("data_fingerprint"), "block_size": old}
    return model.train(), start


def corpus_source(data, block_size: int, dedup: bool = True, val=None, seed: int = 1337,
                  workers: int | None = None, progress: bool = True, unusable_out: Path | None = None):
    """The training source for ``data`` (paths or a DataFrame): (TokenWindows, info, fingerprint, sources).

    The inputs that could not be used are written, with their reasons, to ``unusable_out`` if given.
    """
    from domains.crystals.tokenizer import cif_tokenizer
    from sciar.io import fingerprint

    tok = cif_tokenizer()
    paths = [data] if isinstance(data, (str, Path)) else data
    df = data if isinstance(data, pd.DataFrame) else load_corpus(paths, dedup=dedup, workers=workers, progress=progress)
    val_df = None
    if val is not None:
        val_df = load_corpus([val] if isinstance(val, (str, Path)) else val, dedup=False, workers=workers, progress=progress)
    src, info = make_source(df, tok, block_size, seed=seed, val_df=val_df)
    unusable = df.attrs.get("unusable")
    info["n_unusable"] = 0 if unusable is None else len(unusable)
    if unusable_out is not None and info["n_unusable"]:
        from sciar.io import write_table_atomic

        write_table_atomic(unusable, unusable_out)  # makes the folder
    info["n_duplicates"] = int(df.attrs.get("duplicates", 0))
    if isinstance(data, pd.DataFrame):
        fp = fingerprint([t.encode() for t in df["canonical"]])
        sources = ["<table>"]
    else:
        fp = fingerprint([*[str(Path(x)) if Path(x).is_dir() else Path(x) for x in paths], f"dedup={dedup}"])
        sources = [str(x) for x in paths]
    return src, info, fp, sources


def train_crystal_lm(data, out: str | Path, preset_name: str = "tiny", steps: int | None = None,
                     batch_size: int | None = None, lr: float | None = None, block_size: int | None = None,
                     device: str = "auto", seed: int = 1337, dedup: bool = True, val=None, progress: bool = True,
                     resume: bool = True, workers: int | None = None, callback=None, init=None) -> dict:
    """Train a CIF language model on canonicalised ``data`` (paths or a DataFrame) and write a checkpoint.

    ``init``: start from this crystal checkpoint's weights (fine-tuning; its shape replaces the preset's, whose
    training budget is kept); a ``block_size`` above its context extends the context by rescaling the rotary
    positions (NTK-aware, :func:`sciar.model.with_context`), e.g. for cells whose CIFs outgrow 1,024 tokens."""
    import torch

    from domains.crystals.tokenizer import cif_tokenizer
    from sciar.model import LanguageModel, ModelConfig
    from sciar.train import TrainConfig, train

    p = preset(preset_name)
    tok = cif_tokenizer()
    torch.manual_seed(seed)
    if init is not None:
        model, start = _init_model(init, tok, block_size)
    else:
        mcfg = dict(p["model"])
        if block_size:
            mcfg["block_size"] = block_size
        model, start = LanguageModel(ModelConfig(vocab_size=tok.vocab_size, **mcfg)), None
    cfg = model.cfg
    src, info, fp, sources = corpus_source(data, cfg.block_size, dedup=dedup, val=val, seed=seed, workers=workers,
                                           progress=progress, unusable_out=Path(out) / "unusable_inputs.csv")
    tcfg = train_budget(p["train"], steps=steps, batch_size=batch_size, lr=lr)
    tc = TrainConfig(device=device, seed=seed, progress=progress, eval_batches=10, **tcfg)
    domain = {"domain": DOMAIN, "data_fingerprint": fp, "data": sources, "preset": preset_name, **info}
    if start is not None:
        domain["init"] = start
    summary = train(model, src, tc, out, {"model": cfg.to_dict(), "tied": model.head.tied}, tok, domain,
                    resume=resume, callback=callback)
    summary.update(info)
    summary["params"] = count_parameters(model)
    return summary
