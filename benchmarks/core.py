"""Core benchmark: KV-cache decoding, training throughput against a minimal GPT, sampling speed, and
how well a diffusion head fits a known 2-D distribution (``diffusion_head_fit``).

    python benchmarks/core.py --quick --json core.json      # ~3 minutes on 2 CPU cores
    python benchmarks/core.py --json core.json              # on a GPU: adds MFU at the CrystaLLM-small size
                                                             # and CUDA-graph decoding against an eager loop

Every figure is measured in this run, ours and the reference side by side, and printed with its ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sciar.data import TokenWindows  # noqa: E402
from sciar.ema import EMA  # noqa: E402
from sciar.heads import DiffusionHead  # noqa: E402
from sciar.decode.masked import generate as masked_generate  # noqa: E402
from sciar.decode.tokens import Decoder, generate  # noqa: E402
from sciar.masked import MaskedConfig, MaskedModel  # noqa: E402
from sciar.model import ContextKV, LanguageModel, ModelConfig  # noqa: E402
from sciar.train import TrainConfig, train  # noqa: E402


# --- the reference: a plain, minimal GPT (nanoGPT's shape) and its training step -----------------
class RefBlock(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.qkv, self.o = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.fc, self.proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.o(y)
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class RefGPT(nn.Module):
    def __init__(self, V, T, L, H, D):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, D), nn.Embedding(T, D)
        self.blocks = nn.ModuleList(RefBlock(D, H) for _ in range(L))
        self.ln = nn.LayerNorm(D, bias=False)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = F.linear(self.ln(x), self.wte.weight)
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))


def ref_train_tokens_per_s(cfg: ModelConfig, batch: int, steps: int, device) -> float:
    torch.manual_seed(0)
    m = RefGPT(cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd).to(device)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=device.type == "cuda")
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    data = torch.randint(cfg.vocab_size, (steps + 1, batch, cfg.block_size + 1))

    def step(i):
        x, y = data[i, :, :-1].to(device), data[i, :, 1:].to(device)
        with amp:
            loss = m(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    step(steps)  # warm-up
    times = [time.perf_counter()]
    for i in range(steps):
        step(i)
        sync(device)
        times.append(time.perf_counter())
    return batch * cfg.block_size / median_step(times)


def ours_train_tokens_per_s(cfg: ModelConfig, batch: int, steps: int, device) -> float:
    """sciar.train.train itself: batch source, schedule, clipping, logging, all of it."""
    torch.manual_seed(0)
    ids = torch.randint(cfg.vocab_size, (200_000,))
    src = TokenWindows(ids, cfg.block_size)
    with tempfile.TemporaryDirectory() as out:
        model = LanguageModel(cfg)
        tc = TrainConfig(max_steps=steps + 1, batch_size=batch, warmup_steps=1, eval_batches=0,
                         save_every=10**9, progress=False, device=str(device))
        times = []
        train(model, src, tc, out, {"model": cfg.to_dict()}, None, {"domain": "bench"},
              callback=lambda step, rec: (sync(device), times.append(time.perf_counter())))
    return batch * cfg.block_size / median_step(times)


def median_step(times: list[float]) -> float:
    """Median step time from step-end timestamps: robust to other work on a shared machine."""
    d = sorted(b - a for a, b in zip(times, times[1:]))
    return d[len(d) // 2]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# --- decoding ------------------------------------------------------------------------------------
def decode_tokens_per_s(model, batch, new_tokens, use_cache, prompt_len=16, repeats=1):
    prompts = [[1] * prompt_len] * batch
    device = next(model.parameters()).device
    best = 0.0
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        gens = generate(model, prompts, max_new_tokens=new_tokens, seed=0, use_cache=use_cache)
        sync(device)
        n = sum(len(g.tokens) for g in gens)
        best = max(best, n / (time.perf_counter() - t))
    return best


def gpu_decode(model, batch, steps) -> tuple[float, float]:
    """Decode steps/s x batch: CUDA-graph static cache vs a plain eager loop with the cache."""
    ids = torch.ones(batch, 16, dtype=torch.long, device="cuda")
    out = {}
    for graphs in (False, True):
        dec = Decoder(model, batch, 16 + steps + 8, graphs=graphs)
        logits = dec.prefill(ids)
        nxt = logits.argmax(-1)
        for _ in range(5):  # warm-up (graph capture)
            nxt = dec.step(nxt).argmax(-1)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps - 8):
            nxt = dec.step(nxt).argmax(-1)
        torch.cuda.synchronize()
        out[graphs] = (steps - 8) * batch / (time.perf_counter() - t)
    return out[True], out[False]


def mfu(cfg: ModelConfig, batch: int, steps: int) -> dict:
    """Model FLOPs utilisation of a compiled bf16 training step (6N + attention FLOPs per token)."""
    torch.manual_seed(0)
    model = LanguageModel(cfg).cuda()
    step_model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(cfg.vocab_size, (batch, cfg.block_size), device="cuda")
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(x, targets=x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    n = sum(p.numel() for p in model.parameters())
    flops_per_token = 6 * n + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    achieved = flops_per_token * batch * cfg.block_size / dt
    peak = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
    name = torch.cuda.get_device_name(0)
    p = next((v for k, v in peak.items() if k in name), 989e12)
    return {"gpu": name, "train_tokens_per_s": batch * cfg.block_size / dt, "mfu": achieved / p, "peak_flops": p}


# --- diffusion head: a mixture of 8 Gaussians on a ring -------------------------------------------
RING_CENTRES = torch.tensor([[2 * math.cos(2 * math.pi * k / 8), 2 * math.sin(2 * math.pi * k / 8)] for k in range(8)])
RING_SIGMA = 0.1


def ring_samples(n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` points from the mixture: a uniformly chosen centre on the circle of radius 2, plus N(0, 0.1^2 I)."""
    return RING_CENTRES[torch.randint(0, 8, (n,), generator=g)] + RING_SIGMA * torch.randn(n, 2, generator=g)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_proj: int = 512, seed: int = 0) -> float:
    """Order-2 sliced Wasserstein distance between two equal-sized point sets over ``n_proj`` random directions."""
    dirs = torch.randn(n_proj, a.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    pa, pb = (a.double() @ dirs.T).sort(0).values, (b.double() @ dirs.T).sort(0).values
    return ((pa - pb) ** 2).mean().sqrt().item()


def diffusion_head_fit(budget_cpu_s: float = 180.0, steps: int = 1500, batch: int = 256, width: int = 128,
                       depth: int = 3, lr: float = 2e-3, ema: float = 0.99, sample_steps: int = 50,
                       learn_sigma: bool = False,
                       n: int = 10_000, seed: int = 0) -> dict:
    """Train an unconditional :class:`DiffusionHead` on the ring (the condition is a zero vector, so its
    projection's bias is a learned constant), then compare 10,000 samples at temperature 1 with held-out
    data by sliced Wasserstein distance, against the distance between two sets of true samples.

    Training stops after ``steps`` optimizer steps or ``budget_cpu_s`` seconds of this process's CPU
    time, whichever comes first (CPU time, not wall time: the figure holds on a busy machine; on two
    free cores it is at most that much wall time)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    head = DiffusionHead(token_dim=2, cond_dim=1, width=width, depth=depth, sample_steps=sample_steps,
                         learn_sigma=learn_sigma)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    avg = EMA(head, ema) if ema else None
    cond = torch.zeros(batch, 1)
    t0, done = time.process_time(), 0
    while done < steps and time.process_time() - t0 < budget_cpu_s:
        for grp in opt.param_groups:  # short warmup, then cosine decay to zero at `steps`
            grp["lr"] = lr * min(1.0, (done + 1) / 100) * 0.5 * (1 + math.cos(math.pi * done / steps))
        loss = head.loss(cond, ring_samples(batch, g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if avg is not None:
            avg.update(head)
        done += 1
    train_cpu_s = time.process_time() - t0
    model = avg.model if avg is not None else head.eval()
    held, true_a, true_b = ring_samples(n, g), ring_samples(n, g), ring_samples(n, g)
    x = model.sample(torch.zeros(n, 1), temperature=1.0, generator=torch.Generator().manual_seed(seed + 1))
    d_head, d_ref = sliced_wasserstein(x, held), sliced_wasserstein(true_a, true_b)
    nearest = torch.cdist(x, RING_CENTRES).argmin(1)
    shares = torch.bincount(nearest, minlength=8).double() / n
    # the spread about the nearest centre, against the true sigma (the distances hide a too narrow or wide mode)
    spread = (x - RING_CENTRES[nearest]).pow(2).sum(1).mean().div(2).sqrt().item() / RING_SIGMA
    return {"head": d_head, "reference": d_ref, "ratio": d_head / d_ref, "mode_shares": shares.tolist(),
            "mode_std_ratio": spread, "steps": done, "train_cpu_s": train_cpu_s, "final_loss": loss.item(),
            "config": {"width": width, "depth": depth, "lr": lr, "batch": batch, "train_mul": head.train_mul,
                       "ema": ema, "sample_steps": sample_steps, "learn_sigma": learn_sigma, "threads": torch.get_num_threads()}}


# --- masked decoding (MAR) ------------------------------------------------------------------------
class _PerUseKV(ContextKV):
    """The reference: each layer's condition keys and values recomputed whenever a step reads them."""

    def __init__(self, trunk, context: torch.Tensor):
        self.trunk, self.context = trunk, context

    @property
    def batch(self) -> int:
        return self.context.shape[0]

    @property
    def kv(self):
        return self

    def __getitem__(self, layer: int):
        return self.trunk.blocks[layer].cross.context_kv(self.context)


class _RecomputingMasked(MaskedModel):
    def conditions(self, batch, labels=None, prefix=None, context=None, drop=None):
        c = super().conditions(batch, labels, prefix, context, drop)
        raw = self.trunk.null_context.expand(batch, 1, -1) if context is None else context
        drop = drop.get("context") if isinstance(drop, dict) else drop  # per condition, or every condition
        if drop is not None:
            raw = torch.where(drop[:, None, None], self.trunk.null_context, raw)
        c.context = _PerUseKV(self.trunk, raw)
        return c


def masked_decode(device, batch: int = 16, cond_tokens: int = 256) -> dict:
    """MAR decoding at the issue's size: 64 tokens of 16 numbers, width 256, 4 layers, head 3x256 with 32
    diffusion steps, K=16, guidance 3.0, batch 16 (``--quick``: 4); conditioned by cross-attention to
    ``cond_tokens`` tokens of width 256 (a point cloud's encoding). Against the same loop recomputing the
    condition's keys and values at every step."""
    cfg = ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=256, pos="learned", attention="bidirectional",
                      cross_dim=256)
    mcfg = MaskedConfig(seq_len=64, token_dim=16, head_width=256, head_depth=3, head_sample_steps=32)
    torch.manual_seed(0)
    ours = MaskedModel(cfg, mcfg).to(device).eval()
    ref = _RecomputingMasked(cfg, mcfg).to(device).eval()
    ref.load_state_dict(ours.state_dict())
    ctx = torch.randn(batch, cond_tokens, 256, device=device)
    out = {}
    for name, model in (("ours", ours), ("recompute", ref)):
        sync(device)
        t = time.perf_counter()
        tokens = masked_generate(model, context=ctx, steps=16, cfg=3.0, seed=0)
        sync(device)
        out[name] = tokens.shape[0] * tokens.shape[1] / (time.perf_counter() - t)
        out[f"{name}_tokens"] = tokens
    same = torch.equal(out.pop("ours_tokens"), out.pop("recompute_tokens"))
    return {"masked_decode_batch": batch, "masked_decode_tokens_per_s": out["ours"], "masked_decode_recompute_kv_tokens_per_s": out["recompute"],
            "masked_decode_kv_once_speedup": out["ours"] / out["recompute"], "masked_decode_same_tokens": same}


def roll_flops(model, k: int, steps: int, cached: bool) -> float:
    """Multiply-adds x 2 of a rolled forecast of one window: ``k`` lookback segments, ``steps`` segments ahead,
    no prompt. Per position the trunk costs 24 C^2 per layer (qkv, output, MLP) plus 4 C per key attended; the
    segment embedding and the projection 2 x (S H + H C) each. The loop at 82c2686 re-embeds and re-runs the
    whole window for every segment; the cached loop reads the lookback once, then one position per segment
    (and the whole window again after every slide)."""
    C, L = model.cfg.n_embd, model.cfg.n_layer
    S, Hd = model.head.segment, model.head.hidden
    mlp = 2 * (S * Hd + Hd * C)  # embedding or projection of one segment
    W = max(k, model.head.window - 1)

    def run(n_new: int, n_total: int) -> float:  # n_new positions read after n_total - n_new cached ones
        keys = sum(n_total - n_new + j + 1 for j in range(n_new))
        return n_new * (mlp + L * 24 * C * C) + L * 4 * C * keys

    if not cached:
        return sum(run(min(k + i, W), min(k + i, W)) + mlp for i in range(steps))
    total, n = run(k, k), k
    for i in range(steps):
        total += mlp  # the projection of the last hidden state
        if i < steps - 1:  # the new segment is read back: one position, or the whole window after a slide
            total += run(1, n + 1) if n + 1 <= W else run(W, W)
            n = min(n + 1, W)
    return total


def continuous_cache_speedup(rounds: int = 5, threads: int = 1) -> dict:
    """The shipped time-series backbone's rolled 720-step forecast of 64 ETTh1 test windows (lookback 672, every
    channel in turn, with their calendar marks): the cached loop (``SegmentForecaster.forecast`` on
    ``sciar.decode.continuous``) against the loop as it stood at 82c2686 (``timeseries_recipes.uncached_roll``),
    interleaved rounds in one process, the best of each. On the CPU at ``threads`` threads: on a shared machine
    two threads each wait for the other (measured at a load average of 12: 14.5 s against 0.2 s at one thread)."""
    from domains.timeseries.data import read_series
    from domains.timeseries.pipeline import load_forecaster, prepare, split_values, window_marks
    from timeseries_recipes import uncached_roll

    import numpy as np

    model, _ = load_forecaster("timeseries-pretrained")
    S, L, H, B = model.head.segment, 672, 720, 64
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "timeseries" / "ETTh1.csv"
    prep = prepare(read_series(shared), L)
    values, cal = split_values(model, prep, "test", H)
    starts = np.linspace(0, len(values) - L - H, B).round().astype(int)
    ctx = torch.from_numpy(np.stack([values[s : s + L, i % values.shape[1]] for i, s in enumerate(starts)]))
    marks = torch.from_numpy(window_marks(cal, starts, L // S + H // S, S))
    ours_t, ref_t = [], []
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    with torch.no_grad():
        for _ in range(rounds):
            t0 = time.perf_counter()
            ours = model.forecast(ctx, marks, H)
            ours_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ref = uncached_roll(model, ctx, marks, H)
            ref_t.append(time.perf_counter() - t0)
    torch.set_num_threads(before)
    k, steps = L // S, -(-H // S)
    flop_ratio = roll_flops(model, k, steps, False) / roll_flops(model, k, steps, True)
    o, r = min(ours_t), min(ref_t)
    return {"speedup": r / o, "ours_s": o, "reference_s": r, "flop_ratio": flop_ratio,
            "max_abs_diff": float((ours - ref).abs().max()), "windows": B, "horizon": H, "lookback": L,
            "threads": threads, "rounds": len(ours_t),
            "note": "ours and the reference in one process, interleaved, best of each: a ratio, not absolute times"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, CPU-friendly (under 3 minutes on 2 cores)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
                 "torch": torch.__version__, "quick": args.quick}

    # KV cache: 512 new tokens, batch 8, cached vs full re-forward
    dcfg = ModelConfig(vocab_size=64, block_size=1024, n_layer=4, n_head=4, n_embd=128)
    torch.manual_seed(0)
    dm = LanguageModel(dcfg).to(device).eval()
    cached = decode_tokens_per_s(dm, 8, 512, True)
    full = decode_tokens_per_s(dm, 8, 512, False)
    res.update(kv_cache_tokens_per_s=cached, no_cache_tokens_per_s=full, kv_cache_speedup=cached / full,
               decode_model=dcfg.to_dict())
    print(f"decode 512 tokens x batch 8: KV cache {cached:,.0f} tok/s, full re-forward {full:,.0f} tok/s, "
          f"speedup {cached / full:.1f}x")

    # training throughput: ours (the real loop) vs a minimal GPT step, same sizes, same run
    tcfg = (ModelConfig(vocab_size=371, block_size=256, n_layer=4, n_head=4, n_embd=256, pos="learned") if args.quick or
            device.type == "cpu" else ModelConfig(vocab_size=371, block_size=1024, n_layer=8, n_head=8, n_embd=512, pos="learned"))
    batch, steps = (8, 20) if device.type == "cpu" else (32, 30)
    # interleaved rounds, best of each, so that a busy spell on the machine hits both alike
    rounds = [(ref_train_tokens_per_s(tcfg, batch, steps, device), ours_train_tokens_per_s(tcfg, batch, steps, device))
              for _ in range(3)]
    ref, ours = max(r[0] for r in rounds), max(r[1] for r in rounds)
    rope = ours_train_tokens_per_s(ModelConfig(**{**tcfg.to_dict(), "pos": "rope"}), batch, steps, device)
    res.update(train_tokens_per_s=ours, reference_train_tokens_per_s=ref, train_ratio=ours / ref,
               train_tokens_per_s_rope=rope, train_model=tcfg.to_dict(), train_batch=batch)
    print(f"train: ours {ours:,.0f} tok/s, minimal GPT {ref:,.0f} tok/s, ratio {ours / ref:.3f} "
          f"(same architecture, learned positions); ours with rotary positions {rope:,.0f} tok/s")

    # sampling throughput with the shipped-size model shape
    torch.manual_seed(0)
    sm = LanguageModel(ModelConfig(vocab_size=371, block_size=1024, n_layer=4, n_head=4, n_embd=256)).to(device).eval()
    res["sample_tokens_per_s"] = decode_tokens_per_s(sm, 20, 256, True)
    print(f"sample (4x256 model, 20 sequences x 256 tokens): {res['sample_tokens_per_s']:,.0f} tok/s")

    res.update(masked_decode(device, batch=4 if args.quick else 16))
    print(f"masked decoding (64 x 16-d tokens, K=16, cfg 3, batch {res['masked_decode_batch']}): {res['masked_decode_tokens_per_s']:,.1f} tok/s; "
          f"{res['masked_decode_kv_once_speedup']:.2f}x a loop recomputing the condition K/V per step")
    res["continuous_cache_speedup"] = c = continuous_cache_speedup()
    print(f"time series, 64 windows rolled 720 steps: cached loop {c['ours_s']:.3f} s, loop at 82c2686 "
          f"{c['reference_s']:.3f} s, speedup {c['speedup']:.2f}x (FLOP ratio {c['flop_ratio']:.2f})")

    if device.type == "cuda" and not args.quick:
        big = ModelConfig(vocab_size=371, block_size=1024, n_layer=8, n_head=8, n_embd=512)
        res["mfu_crystallm_small"] = mfu(big, 64, 20)
        print(f"MFU at CrystaLLM-small, batch 64, bf16, compiled: {res['mfu_crystallm_small']['mfu']:.1%}")
        gm = LanguageModel(big).cuda().eval()
        for b in (1, 64):
            g, e = gpu_decode(gm, b, 256)
            res[f"gpu_decode_tokens_per_s_b{b}"] = g
            res[f"gpu_decode_eager_tokens_per_s_b{b}"] = e
            res[f"gpu_decode_speedup_b{b}"] = g / e
            print(f"GPU decode batch {b}: CUDA graphs {g:,.0f} tok/s, eager {e:,.0f} tok/s, {g / e:.1f}x")
    fit = res["diffusion_head_fit"] = diffusion_head_fit()
    print(f"diffusion head on the 8-Gaussian ring: sliced W2 {fit['head']:.4f} vs {fit['reference']:.4f} between true "
          f"sets (ratio {fit['ratio']:.2f}), mode shares {min(fit['mode_shares']):.3f}..{max(fit['mode_shares']):.3f}, "
          f"{fit['steps']} steps in {fit['train_cpu_s']:.0f} CPU-s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
