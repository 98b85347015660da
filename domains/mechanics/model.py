"""The mechanics language model: presets, task documents (prompt + answer) and their batches, training.

One :class:`sciar.model.LanguageModel` over the grammar's tokenizer answers every task (Stiffness,
Design, StressCurve, Thickness and users' own prompt/answer tables). A document is the canonical
prompt followed by its answer (``Stiffness<...>[E1=..., ...]``); the loss is taken on the answer
tokens only, since prompts are always given at inference and the Design prompts are the Stiffness
answers of the same designs (learning them would only repeat the forward task).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sciar.errors import DataError
from sciar.presets import choose, train_budget

DOMAIN = "mechanics"

PRESETS = {
    # trains on 2 busy CPU cores in minutes (about 0.6 M parameters)
    "tiny": {
        "model": dict(n_layer=3, n_head=4, n_embd=128, block_size=768, dropout=0.0),
        "train": dict(max_steps=600, batch_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=30, eval_every=100,
                      save_every=100),
    },
    # a GPU model (about 10 M parameters)
    "small": {
        "model": dict(n_layer=6, n_head=8, n_embd=384, block_size=768, dropout=0.1),
        "train": dict(max_steps=20000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup_steps=200, eval_every=500,
                      save_every=500),
    },
}


def preset(name: str) -> dict:
    """A copy of the preset ``name``; an unknown name is a one-line SciarError listing the known ones."""
    return choose(PRESETS, name)


def _hash_fraction(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16**8


def cpshub_held_out(run) -> bool:
    """A fifth of the CPShub lattices, fixed by the run's name, is held out (like the oracle designs' tenth)."""
    return _hash_fraction(f"cpshub:{run}") < 0.2


def task_pairs(path: str | Path) -> pd.DataFrame:
    """(prompt, answer, split) of a task table: an oracle dataset (its Stiffness and Design pairs), a CPShub
    task table (held-out lattices by :func:`cpshub_held_out`) or a user's prompt/answer table (all train)."""
    from domains.mechanics.datasets import read_task_table
    from sciar.tables import read_table

    df = read_table(path, text_columns=("prompt", "answer", "design_prompt", "design_answer"))
    if "design_prompt" in df.columns:  # oracle designs; rows the oracle refused carry no answer
        df = df[df["answer"].notna()] if "answer" in df.columns else df
        split = df["split"].to_numpy() if "split" in df.columns else np.full(len(df), "train")
        return pd.DataFrame({
            "prompt": [*df["prompt"], *df["design_prompt"]],
            "answer": [*df["answer"], *df["design_answer"]],
            "split": [*split, *split]})
    if "run" in df.columns and "task" in df.columns:
        return pd.DataFrame({"prompt": df["prompt"], "answer": df["answer"],
                             "split": ["test" if cpshub_held_out(r) else "train" for r in df["run"]]})
    users = read_task_table(path)
    return users.assign(split="train")


class AnswerBatches:
    """Batches of whole documents (prompt + answer), right-padded to the longest in the batch, with the
    loss on the answer tokens only (targets -1 elsewhere). ``split``: "train" or "val".

    A batch is drawn from one length bucket (documents within ``BUCKET`` tokens of each other), the bucket
    chosen with probability proportional to its size, so every document is as likely as with uniform
    batches while a 600-token Thickness prompt no longer pads a batch of 40-token Stiffness ones."""

    BUCKET = 32

    def __init__(self, docs: dict[str, list[tuple[list[int], int]]]):
        self.docs = {k: v for k, v in docs.items() if v}
        if "train" not in self.docs:
            raise DataError("no training documents")
        self.buckets = {}
        for split, ds in self.docs.items():
            by: dict[int, list[int]] = {}
            for i, (ids, _) in enumerate(ds):
                by.setdefault(len(ids) // self.BUCKET, []).append(i)
            members = list(by.values())
            self.buckets[split] = (members, torch.tensor([len(m) for m in members], dtype=torch.float))

    @property
    def has_val(self) -> bool:
        return "val" in self.docs

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        docs = self.docs[split]
        members, sizes = self.buckets[split]
        bucket = members[int(torch.multinomial(sizes, 1, generator=generator))]
        pick = [bucket[i] for i in torch.randint(len(bucket), (batch_size,), generator=generator).tolist()]
        T = max(len(docs[i][0]) for i in pick) - 1
        x = torch.zeros(batch_size, T, dtype=torch.long)
        y = torch.full((batch_size, T), -1, dtype=torch.long)
        for b, i in enumerate(pick):
            ids, answer_start = docs[i]
            ids = torch.tensor(ids)
            x[b, : len(ids) - 1] = ids[:-1]
            y[b, answer_start - 1: len(ids) - 1] = ids[answer_start:]
        return {"idx": x, "targets": y}


def encode_pair(tok, prompt: str, answer: str) -> tuple[list[int], int]:
    """A document's token ids and where its answer starts (prompts of the grammar's tasks in canonical form,
    users' own tasks as they are)."""
    from domains.mechanics.grammar import TASKS, canonical

    p = tok.encode(canonical(prompt) if prompt.split("<", 1)[0] in TASKS else prompt)
    return p + tok.encode(answer), len(p)


def make_source(paths, tok, block_size: int) -> tuple[AnswerBatches, dict, str]:
    """The batches of every table in ``paths``: (source, counts, data fingerprint)."""
    from sciar.errors import SciarError
    from sciar.io import fingerprint

    docs = {"train": [], "val": []}
    tasks: dict[str, int] = {}
    dropped = 0
    for path in paths:
        df = task_pairs(path)
        for prompt, answer, split in zip(df["prompt"], df["answer"], df["split"]):
            try:
                ids, start = encode_pair(tok, prompt, answer)
            except SciarError as e:
                raise DataError(f"{path}: {e}") from None
            if len(ids) > block_size:
                dropped += 1
                continue
            docs["val" if split == "test" else "train"].append((ids, start))
            task = prompt.split("<", 1)[0]
            tasks[task] = tasks.get(task, 0) + 1
    info = {"n_train_docs": len(docs["train"]), "n_val_docs": len(docs["val"]), "tasks": tasks,
            "n_dropped_too_long": dropped}
    fp = fingerprint([Path(p) for p in paths])
    return AnswerBatches(docs), info, fp


def train_mechanics_lm(paths, out: str | Path, preset_name: str = "tiny", steps: int | None = None,
                       batch_size: int | None = None, lr: float | None = None, device: str = "auto",
                       seed: int = 1337, progress: bool = True, resume: bool = True, callback=None) -> dict:
    """Train the mechanics model on task tables ``paths`` and write a checkpoint to ``out``."""
    from domains.mechanics.grammar import mechanics_tokenizer
    from sciar.model import LanguageModel, ModelConfig
    from sciar.runtime import count_parameters
    from sciar.train import TrainConfig, train

    p = preset(preset_name)
    tok = mechanics_tokenizer()
    cfg = ModelConfig(vocab_size=tok.vocab_size, **p["model"])
    src, info, fp = make_source(paths, tok, cfg.block_size)
    tc = TrainConfig(device=device, seed=seed, progress=progress, eval_batches=10,
                     **train_budget(p["train"], steps=steps, batch_size=batch_size, lr=lr))
    torch.manual_seed(seed)
    model = LanguageModel(cfg)
    domain = {"domain": DOMAIN, "data_fingerprint": fp, "data": [str(x) for x in paths], "preset": preset_name,
              "loss": "answer tokens", **info}
    summary = train(model, src, tc, out, {"model": cfg.to_dict(), "tied": True}, tok, domain, resume=resume,
                    callback=callback)
    summary.update(info)
    summary["params"] = count_parameters(model)
    return summary
