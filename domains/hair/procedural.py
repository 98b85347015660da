"""The procedural anime-hairstyle generator: the one synthetic data source of the project (no hair-card data set is public).

Five styles on the shipped head, each a few components grown from scalp roots:

- ``bangs``: a cap of cards draped from the scalp (``length``) and bangs falling over the forehead;
- ``side_locks``: cap and bangs, plus two groups of long locks hanging in front of the ears;
- ``long``: bangs and long back hair draped over the back of the head and down;
- ``ponytail`` (one tie at the back) and ``twin_tails`` (two ties at the sides): cards gathered from the scalp to
  the tie, then hanging as the tail;
- ``spiky``: stiff, tapering spikes standing out of the scalp.

A card grows from its root in 32 steps: its direction bends toward gravity at the style's rate (or heads for the
tie), and each step is pushed 3 mm plus half its thickness out of the head (the head's signed distance on a 5 mm
grid), so cards drape over the head instead of entering it. Then cards of a clump are pulled toward the clump's
mean (``clumping``, growing toward the tips), curls added (a helix of amplitude ``curl``, phase shared by a clump,
growing from the root), the points pushed out again, and each card resampled to one control point per 5 cm (3 to
12: whole hairstyles fit the tiny model's context, see the README). Widths taper toward the tips; thickness is 15% of the width (at least 1.5 mm).

Parameters per hairstyle (:class:`StyleParams`): style, card count (25 to 130, as CHARM), length, curl,
curl wavelength, clumping, root width. Hairstyle ``i`` of seed ``s`` depends only on ``(s, i)``.

Held-out: the ``split`` column marks 10% of the random draws ``test`` (never trained on) and every ``long``
hairstyle longer than ``HELDOUT_LONG`` metres ``heldout_region`` (a length range the training set lacks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

STYLES = ("bangs", "side_locks", "long", "ponytail", "twin_tails", "spiky")
LENGTHS = {  # metres, the style's main length range
    "bangs": (0.10, 0.22), "side_locks": (0.12, 0.22), "long": (0.28, 0.60),
    "ponytail": (0.18, 0.45), "twin_tails": (0.18, 0.45), "spiky": (0.05, 0.11),
}
HELDOUT_LONG = 0.50  # long hairstyles above this length are the held-out region
TEST_SHARE = 0.1
CENTRE = np.array([0.0, 0.30, 0.045])  # a point inside the cranium: roots are found along rays from it
GRAVITY = np.array([0.0, -1.0, 0.0])
STEPS = 32
SPACING = 0.05  # metres between control points
CARD_POINTS = (3, 12)  # fewest and most control points of a card


@dataclass
class StyleParams:
    style: str
    n_cards: int
    length: float
    curl: float  # helix amplitude at the tips, metres
    curl_wavelength: float  # metres
    clumping: float  # 0 (free) .. 1 (tips meet at the clump's mean)
    width: float  # root width, metres


def draw_params(rng: np.random.Generator) -> StyleParams:
    style = STYLES[rng.integers(len(STYLES))]
    lo, hi = LENGTHS[style]
    return StyleParams(style=style, n_cards=int(rng.integers(25, 131)), length=float(rng.uniform(lo, hi)),
                       curl=float(rng.choice([0.0, rng.uniform(0.003, 0.015)])), curl_wavelength=float(rng.uniform(0.06, 0.15)),
                       clumping=float(rng.uniform(0.0, 0.6)), width=float(rng.uniform(0.012, 0.035)))


def split_of(p: StyleParams, rng: np.random.Generator) -> str:
    if p.style == "long" and p.length > HELDOUT_LONG:
        return "heldout_region"
    return "test" if rng.random() < TEST_SHARE else "train"


def _unit(v):
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)


def _direction(phi, theta):
    """Unit vectors at azimuth ``phi`` (0 = face, +z; arctan2(x, z)) and elevation ``theta``."""
    return np.stack([np.sin(phi) * np.cos(theta), np.sin(theta), np.cos(phi) * np.cos(theta)], -1)


def scalp_roots(sdf, phi, theta, margin):
    """Points ``margin`` outside the head along rays from :data:`CENTRE` (bisection on the signed distance)."""
    d = _direction(np.asarray(phi), np.asarray(theta))
    lo, hi = np.zeros(len(d)), np.full(len(d), 0.25)
    for _ in range(24):
        mid = (lo + hi) / 2
        out = sdf(CENTRE + mid[:, None] * d) > margin
        hi, lo = np.where(out, mid, hi), np.where(out, lo, mid)
    return CENTRE + hi[:, None] * d


def hairline(phi):
    """Lowest root elevation (radians) at azimuth ``phi``: 35 degrees at the forehead, 5 at the ears, -25 at the nape."""
    return np.radians(5 + 30 * np.cos(phi))


def _scalp_sample(rng, n, phi_lo, phi_hi, top=np.radians(80)):
    phi = rng.uniform(phi_lo, phi_hi, n)
    theta = hairline(phi) + rng.uniform(0, 1, n) ** 0.7 * (top - hairline(phi))
    return phi, theta


def grow(sdf, roots, d0, lengths, bend, margin, ties=None, tail_dir=None):
    """Card centre lines ``(C, STEPS + 1, 3)``: bend toward gravity, or head for ``ties`` first; kept outside the head."""
    C = len(roots)
    P = np.zeros((C, STEPS + 1, 3))
    P[:, 0] = roots
    d = _unit(d0)
    ds = lengths / STEPS
    tied = np.zeros(C, bool) if ties is not None else np.ones(C, bool)
    for k in range(STEPS):
        p = P[:, k]
        if ties is not None:
            reach = ~tied & (np.linalg.norm(ties - p, axis=1) < 1.5 * ds)
            tied |= reach
            d = np.where(reach[:, None], tail_dir, d)
            d = np.where(tied[:, None], d, _unit(ties - p))
        d = _unit(d + (bend * ds)[:, None] * GRAVITY * tied[:, None])
        q = sdf.push_outside(p + ds[:, None] * d, margin)
        d = np.where(np.linalg.norm(q - p, axis=1, keepdims=True) > 1e-9, _unit(q - p), d)
        P[:, k + 1] = q
    return P


def _perpendiculars(P):
    t = _unit(np.gradient(P, axis=1))
    ref = np.where(np.abs(t[..., 1:2]) < 0.9, np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0]))
    e1 = _unit(np.cross(t, ref))
    return e1, np.cross(t, e1)


def _resample(P, width, thick):
    """A fine centre line -> control points every :data:`SPACING` (:data:`CARD_POINTS`), with tapered sizes."""
    seg = np.linalg.norm(np.diff(P, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    n = int(np.clip(round(s[-1] / SPACING) + 1, *CARD_POINTS))
    t = np.linspace(0, s[-1], n)
    pts = np.stack([np.interp(t, s, P[:, j]) for j in range(3)], 1)
    f = t / max(s[-1], 1e-9)
    return np.concatenate([pts, np.interp(f, [0, 1], width)[:, None], np.interp(f, [0, 1], thick)[:, None]], 1)


def generate(p: StyleParams, rng: np.random.Generator, head) -> list[np.ndarray]:
    """One hairstyle of ``p.n_cards`` cards (metres, head frame)."""
    sdf = head.sdf_grid
    n = p.n_cards
    groups = []  # (count, kind)
    if p.style == "spiky":
        groups = [(n, "spikes")]
    else:
        n_bangs = max(4, int(round(n * 0.2)))
        n_locks = max(4, int(round(n * 0.15))) if p.style == "side_locks" else 0
        cap = "cap" if p.style in ("bangs", "side_locks") else p.style
        groups = [(n_bangs, "bangs"), (n_locks, "locks"), (n - n_bangs - n_locks, cap)]
    cards = []
    for count, kind in groups:
        if count <= 0:
            continue
        cards += _component(kind, count, p, rng, sdf)
    # the grid is approximate: a last push against the exact head keeps every control point outside
    return head.push_cards_outside(cards, 0.003)


def _component(kind, n, p: StyleParams, rng, sdf) -> list[np.ndarray]:
    w = p.width * rng.uniform(0.8, 1.2, n)
    thick = np.maximum(0.15 * w, 0.0015)
    margin = 0.003 + thick / 2
    ties = tail_dir = None
    taper = 0.6
    if kind == "bangs":
        phi, theta = rng.uniform(-0.9, 0.9, n), hairline(0) + rng.uniform(0.0, 0.35, n)
        lengths = rng.uniform(0.08, 0.13, n) * np.where(np.abs(phi) > 0.6, 1.3, 1.0)
        d0 = _direction(phi, theta - 0.9)
        bend = np.full(n, 12.0)
    elif kind == "locks":
        side = np.where(np.arange(n) % 2, 1.0, -1.0)
        phi, theta = side * rng.uniform(1.1, 1.5, n), rng.uniform(0.25, 0.6, n)
        lengths = p.length + rng.uniform(0.08, 0.2, n)
        d0 = _direction(phi, theta - 1.2)
        bend = np.full(n, 25.0)
    elif kind == "spikes":
        phi, theta = _scalp_sample(rng, n, -np.pi, np.pi)
        lengths = p.length * rng.uniform(0.7, 1.3, n)
        d0 = _direction(phi, theta) + np.array([0.0, 0.3, 0.0]) - 0.4 * (np.abs(phi) < 1.0)[:, None] * GRAVITY * -1
        bend = np.full(n, 3.0)
        taper = 0.9
    else:  # the cap (short), long, ponytail, twin_tails
        phi, theta = _scalp_sample(rng, n, -np.pi, np.pi)
        front = np.abs(phi) < 0.9  # the bangs own the forehead: move those roots up and back
        theta = np.where(front, np.maximum(theta, np.radians(55)), theta)
        lengths = p.length * rng.uniform(0.85, 1.15, n)
        d0 = _direction(phi, theta - 0.6)
        bend = np.full(n, 30.0)
        if kind in ("ponytail", "twin_tails"):
            if kind == "ponytail":
                tie_pts = scalp_roots(sdf, [np.pi], [np.radians(25)], 0.025)
                ties = np.repeat(tie_pts, n, 0)
            else:
                tie_pts = scalp_roots(sdf, [-1.75, 1.75], [np.radians(40)] * 2, 0.025)
                ties = tie_pts[(np.sin(phi) > 0).astype(int)]
            ties = ties + rng.normal(0, 0.006, (n, 3))
            to_tie = np.linalg.norm(ties - scalp_roots(sdf, phi, theta, 0.0), axis=1)
            lengths = to_tie * 1.3 + p.length * rng.uniform(0.85, 1.15, n)
            tail_dir = _unit(ties - CENTRE) * 0.5 + GRAVITY * 0.5
            bend = np.full(n, 20.0)
    roots = scalp_roots(sdf, phi, theta, margin)
    P = grow(sdf, roots, d0, lengths, bend, margin, ties, tail_dir)
    P = _clump_and_curl(P, phi, theta, p, rng)
    P = sdf.push_outside(P.reshape(-1, 3), np.repeat(margin, STEPS + 1)).reshape(P.shape)
    widths = np.stack([w, w * (1 - taper)], 1)
    return [_resample(P[i], widths[i], [thick[i], thick[i] * (1 - taper / 2)]) for i in range(n)]


def _clump_and_curl(P, phi, theta, p: StyleParams, rng):
    n = len(P)
    s = np.linspace(0, 1, STEPS + 1)
    n_clumps = max(1, n // 4)
    from scipy.cluster.vq import kmeans2

    roots_dir = _direction(phi, theta)
    label = kmeans2(roots_dir, n_clumps, minit="++", seed=rng)[1]
    out = P.copy()
    for c in np.unique(label):
        m = label == c
        out[m] += p.clumping * s[None, :, None] ** 1.5 * (P[m].mean(0, keepdims=True) - P[m])
    if p.curl > 0:
        e1, e2 = _perpendiculars(out)
        arc = np.concatenate([np.zeros((n, 1)), np.cumsum(np.linalg.norm(np.diff(out, axis=1), axis=2), 1)], 1)
        phase = rng.uniform(0, 2 * np.pi, n_clumps)[label][:, None]
        ang = 2 * np.pi * arc / p.curl_wavelength + phase
        amp = p.curl * np.minimum(1, s / 0.3)[None, :] ** 2
        out = out + amp[..., None] * (np.cos(ang)[..., None] * e1 + np.sin(ang)[..., None] * e2)
    return out


def hairstyle(seed: int, index: int, head) -> tuple[StyleParams, str, list[np.ndarray]]:
    """Hairstyle ``index`` of ``seed``: its parameters, split and cards (ordered root first, by azimuth)."""
    from domains.hair.tokens import orient_and_sort

    rng = np.random.default_rng([seed, index])
    p = draw_params(rng)
    split = split_of(p, rng)
    return p, split, orient_and_sort(generate(p, rng, head), head)



def draw_set(seed: int, n: int, head, splits=None, progress: bool = True):
    """Hairstyles ``0 .. n-1`` of ``seed`` (those in ``splits`` only, if given, until ``n`` are found): cards and a table."""
    import pandas as pd
    from tqdm import tqdm

    cards, rows, i = [], [], 0
    with tqdm(total=n, desc="hairstyles", disable=not progress) as bar:
        while len(cards) < n:
            p, split, c = hairstyle(seed, i, head)
            if splits is None or split in splits:
                cards.append(c)
                rows.append({"index": i, **asdict(p), "split": split})
                bar.update()
            i += 1
    return cards, pd.DataFrame(rows)
