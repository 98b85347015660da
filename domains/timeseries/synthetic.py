"""Synthetic series for pretraining: random sums of simple processes at common sampling steps.

A small KernelSynth (as Chronos adds to its corpus). The real corpus is nearly all hourly and
mean-reverting (load, traffic, weather), so a backbone trained on it alone extrapolates trends on
daily and weekly data where a random walk is the better guess (exchange rates) and has seen few
annual cycles at a weekly step (influenza counts). Each series sums a random subset of: a random walk
with slowly varying volatility, a linear trend, harmonics of the step's natural periods (day and week
for hourly, week and year for daily, year for weekly and monthly), AR(1) noise and white noise; some
are exponentiated to look like positive, multiplicative data. Deterministic given the seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from .data import Series

# step code -> (pandas frequency, natural periods in steps)
STEPS = {"h": ("1h", (24, 168)), "D": ("1D", (7, 365.25)), "W": ("7D", (52.18,)), "M": ("MS", (12,))}
# how often each component is drawn
P_COMPONENT = {"rw": 0.5, "trend": 0.35, "season": 0.6, "ar": 0.4, "noise": 0.6}


def synthetic_series(points: int, seed: int = 1) -> list[Series]:
    """Univariate synthetic series of 1,600 to 6,000 steps (monthly ones to 2,200) totalling at least ``points``."""
    rng = np.random.default_rng(seed)
    out: list[Series] = []
    total = 0
    while total < points:
        code = rng.choice(list(STEPS))
        freq, periods = STEPS[code]
        n = int(rng.integers(1600, 2200 if code == "M" else 6000))
        y = _draw(rng, n, periods)
        start = pd.Timestamp("1900-01-01" if code == "M" else "1990-01-01") + pd.Timedelta(days=int(rng.integers(0, 9000)))
        ts = pd.date_range(start, periods=n, freq=freq)
        out.append(Series(f"synthetic_{code}_{len(out):04d}", np.round(y, 5).astype(np.float32)[:, None], ["y"], ts))
        total += n
    # sorted by name, values to 5 decimals: exactly what the shipped backbone was pretrained on (it was tried first
    # from CSV files written this way); changing either changes what `pretrain` rebuilds
    return sorted(out, key=lambda s: s.name)


def _draw(rng: np.random.Generator, n: int, periods) -> np.ndarray:
    t = np.arange(n, dtype=float)
    comps = [c for c, p in P_COMPONENT.items() if rng.random() < p] or ["rw"]
    y = np.zeros(n)
    if "rw" in comps:
        vol = rng.lognormal(0, 0.5) * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
        y += np.cumsum(rng.normal(0, 1, n) * vol)
    if "trend" in comps:
        y += rng.normal(0, 3) * t / np.sqrt(n)
    if "season" in comps:
        for p in periods:
            if rng.random() < 0.8:
                for k in range(1, int(rng.integers(1, 5)) + 1):
                    y += rng.normal(0, 3 / k) * np.sin(2 * np.pi * k * t / p + rng.uniform(0, 2 * np.pi))
    if "ar" in comps:
        phi = rng.uniform(0.5, 0.99)
        e = rng.normal(0, 1, n)
        e[0] = 0.0
        y += lfilter([1.0], [1.0, -phi], e) * rng.uniform(0.3, 2)
    if "noise" in comps:
        y += rng.normal(0, rng.uniform(0.1, 2), n)
    if rng.random() < 0.3:
        y = np.exp((y - y.mean()) / (y.std() + 1e-9) * rng.uniform(0.1, 0.5))
    return y
