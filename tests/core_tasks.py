"""Small learnable tasks shared by the core tests (token and continuous)."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sciar.model import ModelConfig, Transformer
from sciar.tokenizer import CharTokenizer

TOK = CharTokenizer("abcdef|\n", special_tokens=["<pad>"])
PAD = TOK.token_id("<pad>")


def reverse_example(s: str) -> str:
    return s + "|" + s[::-1] + "\n"


class ReverseTask:
    """Random strings and their reversals; only the deterministic half is a target."""

    has_val = True

    def __init__(self, block_size=16, min_len=3, max_len=6):
        self.block_size, self.min_len, self.max_len = block_size, min_len, max_len

    def get_batch(self, split, batch_size, generator):
        x = torch.full((batch_size, self.block_size), PAD)
        y = torch.full((batch_size, self.block_size), -1)
        for b in range(batch_size):
            n = int(torch.randint(self.min_len, self.max_len + 1, (1,), generator=generator))
            s = "".join("abcdef"[int(i)] for i in torch.randint(6, (n,), generator=generator))
            ids = torch.tensor(TOK.encode(reverse_example(s)))
            x[b, : len(ids) - 1] = ids[:-1]
            y[b, n : len(ids) - 1] = ids[n + 1 :]  # targets after the '|'
        return {"idx": x, "targets": y}


def sinusoid_batch(batch, n_seg, seg, generator, noise=0.05):
    """Noisy sinusoids with random frequency and phase, cut into segments: [B, n_seg, seg]."""
    t = torch.arange(n_seg * seg, dtype=torch.float32)
    f = 0.02 + 0.08 * torch.rand(batch, 1, generator=generator)
    ph = 2 * math.pi * torch.rand(batch, 1, generator=generator)
    x = torch.sin(2 * math.pi * f * t + ph) + noise * torch.randn(batch, n_seg * seg, generator=generator)
    return x.view(batch, n_seg, seg)


class SegmentForecaster(nn.Module):
    """Continuous mode: segments in through Linear, next segment out through Linear."""

    def __init__(self, seg=16, n_seg=8, width=64):
        super().__init__()
        self.cfg = ModelConfig(vocab_size=0, block_size=n_seg, n_layer=2, n_head=4, n_embd=width)
        self.trunk = Transformer(self.cfg)
        self.embed = nn.Linear(seg, width)
        self.out = nn.Linear(width, seg)

    def predict(self, x):
        return self.out(self.trunk(embeds=self.embed(x)))

    def forward(self, x):
        return F.mse_loss(self.predict(x[:, :-1]), x[:, 1:])


class SinusoidSource:
    has_val = False

    def __init__(self, seg=16, n_seg=8):
        self.seg, self.n_seg = seg, n_seg

    def get_batch(self, split, batch_size, generator):
        return {"x": sinusoid_batch(batch_size, self.n_seg, self.seg, generator)}


class MaskedFiller(nn.Module):
    """Bidirectional mode: masked continuous tokens are filled from the visible ones.

    Tokens are short windows of a sinusoid; a visibility mask lets every token attend
    only to the known tokens (and itself), as random-order masked generation does.
    """

    def __init__(self, dim=8, n_tok=16, width=64):
        super().__init__()
        self.cfg = ModelConfig(vocab_size=0, block_size=n_tok, n_layer=2, n_head=4, n_embd=width)
        self.trunk = Transformer(self.cfg)
        self.embed = nn.Linear(dim, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.out = nn.Linear(width, dim)

    def predict(self, x, known):
        e = torch.where(known[..., None], self.embed(x), self.mask_token.expand(*x.shape[:2], -1))
        T = x.shape[1]
        vis = known[:, None, :] | torch.eye(T, dtype=torch.bool)[None]
        return self.out(self.trunk(embeds=e, mask=vis))

    def forward(self, x, known):
        pred = self.predict(x, known)
        return F.mse_loss(pred[~known], x[~known])


class MaskedSource:
    has_val = False

    def __init__(self, dim=8, n_tok=16):
        self.dim, self.n_tok = dim, n_tok

    def get_batch(self, split, batch_size, generator):
        x = sinusoid_batch(batch_size, self.n_tok, self.dim, generator, noise=0.02)
        known = torch.rand(batch_size, self.n_tok, generator=generator) > 0.5
        known[:, 0] = True
        return {"x": x, "known": known}
