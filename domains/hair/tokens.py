"""Card order and CHARM's multi-field tokens: one token per control point, five piecewise-quantised fields.

A token is a row of six integers ``(flag, x, y, z, width, thickness)``. ``flag`` is ``POINT`` for a control
point, or ``START``, ``SEP`` (between two cards) or ``END``; those three carry ``PAD`` (-1) in the five fields.
A hairstyle of cards ``c1 .. cn`` reads ``START c1 SEP c2 ... SEP cn END``.

Fields are quantised in the head frame (:mod:`domains.hair.head`) with CHARM's piecewise-uniform bins, finer where
detail concentrates (the skull in x and z, the top of the head in y, thin cards): a value maps to the bin it falls
in, a bin back to its centre, so the discrete form round-trips exactly and the continuous one is off by at most
half a bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sciar.errors import DataError

POINT, START, SEP, END = 0, 1, 2, 3
PAD = -1
FIELDS = ("x", "y", "z", "width", "thickness")


@dataclass(frozen=True)
class PiecewiseBins:
    """Uniform bins within each piece ``[edges[i], edges[i+1])``; ``counts[i]`` bins there."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def n(self) -> int:
        return sum(self.counts)

    def _pieces(self):
        e = np.asarray(self.edges, dtype=np.float64)
        c = np.asarray(self.counts)
        return e, c, np.concatenate([[0], np.cumsum(c)]), (e[1:] - e[:-1]) / c

    def quantise(self, v: np.ndarray) -> np.ndarray:
        """Values (clipped to the range) -> bin indices."""
        e, c, first, width = self._pieces()
        v = np.clip(np.asarray(v, dtype=np.float64), e[0], e[-1])
        piece = np.clip(np.searchsorted(e, v, side="right") - 1, 0, len(c) - 1)
        k = np.minimum(np.floor((v - e[piece]) / width[piece]).astype(np.int64), c[piece] - 1)
        return first[piece] + k

    def centres(self) -> np.ndarray:
        e, c, _, width = self._pieces()
        return np.concatenate([e[i] + (np.arange(c[i]) + 0.5) * width[i] for i in range(len(c))])

    def dequantise(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise DataError(f"bin index out of range 0..{self.n - 1}")
        return self.centres()[idx]

    def half_widths(self) -> np.ndarray:
        e, c, _, width = self._pieces()
        return np.repeat(width / 2, c)


# CHARM's bins (../shared/REFERENCES.md), in head-frame units
BINS = {
    "x": PiecewiseBins((-0.501, -0.1, 0.1, 0.501), (96, 320, 96)),
    "y": PiecewiseBins((-0.501, 0.0, 0.3, 0.501), (96, 160, 256)),
    "z": PiecewiseBins((-0.501, -0.15, 0.1, 0.501), (96, 320, 96)),
    "width": PiecewiseBins((0.0, 0.03, 0.1), (64, 64)),
    "thickness": PiecewiseBins((0.0, 0.02, 0.1), (64, 64)),
}
FIELD_SIZES = tuple(BINS[f].n for f in FIELDS)  # what a multi-field head predicts per field


def orient_and_sort(cards: list[np.ndarray], head) -> list[np.ndarray]:
    """Each card root first (the end nearer the scalp), cards by centroid azimuth ``arctan2(x, z)`` (cut behind the head).

    Azimuth is taken about the head's vertical axis (the frame's origin), so 0 is the face and +-pi the back.
    """
    cards = [np.asarray(c, dtype=np.float64) for c in cards]
    if not cards:
        return []
    ends = np.stack([np.stack([c[0, :3], c[-1, :3]]) for c in cards])  # (n, 2, 3)
    d = head.near(ends.reshape(-1, 3)).reshape(-1, 2)
    cards = [c[::-1].copy() if d[i, 1] < d[i, 0] else c for i, c in enumerate(cards)]
    centroid = np.stack([c[:, :3].mean(0) for c in cards]) - head.origin
    az = np.arctan2(centroid[:, 0], centroid[:, 2])
    order = np.lexsort((centroid[:, 1], az))  # ties (rare) broken by height
    return [cards[i] for i in order]


def out_of_range(cards: list[np.ndarray], head) -> dict[str, int]:
    """Per field, how many control points fall outside the bins' range (they would be clipped)."""
    counts = dict.fromkeys(FIELDS, 0)
    for c in cards:
        u = head.to_frame(c)
        for j, f in enumerate(FIELDS):
            lo, hi = BINS[f].edges[0], BINS[f].edges[-1]
            counts[f] += int(((u[:, j] < lo) | (u[:, j] > hi)).sum())
    return counts


def encode(cards: list[np.ndarray], head, clip: bool = False) -> np.ndarray:
    """Cards (metres, already ordered) -> ``(T, 6)`` int64 tokens. Out-of-range fields are an error unless ``clip``."""
    if not cards:
        raise DataError("a hairstyle needs at least one card")
    if not clip:
        bad = {f: n for f, n in out_of_range(cards, head).items() if n}
        if bad:
            raise DataError("control points outside the token frame: " + ", ".join(f"{n} in {f}" for f, n in bad.items()))
    rows = [[START] + [PAD] * 5]
    for i, c in enumerate(cards):
        if i:
            rows.append([SEP] + [PAD] * 5)
        u = head.to_frame(c)
        q = np.stack([BINS[f].quantise(u[:, j]) for j, f in enumerate(FIELDS)], axis=1)
        rows.extend(np.concatenate([np.full((len(q), 1), POINT), q], axis=1).tolist())
    rows.append([END] + [PAD] * 5)
    return np.asarray(rows, dtype=np.int64)


def decode(tokens: np.ndarray, head) -> list[np.ndarray]:
    """Tokens -> cards in metres (bin centres). Malformed sequences are a :class:`DataError`."""
    t = np.asarray(tokens)
    if t.ndim != 2 or t.shape[1] != 6:
        raise DataError(f"tokens must be (T, 6), got {t.shape}")
    if len(t) < 2 or t[0, 0] != START or t[-1, 0] != END or (t[1:-1, 0] == START).any() or (t[1:-1, 0] == END).any():
        raise DataError("a token sequence reads START ... END with no START or END inside")
    cards, cur = [], []
    for row in t[1:]:
        if row[0] == POINT:
            cur.append(row[1:])
        elif row[0] in (SEP, END):
            if not cur:
                raise DataError("an empty card (two separators in a row, or none before END)")
            q = np.asarray(cur)
            u = np.stack([BINS[f].dequantise(q[:, j]) for j, f in enumerate(FIELDS)], axis=1)
            cards.append(head.from_frame(u))
            cur = []
        else:
            raise DataError(f"unknown token flag {row[0]}")
    return cards


def quantised(cards: list[np.ndarray], head) -> list[np.ndarray]:
    """The cards as the tokens can hold them (each field snapped to its bin centre)."""
    return decode(encode(cards, head, clip=True), head)
