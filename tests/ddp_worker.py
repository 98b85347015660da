"""Trains the reversal task for a few steps; run plainly or under torchrun (tests/test_core_train.py)."""

import sys

import torch

from core_tasks import TOK, ReverseTask
from sciar.model import LanguageModel, ModelConfig
from sciar.train import TrainConfig, train

if __name__ == "__main__":
    out, accum = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=TOK.vocab_size, block_size=20, n_layer=2, n_head=4, n_embd=64)
    model = LanguageModel(cfg)
    tc = TrainConfig(max_steps=8, batch_size=8, grad_accum=accum, lr=3e-3, warmup_steps=2, eval_batches=0,
                     save_every=8, progress=False)
    train(model, ReverseTask(), tc, out, {"model": cfg.to_dict()}, TOK, {"domain": "test"})
