"""USC-HairSalon strands, and cards fitted to strands or to a point cloud (the geometric fit).

Strand file: little-endian int32 strand count, then per strand an int32 point count and that many float32 xyz
triples (centimetres; moved into the head's frame by ``head.STRAND_SCALE`` and ``head.STRAND_SHIFT``).

Strands to cards, with settings fixed before any model is scored (:data:`STRAND_CARDS`): each strand is resampled to
8 points by arc length; k-means (scikit-learn, seed 0) groups the strands into 100 clusters on those 24 coordinates;
a cluster becomes a card whose centre line is the mean of its strands (resampled by arc fraction), with one control
point every 3 cm (4 to 20). At each control point the members' points at that arc fraction spread across the card:
width and thickness are ``sqrt(12)`` times their standard deviation along the card's width and thickness directions
(the width of a uniform spread), at least 2 mm and 1 mm. Points closer than 2 mm plus half the thickness to the head
(the strand roots sit on the scalp, half of them just inside) are pushed out to that distance.

The geometric fit of a point cloud does the same with no strands to follow: k-means on the points into 60 clusters,
each cluster's points ordered along its principal axis and cut into sections by quantiles of that order.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from domains.hair.head import STRAND_SCALE, STRAND_SHIFT
from domains.hair.mesh import frames
from sciar.errors import DataError

STRAND_CARDS = {"n_cards": 100, "resample": 8, "seed": 0, "min_width": 0.002, "min_thickness": 0.001, "margin": 0.002}
POINT_CARDS = {"n_cards": 60, "seed": 0}
SPACING = 0.03


def read_strands(path: str | Path) -> list[np.ndarray]:
    """Strands in the head's frame (metres); a truncated or malformed file is a one-line DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the strands file ({e})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: truncated strands file (no strand count)")
    n = int(np.frombuffer(raw[:4], "<i4")[0])
    if n <= 0 or n > 10_000_000:
        raise DataError(f"{path}: not a USC-HairSalon strands file (strand count {n})")
    strands, off = [], 4
    for i in range(n):
        if off + 4 > len(raw):
            raise DataError(f"{path}: truncated strands file: it ends at strand {i + 1} of {n}")
        c = int(np.frombuffer(raw[off:off + 4], "<i4")[0])
        off += 4
        if c < 0 or off + 12 * c > len(raw):
            raise DataError(f"{path}: truncated strands file: strand {i + 1} of {n} needs {c} points, the file ends first")
        pts = np.frombuffer(raw[off:off + 12 * c], "<f4").reshape(c, 3).astype(np.float64)
        off += 12 * c
        if c >= 2:
            strands.append(pts * STRAND_SCALE + STRAND_SHIFT)
    if not strands:
        raise DataError(f"{path}: no strand with two or more points")
    if not all(np.isfinite(s).all() for s in strands):
        raise DataError(f"{path}: NaN or infinite strand coordinates")
    return strands


def resample(polyline: np.ndarray, n: int) -> np.ndarray:
    """``n`` points evenly spaced by arc length along a polyline (columns beyond xyz interpolated alike)."""
    s = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(polyline[:, :3], axis=0), axis=1))])
    t = np.linspace(0, s[-1], n) if s[-1] > 0 else np.zeros(n)
    return np.stack([np.interp(t, s, polyline[:, j]) for j in range(polyline.shape[1])], 1)


def _n_points(length: float) -> int:
    return int(np.clip(round(length / SPACING) + 1, 4, 20))


def cards_from_sections(cards: list[list[np.ndarray]], head, min_width=0.002, min_thickness=0.001) -> list[np.ndarray]:
    """Cards from point sets, one set per control point: centre = mean; width/thickness = sqrt(12) x spread."""
    centres = [np.stack([s.mean(0) for s in sections]) for sections in cards]
    normals = head.closest(np.concatenate(centres))[2]  # one query for all cards: each builds a search tree
    out, i = [], 0
    for sections, centre in zip(cards, centres):
        _, b, m = frames(np.concatenate([centre, np.zeros((len(centre), 2))], 1), normals[i:i + len(centre)])
        i += len(centre)
        w = np.array([np.sqrt(12) * np.std((s - c) @ bi) for s, c, bi in zip(sections, centre, b)])
        th = np.array([np.sqrt(12) * np.std((s - c) @ mi) for s, c, mi in zip(sections, centre, m)])
        out.append(np.concatenate([centre, np.maximum(w, min_width)[:, None], np.maximum(th, min_thickness)[:, None]], 1))
    return out


def strands_to_cards(strands: list[np.ndarray], head, settings: dict | None = None) -> list[np.ndarray]:
    """Cards fitted to strands by clustering (see the module docstring); ordered root first, by azimuth."""
    from sklearn.cluster import KMeans

    from domains.hair.tokens import orient_and_sort

    cfg = {**STRAND_CARDS, **(settings or {})}
    feats = np.stack([resample(s, cfg["resample"]).ravel() for s in strands])
    k = min(cfg["n_cards"], len(strands))
    label = KMeans(k, n_init=3, random_state=cfg["seed"]).fit_predict(feats)
    fine = np.stack([resample(s, 32) for s in strands])  # (S, 32, 3): arc fraction on a common grid
    sections = []
    for c in range(k):
        members = fine[label == c]
        if len(members) == 0:
            continue
        mean_line = members.mean(0)
        n = _n_points(np.linalg.norm(np.diff(mean_line, axis=0), axis=1).sum())
        idx = np.round(np.linspace(0, 31, n)).astype(int)
        sections.append([members[:, i] for i in idx])
    cards = cards_from_sections(sections, head, cfg["min_width"], cfg["min_thickness"])
    return orient_and_sort(head.push_cards_outside(cards, cfg["margin"]), head)


def points_to_cards(points: np.ndarray, head, settings: dict | None = None) -> list[np.ndarray]:
    """The geometric fit: cards fitted directly to a point cloud of hair (see the module docstring)."""
    from sklearn.cluster import KMeans

    from domains.hair.tokens import orient_and_sort

    cfg = {**POINT_CARDS, **(settings or {})}
    k = min(cfg["n_cards"], len(points) // 8)
    if k < 1:
        raise DataError(f"{len(points)} points are too few to fit cards to (8 per card at least)")
    label = KMeans(k, n_init=1, random_state=cfg["seed"]).fit_predict(points)
    sections = []
    for c in range(k):
        p = points[label == c]
        if len(p) < 8:
            continue
        axis = np.linalg.svd(p - p.mean(0), full_matrices=False)[2][0]
        s = (p - p.mean(0)) @ axis
        n = min(_n_points(np.ptp(s)), len(p) // 4)
        sections.append(np.array_split(p[np.argsort(s)], max(n, 2)))
    cards = cards_from_sections(sections, head)
    return orient_and_sort(head.push_cards_outside(cards, STRAND_CARDS["margin"]), head)


def card_area(cards: list[np.ndarray]) -> float:
    """One-sided area of the cards (square metres): width integrated along each centre line."""
    total = 0.0
    for c in cards:
        seg = np.linalg.norm(np.diff(c[:, :3], axis=0), axis=1)
        total += float((seg * (c[1:, 3] + c[:-1, 3]) / 2).sum())
    return total


def coverage(strands: list[np.ndarray], cards: list[np.ndarray], head, n_samples: int = 10_000, seed: int = 0) -> dict:
    """How well cards cover strands, both ways (mm): strand points to the card surface, card surface to the strands."""
    import point_cloud_utils as pcu
    from scipy.spatial import cKDTree

    from domains.hair.mesh import to_mesh
    from domains.hair.metrics import sample_surface

    mesh = to_mesh(cards, head)
    sp = np.concatenate([resample(s, 64) for s in strands])
    d_strand = np.abs(pcu.signed_distance_to_mesh(sp, np.asarray(mesh.vertices, dtype=np.float64),
                                                  np.asarray(mesh.faces, dtype=np.int32))[0]) * 1000
    d_card = cKDTree(sp).query(sample_surface(cards, head, n_samples, seed))[0] * 1000
    return {
        "strands_to_cards_median_mm": float(np.median(d_strand)), "strands_to_cards_p90_mm": float(np.percentile(d_strand, 90)),
        "strands_within_5mm": float((d_strand <= 5).mean()),
        "cards_to_strands_median_mm": float(np.median(d_card)), "cards_to_strands_p90_mm": float(np.percentile(d_card, 90)),
        "card_area_m2": card_area(cards), "n_cards": len(cards), "n_strands": len(strands),
    }
